"""Batch boundaries, recording before inserting, acks after, retries and re-forming."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from stream_processor.enrich import COLUMNS, Row
from stream_processor.metrics import Metrics
from stream_processor.sink import OCCURRED_AT, Aborted, Sink, by_month

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


class Message:
    def __init__(self, log: list[tuple[Any, ...]], offset: int) -> None:
        self.log, self.offset, self.acked = log, offset, False

    def ack(self) -> bool:
        self.acked = True
        self.log.append(("ack", self.offset))
        return True


def make_sink(writer: FakeWriter, max_events: int = 4, max_seconds: float = 60) -> Sink:
    return Sink(writer, Metrics(), cluster_id="cid", topic="calls",  # type: ignore[arg-type]
                max_events=max_events, max_seconds=max_seconds, retry_max_s=0.01)  # fmt: skip


async def feed(sink: Sink, writer: FakeWriter, offsets: list[int], rows_each: int = 2,
               partition: int = 0) -> list[Message]:  # fmt: skip
    messages = []
    for offset in offsets:
        message = Message(writer.calls, offset)
        messages.append(message)
        await sink.add(partition, offset, message, [row()] * rows_each)
    return messages


def test_size_bound_records_before_insert_and_acks_after() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=4)
        await sink.open_partition(0, 0)
        messages = await feed(sink, writer, [0, 1, 2])
        await sink.drain()
        assert writer.calls == [
            ("record", 0, 1, 4, "cid:calls:0:0-1"),
            ("insert", 4, "cid:calls:0:0-1"),
            ("ack", 0),
            ("ack", 1),
        ]
        assert not messages[2].acked, "an open batch is not acked"

    asyncio.run(run())


def test_time_bound_flushes_old_batches_only() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=100, max_seconds=0.05)
        await sink.open_partition(0, 0)
        await feed(sink, writer, [0])
        await sink.flush_due()
        assert writer.calls == []
        await asyncio.sleep(0.06)
        await sink.flush_due()
        await sink.drain()
        assert [c[0] for c in writer.calls] == ["record", "insert", "ack"]

    asyncio.run(run())


def test_recorded_ranges_are_re_formed_exactly_without_recording_again() -> None:
    async def run() -> None:
        # the crashed worker recorded [10, 12] (6 rows > max_events) and [13, 13]
        writer = FakeWriter(plan=[(3, 9), (10, 12), (13, 13)])
        sink = make_sink(writer, max_events=2, max_seconds=0.0)
        await sink.open_partition(0, 10)
        await feed(sink, writer, [10, 11])
        await sink.flush_due()  # a planned batch ignores size and time bounds
        assert writer.calls == []
        await feed(sink, writer, [12, 13, 14])
        await sink.flush_due(force=True)
        assert writer.calls[:5] == [
            ("insert", 6, "cid:calls:0:10-12"), ("ack", 10), ("ack", 11), ("ack", 12),
            ("insert", 2, "cid:calls:0:13-13"),
        ]  # fmt: skip
        assert writer.calls[6][:2] == ("record", 14), "after the plan, batches are recorded"

    asyncio.run(run())


def test_unrecorded_messages_before_a_recorded_range_form_their_own_batch() -> None:
    async def run() -> None:
        writer = FakeWriter(plan=[(12, 13)])
        sink = make_sink(writer, max_events=100)
        await sink.open_partition(0, 10)
        await feed(sink, writer, [10, 11, 12, 13])
        await sink.drain()
        inserts = [c for c in writer.calls if c[0] == "insert"]
        assert inserts == [("insert", 4, "cid:calls:0:10-11"), ("insert", 4, "cid:calls:0:12-13")]

    asyncio.run(run())


def test_a_gap_at_the_end_of_a_recorded_range_keeps_its_token() -> None:
    async def run() -> None:
        writer = FakeWriter(plan=[(10, 12)])
        sink = make_sink(writer, max_events=100)
        await sink.open_partition(0, 10)
        await feed(sink, writer, [10, 11, 14])  # offset 12 no longer exists
        await sink.drain()
        assert ("insert", 4, "cid:calls:0:10-12") in writer.calls

    asyncio.run(run())


def test_clickhouse_outage_is_retried_and_nothing_is_acked_before_success() -> None:
    async def run() -> None:
        writer = FakeWriter(failures=3)
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)  # fails 3 times, then succeeds
        writer.failures = 4
        messages = await feed(sink, writer, [0])
        await sink.drain()
        assert messages[0].acked
        assert writer.calls == [("record", 0, 0, 2, "cid:calls:0:0-0"),
                                ("insert", 2, "cid:calls:0:0-0"), ("ack", 0)]  # fmt: skip
        assert sink.metrics.insert_failures._value.get() == 7

    asyncio.run(run())


def test_revoke_during_retries_aborts_without_acking() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)
        writer.failures = 10**9
        message = Message(writer.calls, 0)
        await sink.add(0, 0, message, [row(), row()])  # the write retries in the background
        await asyncio.sleep(0.05)
        await sink.reset()
        assert not message.acked and not sink.buffers
        with pytest.raises(Aborted):  # the partition must be re-opened (re-planned) first
            await sink.add(0, 1, Message(writer.calls, 1), [])

    asyncio.run(run())


def test_the_next_batch_is_read_while_the_previous_one_is_written() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=2)
        await sink.open_partition(0, 0)
        writer.failures = 50  # the first batch's record call keeps failing for a while
        first = await feed(sink, writer, [0])  # full: handed to a background write
        second = await feed(sink, writer, [1], rows_each=1)  # buffered meanwhile
        assert not first[0].acked and not second[0].acked
        await sink.drain()
        assert first[0].acked and not second[0].acked
        await sink.flush_due(force=True)
        assert second[0].acked
        acks = [c for c in writer.calls if c[0] == "ack"]
        assert acks == [("ack", 0), ("ack", 1)], "acked in offset order"

    asyncio.run(run())


def test_messages_without_rows_are_acked_without_an_insert() -> None:
    async def run() -> None:
        writer = FakeWriter()
        sink = make_sink(writer, max_events=1)
        await sink.open_partition(0, 0)
        await feed(sink, writer, [0, 1], rows_each=0)
        await sink.flush_due(force=True)
        assert writer.calls == [("ack", 0), ("ack", 1)]

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
            await sink.add(0, offset, Message(writer.calls, offset), [row(at)])
        await sink.drain()
        assert writer.calls[:3] == [
            ("record", 0, 2, 3, "cid:calls:0:0-2"),
            ("insert", 1, "cid:calls:0:0-2:202611"),
            ("insert", 2, "cid:calls:0:0-2:202612"),
        ]

    asyncio.run(run())
