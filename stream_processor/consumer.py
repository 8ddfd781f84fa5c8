"""The calls topic's consumer: the one place that reads and commits its offsets.

A plain ``AIOKafkaConsumer`` (manual commits) in a Faust service on the worker's own event
loop. ClickHouse is the state of record: an offset is committed only once every row before
it is stored (the sink reports each written batch), so a restarted or newly assigned worker
starts exactly at the committed offset, or at the earliest one where there is none.

Offsets of the calls topic are contiguous (no compaction, no transactions), so a partition
is read strictly in order. A record past the expected offset is an out-of-order fetch (the
local broker can return a later batch before an earlier one that is still being written):
the partition is re-read from the expected offset with ``seek``, which aiokafka applies to
the next fetch and which makes it discard records fetched before it, and the later record
is never taken first. An offset still missing after ``hole_report_s`` is reported (log with
the range, metric, ``/health``), never skipped. A partition with lag that delivers nothing
for ``stall_report_s`` is reported the same way (nothing seeks it) when the broker keeps
answering its fetches, or when the whole consumer took nothing for that long. While the
consumer works through other partitions' fetched records, a partition whose own are
buffered is waiting its turn, not stalled: aiokafka neither fetches it again nor hands it
out until those earlier fetches are drained, which under a backlog can take longer.

On a rebalance the listener flushes what is buffered, commits what is written, and forgets
every partition; on assignment each partition is read from its committed offset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from mode import Service

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings
from stream_processor.metrics import Metrics
from stream_processor.sink import Aborted

log = logging.getLogger(__name__)

# Per-partition fetch size. aiokafka *skips* a record larger than this when the broker
# returns it cut at the fetch size (Tansu does; Kafka >= 0.10.1 returns it whole), which
# would drop its good events silently. producers/ never writes more than 900 kB per message.
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024
# Kafka records per getmany: one round of handling between two commits. The round's records
# stay in memory until it ends, and one record can hold hundreds of events: 2,000 of 200
# events each held about 190 MB.
MAX_RECORDS = 250
POLL_TIMEOUT_MS = 200
END_OFFSETS_TIMEOUT_S = 2.0
REREAD_BACKOFF_S = 0.05  # between two re-reads of offsets that are still missing


class CallHandler(Protocol):
    """What the consumer drives: the worker's validate → dedupe → price → sink path."""

    async def open_partition(self, partition: int, offset: int) -> None: ...

    async def handle(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None: ...

    async def flush(self) -> None: ...

    async def forget(self) -> None: ...

    async def on_assignment(self) -> None: ...


@dataclass
class Gap:
    """A partition waiting for ``expected`` while the broker returned ``seen`` first."""

    expected: int
    seen: int
    since: float
    reported: bool = False


@dataclass
class Progress:
    """When a partition last moved, for the stall report."""

    offset: int
    since: float
    reported: bool = False


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: CallsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.on_assigned(assigned)


class CallsConsumer(Service):
    """Reads the calls topic in offset order and commits what ClickHouse stored."""

    def __init__(
        self,
        settings: Settings,
        handler: CallHandler,
        metrics: Metrics,
        *,
        hole_report_s: float = 30.0,
        stall_report_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topic = settings.topic_calls
        self.handler = handler
        self.metrics = metrics
        self.hole_report_s = hole_report_s
        self.stall_report_s = stall_report_s
        self.consumer: AIOKafkaConsumer | None = None
        self.next_offsets: dict[int, int] = {}  # assigned partition -> offset to take next
        self.written: dict[int, int] = {}  # partition -> offset after its last stored batch
        self.committed: dict[int, int] = {}
        self.gaps: dict[int, Gap] = {}
        self.stalls: dict[int, int] = {}  # partition -> lag, while reported stalled
        self.lag: dict[int, int] = {}
        self._progress: dict[int, Progress] = {}
        self._took_at = time.monotonic()  # when any partition last handed out a record
        self._handling = asyncio.Lock()  # one getmany's records, or a rebalance
        self._commit_lock = asyncio.Lock()
        self._failed: BaseException | None = None  # an error the consumer cannot handle
        self._assignment = 0  # bumped on every revoke and assignment

    # --- lifecycle -------------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        session_ms = int(s.processor_session_timeout_s * 1000)
        self.consumer = AIOKafkaConsumer(
            **kafka_client_options(s),
            group_id=s.processor_group,
            client_id=f"{s.processor_group}-calls",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_uncommitted",
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
            fetch_max_wait_ms=s.processor_fetch_max_wait_ms,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(500, min(3000, session_ms // 4)),
            rebalance_timeout_ms=int(s.processor_rebalance_timeout_s * 1000),
            max_poll_interval_ms=int(s.processor_max_poll_interval_s * 1000),
        )
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Listener(self))

    async def on_stop(self) -> None:
        """Store what is buffered and commit it, then leave the group."""
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        try:
            async with asyncio.timeout(self._flush_deadline()):
                async with self._handling:
                    await self.handler.flush()
                    await self._commit(consumer)
        except (TimeoutError, Aborted):
            log.warning("stop: could not store every buffered batch; they will be replayed")
        await self._release_all()
        await consumer.stop()

    async def _release_all(self) -> None:
        """Forget every partition: first fence (whatever still waits on ClickHouse aborts),
        then wait for the round in hand to end, so nothing of it is reported or committed."""
        self._assignment += 1
        self.next_offsets.clear()
        await self.handler.forget()
        try:
            async with asyncio.timeout(self.settings.processor_rebalance_timeout_s):
                async with self._handling:
                    await self.handler.forget()
        except TimeoutError as exc:
            log.critical(
                "the calls consumer did not leave its round within %.0fs",
                self.settings.processor_rebalance_timeout_s,
            )
            self._failed = exc
        self.written.clear()
        self.committed.clear()
        self.gaps.clear()
        self.stalls.clear()
        self._progress.clear()
        self.metrics.offset_gaps.set(0)
        self.metrics.stalled_partitions.set(0)

    def _flush_deadline(self) -> float:
        return max(1.0, self.settings.processor_rebalance_timeout_s / 3)

    # --- reading -------------------------------------------------------------------------------
    @Service.task
    async def _read(self) -> None:
        while not self.should_stop:
            consumer = self.consumer
            if consumer is None:
                return
            if self._failed is not None:
                raise self._failed  # the service crashes and the worker ends: not a stall
            try:
                batches = await consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS
                )
            except ConsumerStoppedError:
                return
            async with self._handling:
                if self.consumer is not consumer:
                    return  # stopping: what is in hand is read again by the next owner
                for tp, records in batches.items():
                    await self._take(consumer, tp, records)
                await self._commit(consumer)

    async def _take(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]
    ) -> None:
        """Hand a partition's records to the handler in offset order, from the expected one."""
        partition = tp.partition
        expected = self.next_offsets.get(partition)
        if expected is None:
            return  # revoked since the fetch
        assignment = self._assignment
        try:
            await self.handler.open_partition(partition, expected)
            for record in records:
                if record.offset < expected:
                    continue  # already taken (a fetch from before a seek)
                if record.offset > expected:
                    self._out_of_order(consumer, tp, expected, record.offset)
                    return
                await self.handler.handle(partition, record.offset, record.key, record.value)
                if self._assignment != assignment:
                    return  # revoked while this record was handled
                expected = self.next_offsets[partition] = record.offset + 1
                self._took_at = time.monotonic()
        except Aborted:
            return  # revoked while waiting on ClickHouse; the next owner replays
        gap = self.gaps.get(partition)
        if gap is None or expected <= gap.expected:
            return
        del self.gaps[partition]
        if gap.reported:
            log.warning(
                "partition %d: offsets from %d arrived after all (%.1fs late)",
                partition,
                gap.expected,
                time.monotonic() - gap.since,
            )
            self.metrics.offset_gaps.set(len(self.gaps))

    def _out_of_order(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, expected: int, seen: int
    ) -> None:
        """Re-read from ``expected``: the later records are dropped and fetched again."""
        partition = tp.partition
        gap = self.gaps.get(partition)
        if gap is None or gap.expected != expected:
            self.gaps[partition] = Gap(expected, seen, time.monotonic())
            self.metrics.out_of_order_fetches.inc()
            log.info(
                "partition %d: offset %d arrived while %d is next; re-reading from %d",
                partition,
                seen,
                expected,
                expected,
            )
        else:  # still missing: give the broker a moment before reading them again
            consumer.pause(tp)
            loop = asyncio.get_running_loop()
            loop.call_later(REREAD_BACKOFF_S, self._resume, consumer, tp, self._assignment)
        consumer.seek(tp, expected)

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition, assignment: int) -> None:
        current = self.consumer
        if current is not None and current is consumer and self._assignment == assignment:
            current.resume(tp)  # a new assignment starts unpaused: nothing to undo then

    # --- offsets -------------------------------------------------------------------------------
    def mark_written(self, partition: int, next_offset: int) -> None:
        """The sink stored every row before ``next_offset``: it may be committed."""
        if partition in self.next_offsets:
            self.written[partition] = max(next_offset, self.written.get(partition, 0))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        async with self._commit_lock:
            due = {
                TopicPartition(self.topic, p): offset
                for p, offset in self.written.items()
                if self.committed.get(p) != offset and p in self.next_offsets
            }
            if not due:
                return
            try:
                await consumer.commit(due)
            except KafkaError as exc:  # the group moved on: the next owner replays
                log.warning(
                    "commit of %s failed: %s", {tp.partition: o for tp, o in due.items()}, exc
                )
                return
            for tp, offset in due.items():
                self.committed[tp.partition] = offset

    # --- rebalancing ---------------------------------------------------------------------------
    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Flush and commit what can be stored in time, then forget every partition."""
        consumer = self.consumer
        if not self.next_offsets:
            return
        try:
            async with asyncio.timeout(self._flush_deadline()):
                async with self._handling:
                    await self.handler.flush()
                    if consumer is not None:
                        await self._commit(consumer)
        except (TimeoutError, Aborted):
            log.warning(
                "rebalance: could not store every buffered batch within %.1fs; "
                "they will be replayed",
                self._flush_deadline(),
            )
        log.info(
            "rebalance: partitions %s revoked at committed offsets %s",
            sorted(tp.partition for tp in revoked),
            dict(sorted(self.committed.items())),
        )
        await self._release_all()

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Read each partition from its committed offset (the earliest where there is none)."""
        consumer = self.consumer
        if consumer is None:
            return
        mine = sorted(
            (tp for tp in assigned if tp.topic == self.topic), key=lambda tp: tp.partition
        )
        self._assignment += 1
        try:
            async with asyncio.timeout(self.settings.processor_rebalance_timeout_s):
                await self.handler.on_assignment()
                fresh = []
                for tp in mine:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        fresh.append(tp)
                    else:
                        self._start(consumer, tp, committed, committed)
                if fresh:
                    earliest = await consumer.beginning_offsets(fresh)
                    for tp in fresh:
                        self._start(consumer, tp, earliest[tp], None)
        except Exception as exc:
            # aiokafka logs a listener's exception and carries on, which would leave these
            # partitions assigned and never read: end the worker instead (a new one retries)
            log.critical("cannot tell where partitions %s start: %r", mine, exc)
            self._failed = exc
            return
        log.info(
            "assigned calls partitions %s, reading from %s",
            [tp.partition for tp in mine],
            dict(sorted(self.next_offsets.items())),
        )

    def _start(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, committed: int | None
    ) -> None:
        consumer.seek(tp, offset)
        self.next_offsets[tp.partition] = offset
        if committed is not None:
            self.committed[tp.partition] = committed
        self._progress[tp.partition] = Progress(offset, time.monotonic())

    # --- health --------------------------------------------------------------------------------
    async def check(self, clickhouse_failing: bool) -> None:
        """Measure lag; report gaps and stalls that lasted too long (a timer calls this)."""
        consumer = self.consumer
        if consumer is None or not self.next_offsets:
            self.lag = {}
            return
        tps = [TopicPartition(self.topic, p) for p in sorted(self.next_offsets)]
        try:
            async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):
                ends = await consumer.end_offsets(tps)
        except (TimeoutError, KafkaError):  # broker away or rebalancing: no verdict now
            return
        now = time.monotonic()
        lag: dict[int, int] = {}
        for tp, end in ends.items():
            expected = self.next_offsets.get(tp.partition)
            if expected is None:
                continue
            lag[tp.partition] = max(0, end - expected)
            self.metrics.consumer_lag.labels(str(tp.partition)).set(lag[tp.partition])
            unanswered_s = now - self._answered_at(consumer, tp)
            self._watch_progress(
                tp.partition, expected, lag[tp.partition], now, unanswered_s, clickhouse_failing
            )
        self.lag = lag
        for partition, gap in self.gaps.items():
            if not gap.reported and now - gap.since >= self.hole_report_s:
                gap.reported = True
                log.error(
                    "partition %d: offsets %d-%d are missing: the broker returned %d "
                    "first and has not returned them for %.0fs; nothing after them is "
                    "taken or committed until they arrive",
                    partition,
                    gap.expected,
                    gap.seen - 1,
                    gap.seen,
                    now - gap.since,
                )
        self.metrics.offset_gaps.set(sum(1 for g in self.gaps.values() if g.reported))

    @staticmethod
    def _answered_at(consumer: AIOKafkaConsumer, tp: TopicPartition) -> float:
        """Monotonic time of the broker's last answer to a fetch of ``tp`` (-inf: none)."""
        try:
            polled_ms = consumer.last_poll_timestamp(tp)
        except AssertionError:  # unassigned by a rebalance since
            polled_ms = None
        if polled_ms is None:
            return -float("inf")
        return time.monotonic() - max(0.0, time.time() - polled_ms / 1000)

    def _watch_progress(
        self,
        partition: int,
        expected: int,
        lag: int,
        now: float,
        unanswered_s: float,
        clickhouse_failing: bool,
    ) -> None:
        """Report a partition that has lag and has not moved for ``stall_report_s``, when
        the broker answered its fetches meanwhile (it returns nothing) or the consumer took
        nothing from any partition; otherwise its fetched records are waiting their turn.
        Nothing is a stall while ClickHouse fails: the sink holds the consumer back."""
        progress = self._progress.get(partition)
        if progress is None or progress.offset != expected or lag == 0 or clickhouse_failing:
            if progress is not None and progress.reported:
                log.info("partition %d delivers again at offset %d", partition, expected)
            self._progress[partition] = Progress(expected, now)
            self.stalls.pop(partition, None)
        elif now - progress.since >= self.stall_report_s and (
            unanswered_s < self.stall_report_s / 2 or now - self._took_at >= self.stall_report_s
        ):
            self.stalls[partition] = lag
            if not progress.reported:
                progress.reported = True
                log.warning(
                    "partition %d delivers nothing at offset %d for %.0fs with lag %d",
                    partition,
                    expected,
                    now - progress.since,
                    lag,
                )
        self.metrics.stalled_partitions.set(len(self.stalls))

    def problems(self) -> list[str]:
        """What /health reports as red: offsets missing, partitions stalled."""
        found = [
            f"partition {p}: offsets from {g.expected} missing (broker returned {g.seen})"
            for p, g in sorted(self.gaps.items())
            if g.reported
        ]
        found += [
            f"partition {p}: no progress with lag {lag}" for p, lag in sorted(self.stalls.items())
        ]
        return found

    def assigned(self) -> list[int]:
        return sorted(self.next_offsets)
