"""The wire format is the contract, not aiokafka: librdkafka publishes, the worker counts.

A Go, Java or Node service does not use ``producers/``: it writes JSON by hand and produces
with its own Kafka client. This test does the same with ``confluent_kafka`` (librdkafka):
message values are ``json.dumps`` of plain dicts (see ``producers/WIRE_FORMAT.md``), a single
event object in one message and a JSON array in another, a v1 and a v2 event, keys
``tenant_id:source_id``, one message sent twice (a retry), and one message per compression
codec. Raw rows and both rollups must equal what the contract makes of the same dicts.

librdkafka against Tansu (the local broker), found here:

- librdkafka before 2.2.0 cannot talk to Tansu at all: it skips tagged fields one byte short
  (librdkafka #4278) and fails on Tansu's ApiVersions v3 response ("Read underflow"). Debian
  12's kcat (librdkafka 2.0.2) is such a client; confluent-kafka 2.16 bundles 2.16.0.
- Its default partitioner is ``consistent_random`` (CRC32), not the murmur2 of Java, aiokafka
  and ``producers/`` (15 of 20 keys of a probe landed elsewhere): ``murmur2_random`` agrees.
- Idempotence is off, as aiokafka needs, but librdkafka would not: Tansu refuses aiokafka's
  InitProducerId v0 (UnknownError) and grants librdkafka's v4, so one message is sent by an
  idempotent producer as well.

Nothing else needed changing: Metadata, Produce with acks=all and the four codecs just work.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from producers.batching import partition_for
from producers.contract import parse_call, uuid7
from producers.topics import ensure_topics
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import counted, expected_totals, totals, worker_settings

pytestmark = pytest.mark.integration

TENANT = "wire-acme"
CODECS = ("gzip", "snappy", "lz4", "zstd")


def stamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as Go's time.RFC3339Nano or JS toISOString write it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key_of(event: dict[str, Any]) -> bytes:
    return f"{event['tenant_id']}:{event['source_id']}".encode()


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "acks": "all",
        # Off, as aiokafka needs on Tansu (it refuses aiokafka's InitProducerId v0); librdkafka's
        # v4 is granted, so the test sends one message idempotently as well.
        "enable.idempotence": False,
        # The Java/aiokafka partitioner, so a key lands where producers/ would put it.
        "partitioner": "murmur2_random",
        **extra,
    }


def produce(
    settings: Settings, messages: list[tuple[bytes, bytes]], **config: Any
) -> list[tuple[bytes, int]]:
    """Send ``(key, value)`` messages with librdkafka; (key, partition) of each delivery."""
    errors: list[KafkaError] = []
    delivered: list[tuple[bytes, int]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
            return
        assert msg.topic() == settings.topic_calls
        delivered.append((bytes(msg.key() or b""), int(msg.partition() or 0)))

    producer = Producer(producer_config(settings, **config))
    for key, value in messages:
        producer.produce(settings.topic_calls, value=value, key=key, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered within 30 s"
    assert errors == [], f"delivery errors: {errors}"
    assert len(delivered) == len(messages)
    return delivered


def test_librdkafka_producer_with_hand_written_json_is_counted_exactly(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(migrated)
    created = asyncio.run(ensure_topics(settings))
    assert settings.topic_calls in created
    now = datetime.now(UTC).replace(microsecond=0)

    # v1: schema_version 1 and none of the v2 fields. Opus 4.5: 2000 x $5 + 1000 x $25 / MTok.
    v1 = {
        "schema_version": 1,
        "event_id": str(uuid7()),
        "tenant_id": TENANT,
        "occurred_at": stamp(now - timedelta(hours=5, minutes=3)),
        "source": "chat",
        "source_id": "conv-1",
        "source_name": "Billing question",
        "model": "claude-opus-4-5",
        "input_tokens": 2000,
        "output_tokens": 1000,
        "duration_ms": 2140,
        "status": "ok",
        "request_id": "req_011CVwire0001",
        "metadata": {"service": "chat-go", "retry": 0, "beta": True, "region": None},
    }
    # v2 with the cache split and total (they agree) and service_tier batch: Sonnet 4.5's
    # batch prices (half of standard): 1000 x 1.5 + 200 x 7.5 + 500 x 0.15 + 300 x 1.875
    # + 100 x 3 = 3937.5 $/MTok-units. thinking_tokens is part of output_tokens.
    v2_cached = {
        "schema_version": 2,
        "event_id": str(uuid7()),
        "tenant_id": TENANT,
        "occurred_at": stamp(now - timedelta(hours=2, minutes=41)),
        "source": "agent",
        "source_id": "agent-7",
        "source_name": "Research bot",
        "model": "claude-sonnet-4-5-20250929",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_creation_input_tokens": 400,
        "cache_creation_5m_input_tokens": 300,
        "cache_creation_1h_input_tokens": 100,
        "cache_read_input_tokens": 500,
        "service_tier": "batch",
        "speed": "standard",
        "thinking_tokens": 50,
        "duration_ms": 0,
        "metadata": {"batch_id": "msgbatch_01wire"},
    }
    # A cache-write total without the split is priced as 5-minute writes; occurred_at with a
    # +02:00 offset (stored in UTC). Haiku 4.5: 100 x 1 + 50 x 5 + 400 x 1.25 = 850.
    v2_total_only = {
        "schema_version": 2,
        "event_id": str(uuid7()),
        "tenant_id": TENANT,
        "occurred_at": (now - timedelta(hours=2, minutes=40))
        .astimezone(timezone(timedelta(hours=2)))
        .isoformat(),
        "source": "agent",
        "source_id": "agent-7",
        "model": "claude-haiku-4-5",
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_creation_input_tokens": 400,
        "service_tier": "standard",
        "duration_ms": 640,
    }
    # No schema_version (means 2), a model nobody prices (kept, counted unpriced), an error.
    unpriced = {
        "event_id": str(uuid7()),
        "tenant_id": TENANT,
        "occurred_at": stamp(now - timedelta(hours=2, minutes=39)),
        "source": "agent",
        "source_id": "agent-7",
        "model": "mystery-model-9",
        "input_tokens": 500,
        "output_tokens": 500,
        "status": "error",
        "web_fetch_requests": 2,
    }
    # Any UUID is accepted as event_id (v7 is only recommended). GPT-4o: 1000 x 2.5 + 100 x 10
    # + 1000 x 1.25 = 4750.
    memory = {
        "schema_version": 2,
        "event_id": str(uuid.uuid4()),
        "tenant_id": TENANT,
        "occurred_at": stamp(now - timedelta(minutes=30)),
        "source": "memory",
        "source_id": "conv-1",
        "model": "gpt-4o-2024-08-06",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_input_tokens": 1000,
        "duration_ms": 90,
    }
    batch = [v2_cached, v2_total_only, unpriced]  # one conversation: one key, one partition
    messages = [
        (key_of(v1), json.dumps(v1).encode()),  # a single event object
        (key_of(v2_cached), json.dumps(batch).encode()),  # a JSON array, key of its events
        (key_of(v1), json.dumps(v1).encode()),  # a producer's retry: dropped by event_id
    ]
    accepted: list[tuple[dict[str, Any], Decimal]] = [
        (v1, Decimal("0.035")),
        (v2_cached, Decimal("0.0039375")),
        (v2_total_only, Decimal("0.00085")),
        (unpriced, Decimal(0)),
        (memory, Decimal("0.00475")),
    ]
    delivered = produce(settings, messages)
    compact = json.dumps(memory, separators=(",", ":")).encode()
    delivered += produce(settings, [(key_of(memory), compact)], **{"enable.idempotence": True})

    # Every codec a producer may use; each message an array of two Opus 4.5 calls ($0.035).
    for i, codec in enumerate(CODECS):
        pair = [
            {
                "event_id": str(uuid7()),
                "tenant_id": TENANT,
                "occurred_at": stamp(now - timedelta(hours=30, minutes=i * 10 + n)),
                "source": "chat",
                "source_id": f"conv-{codec}",
                "model": "claude-opus-4-5",
                "input_tokens": 2000,
                "output_tokens": 1000,
            }
            for n in range(2)
        ]
        value = json.dumps(pair).encode()
        delivered += produce(settings, [(key_of(pair[0]), value)], **{"compression.type": codec})
        accepted += [(event, Decimal("0.035")) for event in pair]

    for key, partition in delivered:
        assert partition == partition_for(key, settings.topic_partitions), key

    events = [parse_call(raw) for raw, _ in accepted]
    assert events[2].cache_creation_5m_input_tokens == 400, "a total alone is 5-minute writes"
    expected = expected_totals(events, [cost for _, cost in accepted])
    assert expected[6] == Decimal("0.3245375")  # 0.035 x 9 + 0.0039375 + 0.00085 + 0.00475

    worker = worker_factory(settings)
    wait_for(lambda: counted(settings, len(events)), 60, "all rows", detail=worker.tail)
    wait_for(
        lambda: worker.metrics()["llm_usage_processor_events_deduped_total"] >= 1,
        30,
        "the retried message to be deduplicated",
        detail=worker.tail,
    )
    time.sleep(1.0)  # a duplicate row would arrive now
    got = totals(settings)
    assert got["raw"] == expected
    assert got["hourly"] == expected
    assert got["daily"] == expected

    metrics = worker.metrics()
    assert metrics["llm_usage_processor_events_deduped_total"] == 1
    assert metrics["llm_usage_processor_events_dead_lettered_total"] == 0
    assert metrics["llm_usage_processor_events_written_total"] == len(events)

    client = connect(settings)
    try:
        rows = client.query(
            "SELECT toString(event_id), schema_version, service_tier, price_tier,"
            " thinking_tokens, web_fetch_requests, occurred_at, source_name, metadata"
            " FROM usage_events"
        ).result_rows
    finally:
        client.close()
    by_id = {row[0]: row[1:] for row in rows}
    assert by_id[v1["event_id"]][:2] == (1, "standard")
    assert json.loads(by_id[v1["event_id"]][7]) == v1["metadata"]
    assert by_id[v2_cached["event_id"]][:4] == (2, "batch", "batch", 50)
    assert by_id[v2_cached["event_id"]][6] == "Research bot"
    assert by_id[unpriced["event_id"]][:1] == (2,) and by_id[unpriced["event_id"]][4] == 2
    stored = by_id[v2_total_only["event_id"]][5]
    assert stored.replace(tzinfo=UTC) == now - timedelta(hours=2, minutes=40), "stored in UTC"
