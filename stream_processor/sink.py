"""Write rows to ClickHouse exactly once, rollups included.

Each partition's messages are buffered into a batch, bounded by rows and by age. A batch is
a contiguous offset range of one partition, and its ``insert_deduplication_token`` is a pure
function of (cluster id, topic, partition, first, last offset); with
``deduplicate_blocks_in_dependent_materialized_views=1`` a repeated insert is dropped in
``usage_events`` and in every rollup. To make the ranges reproducible, each range is
recorded in ``processor_batches`` *before* its insert; after a crash or a rebalance the
partition's new owner reads the recorded ranges past its start offset and re-forms exactly
those batches. A batch's offsets are handed to ``on_written`` (which commits them) only
after ClickHouse acknowledged the insert, and in offset order per partition. While
ClickHouse is down the insert is retried with backoff and the consumer waits.

A complete batch is written in the background while the consumer goes on reading, so
that the worker's own work overlaps ClickHouse's; each batch is written after the one
before it of its partition. At most ``MAX_PENDING`` complete batches (of all partitions)
wait for ClickHouse: beyond that the consumer waits, so that a slow or absent ClickHouse
does not pile complete batches up in memory (open batches are bounded by rows and age).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from stream_processor.enrich import COLUMNS, Row
from stream_processor.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Views are filled one after the other (parallel_view_processing stays off, ClickHouse's
# default): with it on, a soak run after a ClickHouse outage left a rollup 146 rows short of
# the raw table (a retried insert's view blocks can split differently in parallel, and a
# view's token-based dedupe then drops rows it never stored).
INSERT_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "insert_deduplicate": 1,
    "async_insert": 0,
    # cluster mode writes through Distributed tables: acknowledged must mean stored
    "distributed_foreground_insert": 1,
}
MAX_PENDING = 2  # batches handed to ClickHouse and not yet written, all partitions
SLOW_INSERT_S = 5.0  # an insert slower than this is logged (a shard or disk in trouble)
NAME_COLUMNS = ("tenant_id", "source", "source_id", "source_name", "named_at")


class Aborted(Exception):
    """The partitions were revoked while a flush waited; its messages will be replayed."""


def dedup_token(cluster_id: str, topic: str, partition: int, first: int, last: int) -> str:
    """The insert token of a batch: changes with the broker's life, not with retries."""
    return f"{cluster_id}:{topic}:{partition}:{first}-{last}"


OCCURRED_AT = COLUMNS.index("occurred_at")


def by_month(rows: Sequence[Row], token: str) -> list[tuple[str, Sequence[Row]]]:
    """Split a batch into one insert per UTC month, each under its own token.

    Every table the insert reaches is partitioned by month or by year, so each of these
    inserts writes exactly one part per table. That matters when ClickHouse stops in the
    middle of an insert: a non-replicated MergeTree commits a multi-part insert part by
    part, and the retry of such a batch was doubled in a rollup (the ClickHouse-outage test,
    about one run in eight, even with a graceful stop). A batch within one month keeps the
    batch's token; the split is a pure function of the rows, so a replay splits the same way.
    """
    months: dict[tuple[int, int], list[Row]] = {}
    for row in rows:
        at = row[OCCURRED_AT]
        months.setdefault((at.year, at.month), []).append(row)
    if len(months) == 1:
        return [(token, rows)]  # the common case: the batch as it is, no copy
    return [(f"{token}:{y:04d}{m:02d}", part) for (y, m), part in sorted(months.items())]


def writer_client(settings: Settings) -> Client:
    """The sink's ClickHouse client. Inserts are encoded by clickhouse-connect's compiled
    Native codec (clickhouse-connect-core): the same bytes as its Python codec, for about
    half the CPU per row, under the GIL the consumer needs."""
    return connect(
        settings, autogenerate_session_id=False, send_receive_timeout=30, native_codec="rust"
    )


class ClickHouseWriter:
    """The blocking ClickHouse calls of the sink; always run on the sink's one thread."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], Client] | None = None):
        self.settings = settings
        self._factory = factory or writer_client
        self._client: Client | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._factory(self.settings)
        return self._client

    def _reset_on_error(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            raise

    def planned(
        self, cluster_id: str, topic: str, partition: int, from_offset: int
    ) -> list[tuple[int, int]]:
        """Recorded ranges of a partition that end at or after ``from_offset``."""
        sql = (
            "SELECT first_offset, argMin(last_offset, recorded_at) FROM processor_batches"
            " WHERE cluster_id = {c:String} AND topic = {t:String} AND partition = {p:UInt32}"
            " AND last_offset >= {o:UInt64} GROUP BY first_offset ORDER BY first_offset"
        )
        params = {"c": cluster_id, "t": topic, "p": partition, "o": from_offset}
        rows = self._reset_on_error(lambda: self.client.query(sql, parameters=params).result_rows)
        return [(int(first), int(last)) for first, last in rows]

    def record(
        self,
        cluster_id: str,
        topic: str,
        partition: int,
        first: int,
        last: int,
        messages: int,
        rows: int,
        token: str,
    ) -> None:
        data = [[cluster_id, topic, partition, first, last, messages, rows, token, self.worker]]
        names = [
            "cluster_id",
            "topic",
            "partition",
            "first_offset",
            "last_offset",
            "messages",
            "rows",
            "dedup_token",
            "worker",
        ]
        settings = {"distributed_foreground_insert": 1}
        self._reset_on_error(
            lambda: self.client.insert(
                "processor_batches", data, column_names=names, settings=settings
            )
        )

    def insert(self, rows: Sequence[Row], token: str) -> float:
        """Insert one batch under its token; returns the seconds ClickHouse took."""
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}
        started = time.perf_counter()
        self._reset_on_error(
            lambda: self.client.insert(
                "usage_events", rows, column_names=list(COLUMNS), settings=settings
            )
        )
        return time.perf_counter() - started

    def written_ids(self, topic: str, partition: int, window_s: int) -> list[tuple[int, float]]:
        """Event ids (as ints) a partition wrote within the window, with when (epoch s)."""
        sql = (
            "SELECT event_id, toUnixTimestamp64Milli(ingested_at) FROM processor_seen_ids"
            " WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32}"
            " AND ingested_at >= now64(3) - toIntervalSecond({w:UInt32})"
        )
        params = {"t": topic, "p": partition, "w": window_s}
        result = self._reset_on_error(lambda: self.client.query(sql, parameters=params))
        return [(event_id.int, written_ms / 1000) for event_id, written_ms in result.result_rows]

    def latest_names(self, since_ms: int) -> list[tuple[str, str, str, str, int]]:
        """Latest name of each entity named at or after ``since_ms`` (source_names)."""
        sql = (
            "SELECT tenant_id, toString(source), source_id, argMax(source_name, named_at),"
            " toUnixTimestamp64Milli(max(named_at)) FROM source_names"
            " WHERE named_at >= fromUnixTimestamp64Milli({s:Int64}, 'UTC')"
            " GROUP BY tenant_id, source, source_id"
        )
        result = self._reset_on_error(lambda: self.client.query(sql, parameters={"s": since_ms}))
        return [(str(t), str(s), str(i), str(n), int(ms)) for t, s, i, n, ms in result.result_rows]

    def insert_names(self, rows: Sequence[Sequence[Any]]) -> None:
        self._reset_on_error(
            lambda: self.client.insert("source_names", rows, column_names=list(NAME_COLUMNS))
        )


@dataclass
class _Buffer:
    """The open batch of one partition, plus the recorded ranges still to re-form."""

    generation: int
    plan: deque[tuple[int, int]]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    offsets: list[int] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    started: float = 0.0
    last: asyncio.Task[None] | None = None  # the partition's latest batch write

    def filling_plan(self) -> bool:
        return bool(self.plan and self.offsets and self.offsets[0] >= self.plan[0][0])


class Sink:
    """Per-partition batches, recorded then inserted, then reported to ``on_written``."""

    def __init__(
        self,
        writer: ClickHouseWriter,
        metrics: Metrics,
        *,
        cluster_id: str,
        topic: str,
        max_events: int,
        max_seconds: float,
        retry_max_s: float,
        on_written: Callable[[int, int], None] = lambda partition, next_offset: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.cluster_id = cluster_id
        self.topic = topic
        self.max_events = max_events
        self.max_seconds = max_seconds
        self.retry_max_s = retry_max_s
        self.on_written = on_written  # (partition, offset after the batch) once stored
        self.clock = clock  # of the batches' age bound
        self.generation = 0
        self.buffers: dict[int, _Buffer] = {}
        self.last_error: str = ""
        self.last_success = time.monotonic()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._writes: list[asyncio.Task[None]] = []  # batch writes not known done, oldest first
        self.failure: BaseException | None = None  # a write that failed other than Aborted

    # --- ClickHouse calls on the sink thread, with retries ------------------------------
    async def call(self, fn: Callable[..., T], *args: Any, generation: int | None = None) -> T:
        """Run ``fn`` on the ClickHouse thread until it succeeds (or the partitions move)."""
        delay = 0.1
        loop = asyncio.get_running_loop()
        while True:
            if generation is not None and generation != self.generation:
                raise Aborted()
            try:
                result = await loop.run_in_executor(self._executor, fn, *args)
            except Exception as exc:
                self.metrics.insert_failures.inc()
                self.metrics.clickhouse_up.set(0)
                if str(exc) != self.last_error:
                    log.warning("ClickHouse call failed (retrying with backoff): %s", exc)
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.last_error:
                log.info("ClickHouse is reachable again")
            self.last_error = ""
            self.last_success = time.monotonic()
            self.metrics.clickhouse_up.set(1)
            return result

    async def idle(self) -> None:
        """Wait until the ClickHouse thread has finished whatever call it is in."""
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- partitions ------------------------------------------------------------------------
    def is_open(self, partition: int) -> bool:
        buf = self.buffers.get(partition)
        return buf is not None and buf.generation == self.generation

    async def open_partition(
        self, partition: int, first_offset: int, generation: int | None = None
    ) -> None:
        """Start a partition at ``first_offset``: load the ranges to re-form from there.

        ``generation`` is the one the caller started in: if the partitions moved since (a
        revoke that did not wait for this call), nothing is opened (:class:`Aborted`).
        """
        if generation is None:
            generation = self.generation
        plan = await self.call(
            self.writer.planned,
            self.cluster_id,
            self.topic,
            partition,
            first_offset,
            generation=generation,
        )
        if plan and plan[0][0] < first_offset:
            log.warning(
                "partition %d restarts at %d inside recorded batch %s: its rest is re-formed "
                "under the recorded token",
                partition,
                first_offset,
                plan[0],
            )
        log.info("partition %d: reading from offset %d", partition, first_offset)
        if generation != self.generation:
            raise Aborted()
        if plan:
            log.info(
                "partition %d: re-forming %d recorded batch(es) %s..%s",
                partition,
                len(plan),
                plan[0],
                plan[-1],
            )
        self.buffers[partition] = _Buffer(generation, deque(plan))

    async def reset(self) -> None:
        """Forget every open batch (partitions revoked); unstored messages are read again."""
        self.generation += 1
        tasks = [*self._writes, *(b.last for b in self.buffers.values() if b.last is not None)]
        self._writes = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.buffers.clear()
        self.metrics.buffered_events.set(0)
        await self.idle()

    # --- batching --------------------------------------------------------------------------
    async def add(self, partition: int, offset: int, rows: list[Row]) -> None:
        """Buffer one message's rows; flush when a batch is complete."""
        if self.failure is not None:
            raise self.failure
        buf = self.buffers.get(partition)
        if buf is None:  # revoked while the message was being prepared
            raise Aborted()
        async with buf.lock:
            if buf.generation != self.generation:
                raise Aborted()
            plan = buf.plan
            while plan and offset > plan[0][1]:  # past the end of a recorded range
                if buf.filling_plan():
                    await self._flush(partition, buf, planned=plan[0])
                plan.popleft()
            if plan and offset >= plan[0][0]:
                if buf.offsets and buf.offsets[0] < plan[0][0]:
                    await self._flush(partition, buf)
                self._append(buf, offset, rows)
                if offset == plan[0][1]:
                    await self._flush(partition, buf, planned=plan.popleft())
                return
            self._append(buf, offset, rows)
            if len(buf.rows) >= self.max_events:
                await self._flush(partition, buf)

    def _append(self, buf: _Buffer, offset: int, rows: list[Row]) -> None:
        if not buf.offsets:
            buf.started = self.clock()
        buf.offsets.append(offset)
        if rows:
            buf.rows.extend(rows)
            self.metrics.buffered_events.inc(len(rows))

    async def flush_due(self, force: bool = False) -> None:
        """Flush batches older than ``max_seconds``, oldest first (all of them with ``force``).

        While ``MAX_PENDING`` writes are pending, a due batch younger than twice the bound is
        not handed on (the consumer would wait for a slot): it keeps filling. A busy
        ClickHouse thus gets fewer, larger inserts (its cost per insert is mostly fixed); an
        idle one gets each batch at its age bound; no batch waits past twice the bound for a
        turn, however busy the other partitions keep ClickHouse.
        """
        now = self.clock()
        for partition, buf in sorted(self.buffers.items(), key=lambda item: item[1].started):
            if not buf.offsets or buf.filling_plan():
                continue
            age = now - buf.started
            if not force and (
                age < self.max_seconds
                or (age < 2 * self.max_seconds and self.writing() >= MAX_PENDING)
            ):
                continue
            async with buf.lock:
                if buf.offsets and not buf.filling_plan() and buf is self.buffers.get(partition):
                    await self._flush(partition, buf)
        if force:
            await self.drain()

    async def drain(self) -> None:
        """Wait until every batch handed to ClickHouse is written and reported."""
        for buf in list(self.buffers.values()):
            if buf.last is not None:
                await _wait(buf.last)  # written after every earlier batch of its partition

    def writing(self) -> int:
        """Batches handed to ClickHouse and not written yet."""
        self._writes = [task for task in self._writes if not task.done()]
        return len(self._writes)

    async def _flush(
        self, partition: int, buf: _Buffer, *, planned: tuple[int, int] | None = None
    ) -> None:
        """Hand the open batch to a background write that starts once the partition's
        previous batch is written: batches of one partition are recorded, inserted and
        reported in offset order. Waits (the consumer with it) while ``MAX_PENDING``
        batches are pending."""
        while self.writing() >= MAX_PENDING:
            # cancellation-safe: a flush cancelled here has taken nothing from the buffer
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
        if self.failure is not None:
            raise self.failure
        if buf.generation != self.generation:
            raise Aborted()  # revoked while waiting: the next owner replays these
        offsets, rows = buf.offsets, buf.rows
        buf.offsets, buf.rows = [], []
        task = asyncio.create_task(
            self._write(partition, buf.generation, offsets, rows, planned, after=buf.last)
        )
        task.add_done_callback(self._settled)
        buf.last = task
        self._writes.append(task)

    def _settled(self, task: asyncio.Task[None]) -> None:
        """See a write's outcome as it ends. Aborted (its partition was revoked) is expected
        and raised to whoever waits on it; anything else is a bug the sink cannot work
        around: logged, and raised by the next ``add`` so that the worker ends."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, Aborted) and self.failure is None:
            log.critical("a batch write failed: %r", error, exc_info=error)
            self.failure = error

    async def _write(
        self,
        partition: int,
        generation: int,
        offsets: list[int],
        rows: list[Row],
        planned: tuple[int, int] | None,
        after: asyncio.Task[None] | None,
    ) -> None:
        """Record (unless re-forming a recorded range), insert, then report one batch, once
        the partition's batch before it (``after``) is written."""
        if after is not None:
            await _wait(after)  # its failure (Aborted) ends this one too
        first, last = planned or (offsets[0], offsets[-1])
        if rows:
            token = dedup_token(self.cluster_id, self.topic, partition, first, last)
            if planned is None:
                await self.call(
                    self.writer.record,
                    self.cluster_id,
                    self.topic,
                    partition,
                    first,
                    last,
                    len(offsets),
                    len(rows),
                    token,
                    generation=generation,
                )
            took = 0.0
            for month_token, month_rows in by_month(rows, token):
                took += await self.call(
                    self.writer.insert, month_rows, month_token, generation=generation
                )
            if took > SLOW_INSERT_S:
                log.warning(
                    "partition %d: inserting batch %d-%d (%d rows) took %.1fs",
                    partition,
                    first,
                    last,
                    len(rows),
                    took,
                )
            self.metrics.insert_seconds.observe(took)
            self.metrics.events_written.inc(len(rows))
            self.metrics.batches.inc()
            self.metrics.buffered_events.dec(len(rows))
        if generation != self.generation:
            raise Aborted()
        self.on_written(partition, offsets[-1] + 1)


async def _wait(task: asyncio.Task[None]) -> None:
    """Await a batch write; its cancellation (by ``reset``) surfaces as :class:`Aborted`.

    Shielded: cancelling the waiter does not cancel the write.
    """
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        raise Aborted() from None
