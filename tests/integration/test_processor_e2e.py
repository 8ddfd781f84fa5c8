"""End to end: events published through producers/ come out exactly in ClickHouse.

One real worker subprocess against the session's broker and ClickHouse. Duplicates (across
and within messages), malformed messages, an unknown model, cache tokens, a long-context
call and a rename all go in; raw rows, both rollups, the dead-letter topic, source names and
the worker's metrics must show exactly the expected numbers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from producers.contract import EntityRenamed, UsageEvent, encode_calls
from producers.publisher import UsagePublisher
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

# (model as the producer reports it, usage, exact cost in USD computed by hand)
TEMPLATES: list[tuple[str, dict[str, int], Decimal]] = [
    # 1000*3 + 200*15 + 500*0.30 + 300*3.75 + 100*6 = 7875 $/MTok-units
    ("claude-sonnet-4-5-20250929", {"input_tokens": 1000, "output_tokens": 200,
     "cache_read_input_tokens": 500, "cache_creation_5m_input_tokens": 300,
     "cache_creation_1h_input_tokens": 100}, Decimal("0.007875")),
    ("claude-opus-4-5", {"input_tokens": 2000, "output_tokens": 1000}, Decimal("0.035")),
    # cache_creation total without a split is priced as 5-minute writes: 100 + 250 + 500
    ("claude-haiku-4-5", {"input_tokens": 100, "output_tokens": 50,
     "cache_creation_input_tokens": 400}, Decimal("0.00085")),
    # 150k + 60k cached = 210k input > 200k: long-context rates for every token
    ("claude-sonnet-4", {"input_tokens": 150_000, "cache_read_input_tokens": 60_000,
     "output_tokens": 1000}, Decimal("0.9585")),
    ("mystery-model-9", {"input_tokens": 500, "output_tokens": 500}, Decimal(0)),
    ("gpt-4o-2024-08-06", {"input_tokens": 1000, "output_tokens": 100,
     "cache_read_input_tokens": 1000}, Decimal("0.00475")),
]  # fmt: skip
CANONICAL = ["claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "claude-sonnet-4",
             "mystery-model-9", "gpt-4o"]  # fmt: skip


def worker_settings(settings: Settings, **overrides: Any) -> Settings:
    """Fast-joining worker settings for tests (a group per test, loopback web port)."""
    values: dict[str, Any] = {
        "processor_group": f"proc-{settings.topic_calls}",
        "processor_session_timeout_s": 6.0,
        "processor_rebalance_timeout_s": 3.0,
        "processor_web_port": free_port(),
        "processor_batch_max_seconds": 0.2,
        "processor_batch_max_events": 500,
        "processor_retry_max_s": 1.0,
        "producer_linger_ms": 5,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


def totals(settings: Settings) -> dict[str, tuple[Any, ...]]:
    """count, tokens, cost and unpriced calls from raw rows and from both rollups."""
    client = connect(settings)
    try:
        raw = client.query(
            "SELECT count(), sum(input_tokens), sum(output_tokens), sum(cache_read_input_tokens),"
            " sum(cache_creation_5m_input_tokens), sum(cache_creation_1h_input_tokens),"
            " sum(cost_usd), countIf(NOT priced) FROM usage_events"
        ).result_rows[0]
        rollup = (
            "SELECT sum(calls), sum(input_tokens), sum(output_tokens),"
            " sum(cache_read_input_tokens), sum(cache_creation_5m_input_tokens),"
            " sum(cache_creation_1h_input_tokens),"
            " sum(cost_usd), sum(unpriced_calls) FROM {table}"
        )
        hourly = client.query(rollup.format(table="usage_hourly")).result_rows[0]
        daily = client.query(rollup.format(table="usage_daily")).result_rows[0]
    finally:
        client.close()
    return {"raw": tuple(raw), "hourly": tuple(hourly), "daily": tuple(daily)}


def counted(settings: Settings, calls: int) -> bool:
    """The raw table and both rollups hold ``calls`` calls (a view commits after the raw
    table: comparing them right after the raw count is reached would race)."""
    got = totals(settings)
    return all(got[table][0] >= calls for table in ("raw", "hourly", "daily"))


def expected_totals(events: list[UsageEvent], costs: list[Decimal]) -> tuple[Any, ...]:
    return (
        len(events),
        sum(e.input_tokens for e in events),
        sum(e.output_tokens for e in events),
        sum(e.cache_read_input_tokens for e in events),
        sum(e.cache_creation_5m_input_tokens for e in events),
        sum(e.cache_creation_1h_input_tokens for e in events),
        sum(costs, Decimal(0)),
        sum(1 for e in events if e.model == "mystery-model-9"),
    )


def make_events(
    count: int, start: datetime, tenant: str = "t1", step: timedelta = timedelta(minutes=7)
) -> list[UsageEvent]:
    events = []
    for i in range(count):
        model, usage, _ = TEMPLATES[i % len(TEMPLATES)]
        events.append(UsageEvent(
            tenant_id=tenant if i % 4 else "t2",
            occurred_at=start + step * i + timedelta(milliseconds=i),
            source=("chat", "agent", "memory")[i % 3],
            source_id=f"src-{i % 11}",
            source_name=f"Name {i % 11}" if i % 5 else None,
            model=model, duration_ms=100 + i, status="error" if i % 13 == 0 else "ok",
            attributes={"user": f"u-{i % 5}", "feature": "search"} if i % 3 == 0 else {},
            **usage,
        ))  # fmt: skip
    return events


def cost_of(event: UsageEvent) -> Decimal:
    return next(cost for model, _, cost in TEMPLATES if model == event.model)


async def publish(settings: Settings, events: list[UsageEvent],
                  renames: list[EntityRenamed] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
    async with UsagePublisher(settings) as publisher:
        for rename in renames:
            await publisher.publish_rename(rename)
        for event in events:
            await publisher.publish(event)
        await publisher.flush()


async def produce_raw(settings: Settings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topic_calls, value, key=b"raw")
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(30):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for items in batch.values():
                    records.extend(items)
        extra = await consumer.getmany(timeout_ms=500)
        records.extend(r for items in extra.values() for r in items)
    finally:
        await consumer.stop()
    return records


@pytest.mark.sharded
def test_end_to_end_exact_counts_costs_dead_letters_and_names(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(migrated)
    worker = worker_factory(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(300, now - timedelta(hours=36))
    rename = EntityRenamed(tenant_id="t1", source="agent", source_id="agent-renamed",
                           name="Research bot", renamed_at=now - timedelta(minutes=5))  # fmt: skip
    # Duplicates: 30 events published twice, in later messages than their first copies.
    asyncio.run(publish(settings, events, [rename]))
    asyncio.run(publish(settings, events[:30]))

    # Malformed input, produced raw: 6 dead letters, 2 good events inside mixed arrays,
    # and one message carrying the same event twice (1 row, 1 duplicate).
    good_a, good_b, twice = make_events(3, now - timedelta(hours=2), tenant="t3")
    bad_attribute = {**json.loads(make_events(1, now)[0].to_json()),
                     "attributes": {"user": "u-1", "Customer": "acme"}}  # fmt: skip
    bad_version = {**json.loads(good_a.to_json()), "schema_version": 99}
    bad_types = {**json.loads(good_b.to_json()), "event_id": str(good_a.event_id),
                 "input_tokens": "lots"}  # fmt: skip
    asyncio.run(produce_raw(settings, [
        b"not json at all",
        b'"a string"',
        json.dumps(bad_version).encode(),
        b"[" + good_a.to_json() + b"," + json.dumps(bad_types).encode() + b"]",
        b"[" + good_b.to_json() + b',"not an object"]',
        encode_calls([twice, twice]),
        json.dumps([bad_attribute]).encode(),
    ]))  # fmt: skip
    worker.wait_assigned()

    # The rename reaches source_names; events published after it get its name.
    def renamed() -> bool:
        client = connect(settings)
        try:
            return (
                client.command(
                    "SELECT argMax(source_name, named_at) FROM source_names"
                    " WHERE tenant_id = 't1' AND source_id = 'agent-renamed'"
                )
                == "Research bot"
            )
        finally:
            client.close()

    wait_for(renamed, 60, "the rename in source_names")
    unnamed = [
        UsageEvent(
            tenant_id="t1",
            occurred_at=now - timedelta(minutes=1),
            source="agent",
            source_id="agent-renamed",
            model="claude-opus-4-5",
            input_tokens=2000,
            output_tokens=1000,
        )
        for _ in range(4)
    ]
    asyncio.run(publish(settings, unnamed))

    accepted = [*events, good_a, good_b, twice, *unnamed]
    expected = expected_totals(accepted, [cost_of(e) for e in accepted])
    wait_for(lambda: counted(settings, len(accepted)), 60, "all rows, rollups included")
    time.sleep(1.0)  # anything extra (a duplicate) would arrive now
    got = totals(settings)
    assert got["raw"] == expected
    assert got["hourly"] == expected
    assert got["daily"] == expected
    assert expected[6] == Decimal("50.532475")  # 50 x 1.006975 + 0.043725 + 4 x 0.035

    client = connect(settings)
    try:
        models = dict(client.query(
            "SELECT model, count() FROM usage_events GROUP BY model").result_rows)  # fmt: skip
        assert set(models) == set(CANONICAL), "dated and aliased names are normalised"
        names = client.query(
            "SELECT DISTINCT source_name FROM usage_events WHERE source_id = 'agent-renamed'"
        ).result_rows
        assert names == [("Research bot",)]
        priced = client.query(
            "SELECT priced, price_version, count() FROM usage_events"
            " WHERE model = 'mystery-model-9' GROUP BY 1, 2").result_rows  # fmt: skip
        assert priced == [(False, "", sum(1 for e in accepted if e.model == "mystery-model-9"))]
        per_day = client.query(
            "SELECT toDate(occurred_at) AS d, count(), sum(cost_usd) FROM usage_events"
            " GROUP BY d ORDER BY d").result_rows  # fmt: skip
        rolled = client.query(
            "SELECT day, sum(calls), sum(cost_usd) FROM usage_daily GROUP BY day ORDER BY day"
        ).result_rows
        assert per_day == rolled
        attributes = dict(client.query(
            "SELECT toString(event_id), attributes FROM usage_events").result_rows)  # fmt: skip
        assert attributes == {str(e.event_id): e.attributes for e in accepted}
        assert any(attributes.values())
        ledger = client.command("SELECT count() FROM processor_batches")
        assert int(ledger) >= 1
    finally:
        client.close()

    dead = asyncio.run(read_topic(settings, settings.topic_dead_letter, 6))
    assert len(dead) == 6
    reasons = []
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["x-source-topic"] == settings.topic_calls
        assert int(headers["x-source-offset"]) >= 0 and "x-source-partition" in headers
        reasons.append(headers["x-dead-letter-reason"])
    joined = " | ".join(reasons)
    assert "not valid JSON" in joined
    assert "expected a JSON object or array" in joined
    assert "schema_version: unsupported version 99" in joined
    assert "input_tokens" in joined
    assert "event must be a JSON object" in joined
    assert "key 'Customer' must match" in joined
    originals = {bytes(r.value) for r in dead}
    assert b"not json at all" in originals, "a whole bad message is kept byte for byte"

    metrics = worker.metrics()
    assert metrics["llm_usage_processor_events_deduped_total"] == 31
    assert metrics["llm_usage_processor_events_dead_lettered_total"] == 6
    assert metrics["llm_usage_processor_events_unpriced_total"] == expected[7]
    assert metrics["llm_usage_processor_events_written_total"] == len(accepted)
    health = worker.health()
    assert health is not None and health["status"] == "ok"
    assert health["assigned"] == list(range(settings.topic_partitions))
