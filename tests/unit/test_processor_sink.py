"""Batch boundaries, recording before inserting, offsets reported after, retries, re-forming."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from stream_processor.enrich import COLUMNS, Row
from stream_processor.metrics import Metrics
from stream_processor.sink import MAX_PENDING, OCCURRED_AT, Aborted, Sink, by_month

DEC_1 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def row(at: datetime = DEC_1) -> Row:
    """A usage_events row whose only meaningful column is ``occurred_at``."""
    return tuple(at if i == OCCURRED_AT else None for i in range(len(COLUMNS)))


class FakeWriter:
    """Stands in for ClickHouse: keeps calls in order, can fail a number of times."""

    def __init__(self, plan: list[tuple[int, int]] | None = None, failures: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.plan = plan or []
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("ClickHouse is down")

    def planned(self, cluster: str, topic: str, partition: int, start: int) -> list[Any]:
        self._maybe_fail()
        return [r for r in self.plan if r[1] >= start]

    def record(self, cluster: str, topic: str, partition: int, first: int, last: int,
               messages: int, rows: int, token: str) -> None:  # fmt: skip
        self._maybe_fail()
        self.calls.append(("record", first, last, rows, token))

    def insert(self, rows: Sequence[Any], token: str) -> float:
        self._maybe_fail()
        self.calls.append(("insert", len(rows), token))
        return 0.001


class HeldInserts(FakeWriter):
    """A ClickHouse whose inserts wait until ``release`` is set (busy, or slow)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def insert(self, rows: Sequence[Any], token: str) -> float:
        self.release.wait(5)
        return super().insert(rows, token)


def make_sink(writer: FakeWriter, max_events: int = 4, max_seconds: float = 60,
              clock: Callable[[], float] = time.monotonic) -> Sink:  # fmt: skip
    """A sink whose stored offsets land in ``writer.calls`` as ``("written", next offset)``."""
    return Sink(writer, Metrics(), cluster_id="cid", topic="calls",  # type: ignore[arg-type]
                max_events=max_events, max_seconds=max_seconds, retry_max_s=0.01,
                on_written=lambda partition, offset: writer.calls.append(("written", offset)),
                clock=clock)  # fmt: skip


async def feed(sink: Sink, offsets: list[int], rows_each: int = 2, partition: int = 0) -> None:
    for offset in offsets:
        await sink.add(partition, offset, [row()] * rows_each)


def written(writer: FakeWriter) -> list[int]:
    return [c[1] for c in writer.calls if c[0] == "written"]


def test_size_bound_records_before_insert_and_reports_after() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=4)
        await sink.open_partition(0, 0)
        await feed(sink, [0, 1, 2])
        await sink.drain()
        assert writer.calls == [
            ("record", 0, 1, 4, "cid:calls:0:0-1"),
            ("insert", 4, "cid:calls:0:0-1"),
            ("written", 2),
        ], "offset 2 is in the open batch: not reported"

    asyncio.run(run())


def test_time_bound_flushes_old_batches_only() -> None:
    async def run() -> None:
        writer = FakeWriter()
        now = [100.0]
        sink = make_sink(writer, max_events=100, max_seconds=0.05, clock=lambda: now[0])
        await sink.open_partition(0, 0)
        await feed(sink, [0])
        now[0] += 0.049
        await sink.flush_due()
        assert writer.calls == []
        now[0] += 0.001
        await sink.flush_due()
        await sink.drain()
        assert [c[0] for c in writer.calls] == ["record", "insert", "written"]

    asyncio.run(run())


def test_due_batches_keep_filling_while_clickhouse_is_busy() -> None:
    """With MAX_PENDING writes pending, a batch past its age bound is not handed on (the
    consumer would wait): it grows, and goes as one larger insert once a write has ended;
    at twice the bound it waits for its turn however busy ClickHouse is."""

    async def run() -> None:
        writer = HeldInserts()
        now = [100.0]
        sink = make_sink(writer, max_events=2, max_seconds=1.0, clock=lambda: now[0])
        for partition in (0, 1, 2):
            await sink.open_partition(partition, 0)
        await feed(sink, [0], rows_each=2, partition=0)  # complete: written in the background
        await feed(sink, [0], rows_each=2, partition=1)
        assert sink.writing() == MAX_PENDING
        await feed(sink, [0], rows_each=1, partition=2)
        now[0] += 1.5
        async with asyncio.timeout(1):
            await sink.flush_due()  # due, but ClickHouse is busy: no wait
            await feed(sink, [1], rows_each=0, partition=2)
        assert not any(c[0] == "record" and c[4].startswith("cid:calls:2:") for c in writer.calls)
        now[0] += 1.0
        overdue = asyncio.create_task(sink.flush_due())
        await asyncio.sleep(0.05)
        assert not overdue.done(), "twice the bound: it waits for a turn"
        writer.release.set()
        await overdue
        await sink.drain()
        tokens = [c[2] for c in writer.calls if c[0] == "insert"]
        assert tokens == ["cid:calls:0:0-0", "cid:calls:1:0-0", "cid:calls:2:0-1"]

    asyncio.run(run())


def test_recorded_ranges_are_re_formed_exactly_without_recording_again() -> None:
    async def run() -> None:
        # the crashed worker recorded [10, 12] (6 rows > max_events) and [13, 13]
        writer = FakeWriter(plan=[(3, 9), (10, 12), (13, 13)])
        sink = make_sink(writer, max_events=2, max_seconds=0.0)
        await sink.open_partition(0, 10)
        await feed(sink, [10, 11])
        await sink.flush_due()  # a planned batch ignores size and time bounds
        assert writer.calls == []
        await feed(sink, [12, 13, 14])
        await sink.flush_due(force=True)
        assert writer.calls[:5] == [
            ("insert", 6, "cid:calls:0:10-12"),
            ("written", 13),
            ("insert", 2, "cid:calls:0:13-13"),
            ("written", 14),
            ("record", 14, 14, 2, "cid:calls:0:14-14"),
        ], "after the plan, batches are recorded again"

    asyncio.run(run())


def test_unrecorded_messages_before_a_recorded_range_form_their_own_batch() -> None:
    async def run() -> None:
        writer = FakeWriter(plan=[(12, 13)])
        sink = make_sink(writer, max_events=100)
        await sink.open_partition(0, 10)
        await feed(sink, [10, 11, 12, 13])
        await sink.drain()
        inserts = [c for c in writer.calls if c[0] == "insert"]
        assert inserts == [("insert", 4, "cid:calls:0:10-11"), ("insert", 4, "cid:calls:0:12-13")]

    asyncio.run(run())


def test_a_gap_at_the_end_of_a_recorded_range_keeps_its_token() -> None:
    async def run() -> None:
        writer = FakeWriter(plan=[(10, 12)])
        sink = make_sink(writer, max_events=100)
        await sink.open_partition(0, 10)
        await feed(sink, [10, 11, 14])  # offset 12 no longer exists
        await sink.drain()
        assert ("insert", 4, "cid:calls:0:10-12") in writer.calls
        assert written(writer) == [12], "stored up to the last offset read"

    asyncio.run(run())


def test_clickhouse_outage_is_retried_and_nothing_is_reported_before_success() -> None:
    async def run() -> None:
        writer = FakeWriter(failures=3)
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)  # fails 3 times, then succeeds
        writer.failures = 4
        await feed(sink, [0])
        await sink.drain()
        assert writer.calls == [("record", 0, 0, 2, "cid:calls:0:0-0"),
                                ("insert", 2, "cid:calls:0:0-0"), ("written", 1)]  # fmt: skip
        assert sink.metrics.total("insert_failures") == 7

    asyncio.run(run())


def test_revoke_during_retries_aborts_without_reporting() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)
        writer.failures = 10**9
        await sink.add(0, 0, [row(), row()])  # the write retries in the background
        while sink.metrics.total("insert_failures") < 2:  # it is retrying
            await asyncio.sleep(0.001)
        await sink.reset()
        assert written(writer) == [] and not sink.buffers
        with pytest.raises(Aborted):  # the partition must be re-opened (re-planned) first
            await sink.add(0, 1, [])

    asyncio.run(run())


def test_the_next_batch_is_read_while_the_previous_one_is_written() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)
        writer.failures = 50  # the first batch's record call keeps failing for a while
        await feed(sink, [0])  # full: handed to a background write
        await feed(sink, [1], rows_each=1)  # buffered meanwhile
        assert written(writer) == []
        await sink.drain()
        assert written(writer) == [1], "the first batch only"
        await sink.flush_due(force=True)
        assert written(writer) == [1, 2], "reported in offset order"

    asyncio.run(run())


def test_messages_without_rows_are_reported_without_an_insert() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=1)
        await sink.open_partition(0, 0)
        await feed(sink, [0, 1], rows_each=0)
        await sink.flush_due(force=True)
        assert writer.calls == [("written", 2)], "one batch of both, no insert"

    asyncio.run(run())


def test_a_batch_is_inserted_once_per_utc_month_each_under_its_own_token() -> None:
    """One part per table per insert: a batch across a month boundary is two inserts."""
    nov = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    dec = DEC_1
    jan = datetime(2027, 1, 1, 0, 0, tzinfo=UTC)
    assert by_month([row(dec), row(dec)], "t") == [("t", [row(dec), row(dec)])]
    split = by_month([row(dec), row(nov), row(jan), row(nov)], "t")
    assert split == [
        ("t:202611", [row(nov), row(nov)]),
        ("t:202612", [row(dec)]),
        ("t:202701", [row(jan)]),
    ]
    assert by_month([row(nov), row(jan), row(dec), row(nov)], "t") == split, "pure"

    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=3)
        await sink.open_partition(0, 0)
        for offset, at in enumerate([nov, dec, dec]):
            await sink.add(0, offset, [row(at)])
        await sink.drain()
        assert writer.calls[:3] == [
            ("record", 0, 2, 3, "cid:calls:0:0-2"),
            ("insert", 1, "cid:calls:0:0-2:202611"),
            ("insert", 2, "cid:calls:0:0-2:202612"),
        ]

    asyncio.run(run())


def test_a_flush_cancelled_while_the_previous_batch_retries_never_reports_past_it() -> None:
    """A stop whose deadline expires while batch 0-1 is still retrying and the next one
    waits behind it: later batches are written only after both, so no offset past 0-1 is
    reported before 0-1 is stored."""

    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)
        writer.failures = 5  # batch 0-1: its record call fails five times, then succeeds
        await feed(sink, [0], rows_each=2)  # full: written in the background, retrying
        await feed(sink, [2], rows_each=2)  # full: pending behind 0-1
        await feed(sink, [4], rows_each=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):  # the stop's deadline, while 0-1 retries
                await sink.flush_due(force=True)  # waits: MAX_PENDING batches are pending
        await feed(sink, [5], rows_each=1)  # the batch 4-5 is complete: flushed now
        await sink.drain()
        await sink.flush_due(force=True)
        assert written(writer) == [1, 3, 6], "0-1 first, then 2-3, then 4-5"

    asyncio.run(run())


def test_complete_batches_are_written_in_the_background_at_most_max_pending_at_once() -> None:
    """The consumer goes on while MAX_PENDING batches (of any partitions) wait for
    ClickHouse, then waits; each batch is written after the one before it of its
    partition."""

    async def run() -> None:
        writer = HeldInserts()
        sink = make_sink(writer, max_events=2)
        for partition in (0, 1):
            await sink.open_partition(partition, 0)
        async with asyncio.timeout(1):  # neither waits for the held insert
            await feed(sink, [0, 1], rows_each=1, partition=0)
            await feed(sink, [0, 1], rows_each=1, partition=1)
        assert sink.writing() == MAX_PENDING == 2
        third = asyncio.create_task(feed(sink, [2, 3], rows_each=1, partition=0))
        await asyncio.sleep(0.05)
        assert not third.done(), "a third batch waits until one of the two is written"
        writer.release.set()
        await third
        await sink.drain()
        assert written(writer) == [2, 2, 4]
        tokens = [c[2] for c in writer.calls if c[0] == "insert"]
        assert tokens == ["cid:calls:0:0-1", "cid:calls:1:0-1", "cid:calls:0:2-3"]

    asyncio.run(run())


def test_a_partition_whose_opening_outlived_a_revoke_is_not_opened() -> None:
    """The revoke did not wait for ``planned`` (ClickHouse slow): when it returns, the
    partition belongs to an old assignment and must not be open with that plan."""
    released = threading.Event()

    class SlowWriter(FakeWriter):
        def planned(self, cluster: str, topic: str, partition: int, start: int) -> list[Any]:
            released.wait(5)
            return []

    async def run() -> None:
        sink = make_sink(SlowWriter())
        opening = asyncio.create_task(sink.open_partition(0, 0))
        await asyncio.sleep(0)  # the planned call is on the ClickHouse thread now
        asyncio.get_running_loop().call_later(0.05, released.set)
        await sink.reset()  # the revoke: returns once the ClickHouse thread is idle
        with pytest.raises(Aborted):
            await opening
        assert not sink.is_open(0)

    asyncio.run(run())


def test_a_write_failing_other_than_aborted_ends_the_sink_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a ClickHouse error (those are retried): a bug. The partition must not go on
    reading with nothing reported; the next add raises it, so the worker ends."""

    def broken(partition: int, next_offset: int) -> None:
        raise RuntimeError("bug in on_written")

    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        sink.on_written = broken
        await sink.open_partition(0, 0)
        await feed(sink, [0], rows_each=2)  # complete: written in the background
        with pytest.raises(RuntimeError, match="bug in on_written"):
            await sink.drain()
        with pytest.raises(RuntimeError, match="bug in on_written"):
            await feed(sink, [1], rows_each=1)

    asyncio.run(run())
    assert "a batch write failed" in caplog.text


def test_a_flush_waiting_for_a_slot_across_a_revoke_hands_nothing_on() -> None:
    """Revoked while MAX_PENDING writes were pending: the waiting batch belongs to the old
    assignment; it is neither written nor reported (the next owner replays it)."""

    async def run() -> None:
        writer = HeldInserts()
        sink = make_sink(writer, max_events=1)
        await sink.open_partition(0, 0)
        await feed(sink, [0, 1], rows_each=1)  # two complete batches pending
        waiting = asyncio.create_task(feed(sink, [2], rows_each=1))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        revoke = asyncio.create_task(sink.reset())
        writer.release.set()
        await revoke
        with pytest.raises(Aborted):
            await waiting
        assert sink.writing() == 0
        assert 3 not in written(writer), "the batch of offset 2 was never reported"

    asyncio.run(run())
