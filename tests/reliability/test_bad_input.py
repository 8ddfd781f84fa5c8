"""A corpus of malformed events mixed into good traffic: nothing good lost, nothing bad silent.

Good traffic (the demo simulation, duplicates and renames included) flows while raw messages
are produced straight to the calls topic, bypassing producers/ as a buggy or hostile client
would: whole messages that are not events, and bad elements inside arrays of good events.
Every bad one must come out of the dead-letter topic, byte for byte (a whole message) or as
its element, with a reason naming the problem; an unknown model is not an error but is
stored unpriced and counted; every good event is counted exactly; the worker never stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from llm_usage.settings import Settings
from llm_usage.simulate import Manifest, Published, SimulationConfig
from producers.contract import UsageEvent
from stream_processor.app import DEAD_LETTER_MAX_BYTES
from stream_processor.harness import WorkerProcess
from tests.reliability.conftest import (
    PRICER,
    Stream,
    assert_exact,
    assert_never_crashed,
    fast_worker,
    raw_count,
)

pytestmark = pytest.mark.integration

MB = 1 << 20


def _good(i: int, model: str = "claude-sonnet-4-5") -> UsageEvent:
    return UsageEvent(
        tenant_id="tenant-bad-input", occurred_at=datetime.now(UTC) - timedelta(minutes=30 + i),
        source="chat", source_id=f"conv-{i % 5}", source_name=f"Mixed {i % 5}", model=model,
        input_tokens=1000 + i, output_tokens=100 + i, cache_read_input_tokens=10 * i,
        request_id=f"good-{i}",
    )  # fmt: skip


def _template() -> dict[str, Any]:
    return dict(json.loads(_good(0).to_json()))


def _bad(**changes: Any) -> dict[str, Any]:
    event = {**_template(), **changes}
    event["event_id"] = changes.get("event_id", event["event_id"])
    return event


def _without(field: str) -> dict[str, Any]:
    return {k: v for k, v in _template().items() if k != field}


# Whole messages: (name, value, what the reason must say)
MESSAGES: list[tuple[str, bytes | None, str]] = [
    ("truncated JSON", b'{"event_id": "0190a', "not valid JSON"),
    ("binary garbage", b"\xff\xfe\x00\x01garbage", "not valid JSON"),
    ("empty value", b"", "not valid JSON"),
    ("null value (tombstone)", None, "empty message"),
    ("a bare number", b"42", "expected a JSON object or array"),
    ("JSON with NaN", json.dumps(_bad(duration_ms=float("nan"))).encode(), "duration_ms"),
    ("tokens as a string", json.dumps(_bad(input_tokens="lots")).encode(), "input_tokens"),
    ("tokens as a float", json.dumps(_bad(output_tokens=1.5)).encode(), "output_tokens"),
    ("tokens as a boolean", json.dumps(_bad(input_tokens=True)).encode(), "input_tokens"),
    ("tenant as a list", json.dumps(_bad(tenant_id=["a"])).encode(), "tenant_id"),
    ("negative tokens", json.dumps(_bad(input_tokens=-1)).encode(), "input_tokens"),
    ("huge tokens", json.dumps(_bad(output_tokens=10**12)).encode(), "output_tokens"),
    ("beyond int64", json.dumps(_bad(cache_read_input_tokens=2**70)).encode(),
     "cache_read_input_tokens"),
    ("unknown source", json.dumps(_bad(source="email")).encode(), "source"),
    ("far future", json.dumps(_bad(occurred_at="2100-01-01T00:00:00Z")).encode(), "occurred_at"),
    ("year 9999", json.dumps(_bad(occurred_at="9999-12-31T23:59:59Z")).encode(), "occurred_at"),
    ("ancient", json.dumps(_bad(occurred_at="1970-01-01T00:00:00Z")).encode(), "occurred_at"),
    ("no time zone", json.dumps(_bad(occurred_at="2026-01-01T00:00:00")).encode(),
     "occurred_at"),
    ("1 MB source_name", json.dumps(_bad(source_name="x" * MB)).encode(), "source_name"),
    ("1 MB model", json.dumps(_bad(model="m" * MB)).encode(), "model"),
    ("1 MB metadata", json.dumps(_bad(metadata={"k": "v" * MB})).encode(), "metadata"),
    ("unknown schema version", json.dumps(_bad(schema_version=3)).encode(), "schema_version"),
    ("schema version as text", json.dumps(_bad(schema_version="1")).encode(), "schema_version"),
    ("unexpected field", json.dumps(_bad(cost_usd="0.01")).encode(), "cost_usd"),
    ("nested metadata", json.dumps(_bad(metadata={"a": {"b": 1}})).encode(), "metadata"),
    ("bad event_id", json.dumps(_bad(event_id="not-a-uuid")).encode(), "event_id"),
    ("missing model", json.dumps(_without("model")).encode(), "model"),
    ("missing tenant", json.dumps(_without("tenant_id")).encode(), "tenant_id"),
    ("SQL in tenant", json.dumps(_bad(tenant_id="x" * 129 + "'; DROP TABLE usage_events; --"))
     .encode(), "tenant_id"),
]  # fmt: skip

# Bad elements inside an array whose other elements are good: (name, element, reason)
ELEMENTS: list[tuple[str, Any, str]] = [
    ("a string element", "not an object", "event must be a JSON object"),
    ("negative cache writes", _bad(cache_creation_5m_input_tokens=-5), "cache_creation_5m"),
    ("wrong status", _bad(status="maybe"), "status"),
    ("1 MB source_id", _bad(source_id="s" * MB), "source_id"),
    ("unknown version", _bad(schema_version=99), "schema_version"),
    ("ancient", _bad(occurred_at="2001-09-09T01:46:40Z"), "occurred_at"),
]


async def _produce(settings: Settings, values: list[bytes | None]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=8 * MB
    )
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(settings.topic_calls, value, key=f"bad-{i}".encode())
    finally:
        await producer.stop()


async def _dead_letters(settings: Settings, count: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
        max_partition_fetch_bytes=8 * MB, fetch_max_bytes=32 * MB,
    )  # fmt: skip
    await consumer.start()
    records: list[Any] = []
    try:
        topic = settings.topic_dead_letter
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                records.extend(r for items in batch.values() for r in items)
        extra = await consumer.getmany(timeout_ms=1000)  # anything beyond the expected ones
        records.extend(r for items in extra.values() for r in items)
    finally:
        await consumer.stop()
    return records


def _key(payload: bytes) -> str:
    """Whole messages match byte for byte; an element matches as the same JSON value."""
    try:
        return "json:" + json.dumps(json.loads(payload), sort_keys=True)
    except ValueError:
        return "raw:" + payload.hex()


@pytest.mark.timeout(180)
def test_bad_input_corpus_dead_lettered_with_reasons_good_counted_worker_survives(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    settings = fast_worker(migrated)
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    stream = Stream(
        settings, SimulationConfig(calls=6000, days=2, seed=rng.randrange(1 << 30)), rate=2000
    ).start()

    # Good events that travel next to the bad ones, and a model nobody has priced.
    extra = Manifest(price=PRICER)
    values: list[bytes | None] = []
    # payload key -> [(reason, original payload)]: an empty value and a null one look alike
    wanted: dict[str, list[tuple[str, bytes]]] = {}
    for i, (_, value, reason) in enumerate(MESSAGES):
        values.append(value)
        wanted.setdefault(_key(value or b""), []).append((reason, value or b""))
        if i % 5 == 0:
            unknown = _good(100 + i, model="acme-llm-9000")
            values.append(unknown.to_json())
            extra.record(Published(call=unknown))
    for i, (_, element, reason) in enumerate(ELEMENTS):
        left, right = _good(200 + i), _good(300 + i, model="mystery-model-x" if i % 2 else
                                            "claude-haiku-4-5")  # fmt: skip
        values.append(b"[" + left.to_json() + b"," + json.dumps(element).encode() + b","
                      + right.to_json() + b"]")  # fmt: skip
        extra.record(Published(call=left))
        extra.record(Published(call=right))
        # the worker dead-letters one bad element as compact JSON
        dumped = json.dumps(element, separators=(",", ":"), ensure_ascii=False).encode()
        wanted.setdefault(_key(dumped), []).append((reason, dumped))
    rng.shuffle(values)
    asyncio.run(_produce(settings, values))
    manifest = stream.join()
    after = _good(999)  # the worker still takes good events after the whole corpus
    asyncio.run(_produce(settings, [after.to_json()]))
    extra.record(Published(call=after))

    combined = Manifest(price=PRICER)
    for field in ("calls", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                  "cache_read_input_tokens", "cost_usd", "unpriced_calls"):  # fmt: skip
        setattr(combined.total, field, getattr(manifest.total, field)
                + getattr(extra.total, field))  # fmt: skip
    assert combined.total.unpriced_calls >= 9
    want = assert_exact(settings, combined, timeout=120)
    print(f"good traffic expected = observed = {want}")

    dead = asyncio.run(_dead_letters(settings, len(wanted)))
    bad_inputs = len(MESSAGES) + len(ELEMENTS)
    assert len(dead) == bad_inputs, f"{len(dead)} dead letters for {bad_inputs} bad inputs"
    by_sha = {hashlib.sha256(o).hexdigest(): k for k, items in wanted.items() for _, o in items}
    truncated = 0
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        payload = bytes(record.value or b"")
        if "x-original-sha256" in headers:  # too big for one Kafka message: cut, identified
            key = by_sha.get(headers["x-original-sha256"], "")
            assert len(payload) == DEAD_LETTER_MAX_BYTES, len(payload)
            original = wanted[key][0][1]
            assert int(headers["x-dead-letter-truncated-from"]) == len(original)
            assert original.startswith(payload)
            truncated += 1
        else:
            key = _key(payload)
        assert wanted.get(key), f"unexpected dead letter: {payload[:200]!r} {headers}"
        reasons = [r for r, _ in wanted[key]]
        found = next((r for r in reasons if r in headers["x-dead-letter-reason"]), None)
        assert found is not None, (reasons, headers)
        wanted[key].pop(reasons.index(found))
        assert headers["x-source-topic"] == settings.topic_calls
        assert int(headers["x-source-offset"]) >= 0
    left = [r for items in wanted.values() for r, _ in items]
    assert not left, f"never dead-lettered: {left}"
    assert truncated == 4, "the four 1 MB inputs were cut to fit one Kafka message"

    assert_never_crashed(worker)
    health = worker.health()
    assert health is not None and health["status"] == "ok", health
    metrics = worker.metrics()
    assert metrics["llm_usage_processor_events_dead_lettered_total"] == len(MESSAGES) + len(
        ELEMENTS
    )
    assert raw_count(settings) == want[0]
