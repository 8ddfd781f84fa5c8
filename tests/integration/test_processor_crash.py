"""Crash safety: SIGKILL mid-stream, restart, and every total is still exact.

Offsets committed late, batches recorded (or inserted) but not committed, the dedupe index
gone with the process: after the restart the worker re-forms the recorded batches under
their recorded tokens (ClickHouse drops those it already has) and reloads the dedupe index
from ClickHouse, so raw rows and both rollups equal what was published, duplicates
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from llm_usage.clickhouse import connect
from llm_usage.clickhouse.migrations import Layout, admin_client
from llm_usage.settings import Settings
from producers.contract import UsageEvent, decode_calls, encode_calls
from producers.publisher import UsagePublisher
from producers.topics import ensure_topics
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import (
    cost_of,
    counted,
    expected_totals,
    make_events,
    totals,
    worker_settings,
)

pytestmark = pytest.mark.integration

INSERT_FAILURES = "llm_usage_processor_insert_failures_total"


@pytest.mark.sharded
def test_sigkill_mid_stream_then_restart_is_exact(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    settings = worker_settings(
        migrated,
        processor_batch_max_events=100,
        processor_batch_max_seconds=0.1,
    )
    events = make_events(
        12_000, datetime.now(UTC) - timedelta(days=20), step=timedelta(seconds=100)
    )
    first = worker_factory(settings)
    first.wait_assigned()
    killed = threading.Event()

    async def publish_slowly() -> None:
        """Paced; the second half only once the worker is dead, so the kill is mid-stream
        however slowly the worker writes on a busy machine."""
        async with UsagePublisher(settings) as publisher:
            for start in range(0, len(events), 200):
                if start == len(events) // 2:
                    await asyncio.to_thread(killed.wait, 120)
                for event in events[start : start + 200]:
                    await publisher.publish(event)
                await publisher.flush()
                await asyncio.sleep(0.1)

    publishing = threading.Thread(target=lambda: asyncio.run(publish_slowly()))
    publishing.start()
    try:
        wait_for(
            lambda: totals(settings)["raw"][0] >= 2500, 60, "the first rows", detail=first.tail
        )
        # The kill lands while a recorded batch can never have been committed: its insert
        # was refused. (Killed at a moment read from outside, the worker could commit the
        # batch in between, and the restart would have nothing to re-form.)
        refused = first.metrics()[INSERT_FAILURES]
        with raw_inserts_refused(settings):
            wait_for(
                lambda: first.metrics()[INSERT_FAILURES] > refused,
                60,
                "the worker's next insert to be refused",
                detail=first.tail,
            )
            first.kill()
        killed.set()
        assert publishing.is_alive(), "the stream must still be flowing at the kill"
    finally:
        killed.set()
        publishing.join(120)
    # The republish below publishes from the same spool: the stream's publisher must be gone.
    assert not publishing.is_alive(), "the stream's publisher did not finish"
    killed_at = totals(settings)["raw"][0]
    assert killed_at < len(events)

    second = worker_factory(settings)

    # Duplicates of events the killed worker already wrote: only ClickHouse remembers them
    # now (the restarted worker's dedupe index is loaded from it).
    async def republish() -> None:
        async with UsagePublisher(settings) as publisher:
            for event in events[:300]:
                await publisher.publish(event)
            await publisher.flush()

    asyncio.run(republish())
    expected = expected_totals(events, [cost_of(e) for e in events])
    wait_for(
        lambda: counted(settings, len(events)),  # a view commits after the raw table
        180,
        "all rows after restart",
        detail=lambda: f"{missing_report(settings, events, second)}\n{second.tail()}",
    )
    wait_for(lambda: second.metrics()["llm_usage_processor_events_deduped_total"] >= 300, 30,
             "the republished duplicates to be dropped")  # fmt: skip
    got = totals(settings)
    assert got["raw"] == expected
    assert got["hourly"] == expected
    assert got["daily"] == expected
    assert "re-forming" in second.tail(200_000), "the restart replayed recorded batches"


def missing_report(settings: Settings, events: list[UsageEvent], worker: WorkerProcess) -> str:
    """Where the missing calls sit in the topic and what the batch ledger says of them:
    a timeout must tell a stalled fetch, a lost publish and rows lost on their way into
    ClickHouse apart."""
    client = connect(settings)
    try:
        stored = {
            str(row[0]) for row in client.query("SELECT event_id FROM usage_events").result_rows
        }
        per_shard = client.query(
            "SELECT shardNum(), count() FROM usage_events GROUP BY 1 ORDER BY 1"
        ).result_rows
        ledger = client.query(
            "SELECT partition, first_offset, last_offset, rows, worker FROM processor_batches"
            " ORDER BY partition, first_offset, recorded_at"
        ).result_rows
    finally:
        client.close()
    missing = {str(e.event_id) for e in events} - stored
    located = asyncio.run(_locate(settings, missing))
    by_message = Counter(located.values())
    unpublished = len(missing) - len(located)
    lines = [
        f"{len(missing)} of {len(events)} calls missing ({unpublished} not in the topic); "
        f"rows per shard {per_shard}",
    ]
    for (partition, offset), count in sorted(by_message.items())[:20]:
        ranges = [
            f"{first}-{last} ({rows} rows, {who})"
            for p, first, last, rows, who in ledger
            if p == partition and first <= offset <= last
        ]
        lines.append(f"  calls[{partition}]@{offset}: {count} missing; ledger: {ranges}")
    watched = ("llm_usage_processor_consumer_lag", "llm_usage_processor_stall")
    with (
        contextlib.suppress(Exception),
        urllib.request.urlopen(worker.url("/metrics"), timeout=2) as response,
    ):
        metrics = response.read().decode().splitlines()
        lines += [line for line in metrics if line.startswith(watched)]
    return "\n".join(lines)


async def _locate(settings: Settings, event_ids: set[str]) -> dict[str, tuple[int, int]]:
    """(partition, offset) of the message that carries each of ``event_ids``."""
    consumer = AIOKafkaConsumer(
        settings.topic_calls, bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    found: dict[str, tuple[int, int]] = {}
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=2000)
            if not batches:
                return found
            for records in batches.values():
                for record in records:
                    for raw in decode_calls(record.value or b""):
                        event_id = str(raw.get("event_id")) if isinstance(raw, dict) else ""
                        if event_id in event_ids:
                            found.setdefault(event_id, (record.partition, record.offset))
    finally:
        await consumer.stop()


async def _produce_to(settings: Settings, partitions: list[int], events: list[UsageEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(0, len(events), 20):
            chunk = events[i : i + 20]
            await producer.send_and_wait(
                settings.topic_calls, encode_calls(chunk), key=b"k",
                partition=partitions[(i // 20) % len(partitions)],
            )  # fmt: skip
    finally:
        await producer.stop()


def test_partitions_never_committed_are_read_from_their_start_after_a_restart(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    """One partition has committed offsets, the others none: a restart reads them all.

    The committed one continues at its committed offset, the others start at their
    earliest offset, and the log says where each partition starts.
    """
    settings = worker_settings(migrated)
    ensure = asyncio.run(ensure_topics(settings))
    assert settings.topic_calls in ensure
    events = make_events(400, datetime.now(UTC) - timedelta(days=3), step=timedelta(minutes=5))
    asyncio.run(_produce_to(settings, [1], events[:200]))
    first = worker_factory(settings)
    wait_for(lambda: totals(settings)["raw"][0] == 200, 60, "partition 1")
    # 10 messages of 20 calls, stored, so committed past them (a producer retry under load
    # can write a message twice: the log then holds more than 10, and the copies come later)
    wait_for(lambda: committed_at(first, 1) >= 10, 30, "the commit of partition 1")
    first.stop()
    asyncio.run(_produce_to(settings, [0, 2, 1], events[200:]))
    second = worker_factory(settings)
    wait_for(lambda: totals(settings)["raw"][0] >= 400, 60, "every partition")
    assert totals(settings)["raw"] == expected_totals(events, [cost_of(e) for e in events])
    starts = [line for line in second.tail(200_000).splitlines() if "reading from {" in line]
    assert starts, second.tail()
    start = {int(p): int(o) for p, o in re.findall(r"(\d+): (\d+)", starts[0].split("from")[1])}
    # never-committed partitions from their start, partition 1 past what the first worker
    # stored (at its committed offset: that no message was skipped, the exact totals above
    # show; the local broker's end offsets lag its log at times, so they bound nothing here)
    assert start[0] == start[2] == 0, starts
    assert start[1] >= 10, starts


@contextlib.contextmanager
def raw_inserts_refused(settings: Settings) -> Iterator[None]:
    """ClickHouse refuses every insert into ``usage_events`` (a CHECK no row passes, on
    every shard's storage table) while the block runs; the batch ledger still records."""
    table = f"`{settings.clickhouse_database}`.{Layout.of(settings).local_name('usage_events')}"
    client = admin_client(settings)
    try:
        client.command(f"ALTER TABLE {table} ADD CONSTRAINT refuse_every_row CHECK 0")
        try:
            yield
        finally:
            client.command(f"ALTER TABLE {table} DROP CONSTRAINT refuse_every_row")
    finally:
        client.close()


def committed_at(worker: WorkerProcess, partition: int) -> int:
    """The offset ``worker`` committed for a calls partition (-1 while it has none)."""
    return int(((worker.health() or {}).get("committed") or {}).get(str(partition), -1))
