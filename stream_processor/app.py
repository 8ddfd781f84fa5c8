"""The Faust application: agents, tables, timers and web pages of one worker.

Calls agent, per Kafka message: validate (dead-letter the bad parts) -> dedupe (table keyed
by message, see ``dedupe``) -> price and enrich -> buffer in the sink, which inserts and
only then acks. Entities agent: renames update a global names table (read by enrichment)
and are written to ``source_names`` so the API sees the latest names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from llm_usage.kafka import faust_broker_options
from llm_usage.settings import Settings
from producers.contract import EntityRenamed, describe_validation_error
from stream_processor.dedupe import Deduper, table_key
from stream_processor.enrich import Enricher, decode_name, encode_name, name_key
from stream_processor.metrics import Metrics
from stream_processor.pricing import PriceBook
from stream_processor.pricing.watch import WatchedBook
from stream_processor.sink import Aborted, ClickHouseWriter, Sink
from stream_processor.validate import Rejected, validate_message
from stream_processor.watchdog import HoleGuard, StallDetector, Verdict

log = logging.getLogger(__name__)

# Bytes in, bytes out: the worker decodes (validate.py) and encodes itself.
RAW_SCHEMA: faust.Schema = faust.Schema(
    key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
NAMES_FLUSH_AT = 1000
# A dead letter must fit in one Kafka message: the Faust producer refuses records over its
# max_request_size (1,000,000 bytes) and brokers over message.max.bytes (about 1 MiB), and a
# refused send crashes the calls agent. Longer payloads (a 1 MB string in an event) are cut
# here; the headers keep the original size and SHA-256.
DEAD_LETTER_MAX_BYTES = 512 * 1024
# Per-partition fetch size of the consumer. aiokafka *skips* a record larger than this when
# the broker returns it cut at the fetch size (Tansu does; Kafka >= 0.10.1 returns it whole),
# which would drop its good events silently. Faust's default (1 MiB) is below Kafka's default
# message.max.bytes (1 MiB + 12 B); producers/ never writes more than 900 kB per message.
CONSUMER_MAX_FETCH_BYTES = 4 * 1024 * 1024
END_OFFSETS_TIMEOUT_S = 2.0  # the watchdog's ListOffsets request, once a second
PRICE_RELOAD_SECONDS = 2.0  # how often the price book's files are checked for changes


def faust_app(settings: Settings) -> faust.App:
    """A Faust app configured from settings; the web server binds where settings say."""
    session = settings.processor_session_timeout_s
    datadir = settings.home / "processor" / settings.processor_group  # unused by memory://
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.processor_group,
        **faust_broker_options(settings),  # brokers, and SASL/TLS credentials when set
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=getattr(settings, "topic_replication_factor", 1),
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.5, min(3.0, session / 4)),
        broker_rebalance_timeout=settings.processor_rebalance_timeout_s,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=CONSUMER_MAX_FETCH_BYTES,
        # The check compares offsets persisted in a RocksDB file with the changelog; with
        # memory:// there is no file, only what this process read itself. On Tansu a producer
        # killed mid-request can leave a record readable past the reported end offset, and
        # the check then crashed the *surviving* worker at the next rebalance.
        recovery_consistency_check=False,
        stream_wait_empty=False,  # the sink flushes on revoke itself, see Processor
        stream_buffer_maxsize=1024,  # messages, each up to producer_batch_events calls
        producer_acks=-1,
        web_enabled=settings.processor_web_port > 0,
        web_port=settings.processor_web_port or 6066,
        web_bind=settings.processor_web_host,
        web_host=settings.processor_web_host,
        worker_redirect_stdouts=False,
    )


def patch_seek_to_committed(
    consumer: Any,
    topics: set[str],
    expected: Callable[[TP], int | None],
    started: Callable[[TP, int], None],
) -> None:
    """Make Faust's post-recovery seek neither skip nor rewind our partitions.

    Faust resumes fetching before it seeks to the committed offsets. Messages fetched in
    between are either dropped by Faust or already handed to the agent. aiokafka's seek
    leaves a partition without a committed offset where that fetch left it (the dropped
    messages would be skipped for good), and rewinds the others to the committed offset
    even when the agent already has the messages after it (duplicates; and aiokafka was
    seen to stop delivering such a partition). So: a partition the agent already reads
    continues at its next offset (``expected``); one never committed starts at its earliest.
    ``started`` learns where each partition starts, so the watchdog can tell that one which
    never delivered a message is stalled (the sink only knows partitions it has read).
    """
    original = consumer.seek_to_committed

    async def seek(tp: TP, offset: int) -> None:
        # On the consumer's own thread (seek_wait), like Faust's own seek_to_committed:
        # consumer._seek() calls aiokafka from this loop while that thread drains fetched
        # records, and aiokafka's fetcher then died with a KeyError (a CI run: the worker
        # stopped right after its first assignment, under two parallel test processes).
        try:
            await consumer.seek_wait({tp: offset})
        except Exception as exc:  # the watchdog re-seeks a partition that does not move
            log.warning("seek of %s[%d] to %d failed: %r", tp.topic, tp.partition, offset, exc)

    async def seek_to_committed() -> Any:
        committed = await original()
        fresh = []
        for tp, offset in committed.items():
            if tp.topic not in topics:
                continue
            resume_at = expected(tp)
            if resume_at is not None:
                await seek(tp, resume_at)
                started(tp, resume_at)
            elif offset is None or offset <= 0:
                fresh.append(tp)
            else:
                started(tp, offset)
        if fresh:
            earliest = await consumer.earliest_offsets(*fresh)
            for tp in fresh:
                await seek(tp, earliest.get(tp) or 0)
                started(tp, earliest.get(tp) or 0)
            log.info("no committed offset: %s start at their earliest offsets",
                     sorted(f"{tp.topic}[{tp.partition}]" for tp in fresh))  # fmt: skip
        return committed

    consumer.seek_to_committed = seek_to_committed


def patch_gap_tracking(consumer: Any, topic: str) -> Callable[[TP, int, int], Awaitable[None]]:
    """Keep Faust from counting a hole in ``topic``'s delivery as processed.

    Faust (0.15.3) treats offsets it did not see between two delivered messages as a gap
    in the log and commits over them once the messages around it are acked. For the calls
    topic the processor judges such holes itself (``Processor._past_hole``) and reports
    only real gaps, through the original method, which is returned.
    """
    original = consumer._add_gap

    async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic != topic:
            await original(tp, offset_from, offset_to)

    consumer._add_gap = add_gap
    return cast(Callable[[TP, int, int], Awaitable[None]], original)


def fetch_state(consumer: Any, tp: TP) -> str:
    """What Faust and aiokafka think of a partition, for the log of a stall."""
    facts = []
    for name in ("_active_partitions", "_paused_partitions", "_buffered_partitions"):
        tps = getattr(consumer, name, None)
        if tps is not None:
            facts.append(f"{name.strip('_')}={tp in tps}")
    with contextlib.suppress(Exception):
        state = consumer._thread._ensure_consumer()._subscription.subscription.assignment
        tp_state = state.state_value(tp)
        facts.append(f"aiokafka paused={tp_state.paused} position={tp_state._position}")
    return ", ".join(facts) or "no consumer state"


class Processor:
    """One worker's state and wiring; ``app`` is what ``faust.Worker`` runs."""

    def __init__(self, settings: Settings, cluster_id: str, book: PriceBook | None = None):
        self.settings = settings
        self.cluster_id = cluster_id
        self.metrics = Metrics()
        self.app = app = faust_app(settings)
        self.calls_topic = app.topic(
            settings.topic_calls, partitions=settings.topic_partitions, schema=RAW_SCHEMA
        )
        self.entities_topic = app.topic(settings.topic_entities, schema=RAW_SCHEMA)
        self.dead_letter_topic = app.topic(settings.topic_dead_letter, schema=RAW_SCHEMA)
        self.dedupe = app.Table(
            "dedupe", partitions=settings.topic_partitions,
            help="event ids first accepted per calls-topic message", schema=RAW_SCHEMA,
            key_type=bytes, value_type=bytes,
        )  # fmt: skip
        self.names = app.GlobalTable(
            "names", key_type=bytes, value_type=bytes, schema=RAW_SCHEMA, use_partitioner=True,
            help="latest name per tenant/source/source_id: JSON [name, renamed_at ms]",
        )  # fmt: skip
        self.deduper = Deduper(settings.processor_dedupe_window_seconds)
        self.prices: WatchedBook | None = None  # None: a fixed book was given (tests)
        if book is None:
            self.prices = WatchedBook(overrides=settings.price_overrides)
            book = self.prices.book
        self.enricher = Enricher(book, self.names)
        self.sink = Sink(
            ClickHouseWriter(settings), self.metrics, cluster_id=cluster_id,
            topic=settings.topic_calls, max_events=settings.processor_batch_max_events,
            max_seconds=settings.processor_batch_max_seconds,
            retry_max_s=settings.processor_retry_max_s,
        )  # fmt: skip
        self._pending_names: list[tuple[EventT, list[Any]]] = []
        self._names_lock = asyncio.Lock()
        self._started = time.monotonic()
        self._progress: tuple[int, ...] = ()
        self._seek_patched = False
        self.stalls = StallDetector(ticks=2)
        self.holes = HoleGuard()
        self._faust_add_gap: Callable[[TP, int, int], Awaitable[None]] | None = None
        self._starts: dict[int, int] = {}  # calls partition -> offset it started at
        self._busy = False  # the calls agent is inside handle_call
        self._handled = 0  # messages the calls agent has taken (watchdog: is it moving?)
        self._handled_at_tick = 0
        self._progress_logged = 0.0
        self._wire()

    # --- wiring ----------------------------------------------------------------------------
    def _wire(self) -> None:
        app = self.app
        app.agent(self.calls_topic, name="calls")(self._calls_agent)
        app.agent(self.entities_topic, name="entities")(self._entities_agent)
        app.task(self._flush_loop)
        app.timer(interval=30.0, name="dedupe-expiry")(self._expiry_timer)
        app.timer(interval=1.0, name="lag")(self._lag_timer)
        app.timer(interval=PRICE_RELOAD_SECONDS, name="prices")(self._prices_timer)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]

        async def metrics(web: Any, request: Any) -> Any:
            return await self._metrics_page(web, request)

        async def health(web: Any, request: Any) -> Any:
            return await self._health_page(web, request)

        app.page("/metrics")(metrics)
        app.page("/health")(health)

    async def _calls_agent(self, stream: StreamT) -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            self._busy = True
            self._handled += 1
            try:
                await self.handle_call(event)
            except Aborted:
                continue  # partitions moved while waiting; the new owner replays it
            finally:
                self._busy = False

    async def handle_call(self, event: EventT) -> None:
        message = event.message
        partition, offset = message.partition, message.offset
        expected = self.sink.next_offsets.get(partition, self._starts.get(partition))
        if expected is not None and offset < expected:
            # Faust re-delivered a message this assignment already took (a rewinding
            # seek after recovery): the first delivery is buffered or written already.
            return
        if (
            expected is not None
            and offset > expected
            and not await self._past_hole(partition, expected, offset)
        ):
            return  # not acked: it comes again once the hole is re-fetched
        self.holes.closed(partition)
        if not self.sink.is_open(partition):  # first message since the partition was assigned
            generation = self.sink.generation
            await self.sink.open_partition(partition, offset)
            if generation != self.sink.generation:
                raise Aborted()
            self.deduper.load(partition, self._table_items())
        metrics = self.metrics
        metrics.messages_in.inc()
        events, rejected = validate_message(message.value, self.settings.processor_default_tenant)
        metrics.events_in.inc(len(events) + len(rejected))
        # no await between here and sink.add's lock: a rebalance cannot interleave
        kept, duplicates, remembered = self.deduper.admit(partition, offset, events)
        if remembered is not None:
            self.dedupe[table_key(partition, offset)] = remembered
        if duplicates:
            metrics.events_deduped.inc(duplicates)
        enricher = self.enricher
        unpriced, unavailable = enricher.unpriced, enricher.tier_unavailable
        rows = enricher.rows(kept, message.topic, partition, offset)
        if enricher.unpriced != unpriced:
            metrics.events_unpriced.inc(enricher.unpriced - unpriced)
        if enricher.tier_unavailable != unavailable:
            metrics.events_tier_unavailable.inc(enricher.tier_unavailable - unavailable)
        for item in rejected:
            await self._dead_letter(event, item)
        await self.sink.add(partition, offset, event, rows)

    async def _past_hole(self, partition: int, expected: int, offset: int) -> bool:
        """Whether to take message ``offset`` although ``expected`` has not arrived yet.

        No until the missing offsets were re-fetched (``watchdog.HoleGuard``); yes once
        they are known to be missing from the log itself, and then Faust may commit over
        them (it is kept from doing so on its own, see ``patch_gap_tracking``).
        """
        tp = TP(self.settings.topic_calls, partition)
        verdict = self.holes.check(partition, expected, offset)
        if verdict is Verdict.SEEK:
            log.warning("partition %d delivered offset %d while %d is next: re-fetching "
                        "from %d", partition, offset, expected, expected)  # fmt: skip
            self.metrics.hole_seeks.inc()
            await self._seek(tp, expected)
            return False
        if verdict is Verdict.SKIP:
            return False
        log.warning("partition %d: offsets %d-%d are missing from the log itself (still "
                    "absent after re-fetching); going on at %d", partition, expected,
                    offset - 1, offset)  # fmt: skip
        self.metrics.gaps_accepted.inc(offset - expected)
        if self._faust_add_gap is not None:
            await self._faust_add_gap(tp, expected, offset - 1)
        return True

    def _table_items(self) -> Iterable[tuple[bytes, bytes]]:
        return list(self.dedupe.data.items())

    async def _dead_letter(self, event: EventT, item: Rejected) -> None:
        message = event.message
        headers = [
            ("x-dead-letter-reason", item.reason.encode()[:4000]),
            ("x-source-topic", message.topic.encode()),
            ("x-source-partition", str(message.partition).encode()),
            ("x-source-offset", str(message.offset).encode()),
        ]
        if item.index is not None:
            headers.append(("x-source-index", str(item.index).encode()))
        payload, key = item.payload, message.key
        if len(payload) > DEAD_LETTER_MAX_BYTES:
            headers.append(("x-dead-letter-truncated-from", str(len(payload)).encode()))
            headers.append(("x-original-sha256", hashlib.sha256(payload).hexdigest().encode()))
            payload = payload[:DEAD_LETTER_MAX_BYTES]
        if key is not None and len(key) > 1024:
            key = key[:1024]
        await self.dead_letter_topic.send(key=key, value=payload, headers=headers)
        self.metrics.events_dead_lettered.inc()
        log.info("dead-lettered %s[%d]@%d%s: %s", message.topic, message.partition,
                 message.offset, f" #{item.index}" if item.index is not None else "",
                 item.reason[:300])  # fmt: skip

    async def _entities_agent(self, stream: StreamT) -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            try:
                rename = EntityRenamed.model_validate_json(event.message.value or b"")
            except ValidationError as exc:
                reason = describe_validation_error(exc)
                await self._dead_letter(event, Rejected(reason, event.message.value or b""))
                event.ack()
                continue
            source = rename.source.value
            key = name_key(rename.tenant_id, source, rename.source_id)
            renamed_ms = int(rename.renamed_at.timestamp() * 1000)
            current = decode_name(self.names.get(key))
            if current is None or current[1] <= renamed_ms:
                self.names[key] = encode_name(rename.name, renamed_ms)
            self.metrics.renames.inc()
            row = [rename.tenant_id, source, rename.source_id, rename.name, rename.renamed_at]
            self._pending_names.append((event, row))
            if len(self._pending_names) >= NAMES_FLUSH_AT:
                await self._flush_names()

    async def _flush_names(self) -> None:
        async with self._names_lock:
            pending, self._pending_names = self._pending_names, []
            if not pending:
                return
            await self.sink.call(self.sink.writer.insert_names, [row for _, row in pending])
            for event, _ in pending:
                event.ack()

    # --- timers and rebalancing ----------------------------------------------------------------
    async def _flush_loop(self) -> None:
        """Flush batches that reached their age bound (a loop, not a timer: a slow insert
        just delays the next round instead of overlapping it)."""
        tick = max(0.05, min(0.5, self.settings.processor_batch_max_seconds / 4))
        while True:
            await asyncio.sleep(tick)
            with contextlib.suppress(Aborted):
                await self.sink.flush_due()
            if self._pending_names:
                await self._flush_names()

    async def _expiry_timer(self) -> None:
        """Delete dedupe entries older than the window (tombstones go to the changelog)."""
        expired = 0
        store = self.dedupe.data
        for partition, offset in self.deduper.expire():
            key = table_key(partition, offset)
            if store.pop(key, None) is not None:
                self.dedupe.send_changelog(partition, key, None, value_serializer="raw")
            getattr(store, "_key_partition", {}).pop(key, None)
            expired += 1
        if expired:
            log.info("dedupe: forgot %d messages older than the window", expired)
        self.metrics.dedupe_ids.set(self.deduper.size())

    async def _prices_timer(self) -> None:
        """Price with a changed book or overrides file from the next message on."""
        if self.prices is not None and self.prices.refresh():
            self.enricher.book = self.prices.book
            self.metrics.price_book_reloads.inc()

    async def _lag_timer(self) -> None:
        if time.monotonic() - self._progress_logged >= 10:
            self._progress_logged = time.monotonic()
            self._log_progress()
        end_offsets = await self._end_offsets(self._positions())
        await self._unstall(end_offsets)
        for partition, next_offset in list(self.sink.next_offsets.items()):
            if partition in end_offsets:
                lag = max(0, end_offsets[partition] - next_offset)
                self.metrics.consumer_lag.labels(str(partition)).set(lag)

    def _log_progress(self) -> None:
        m = self.metrics
        progress = (
            int(m.messages_in._value.get()), int(m.events_written._value.get()),
            int(m.events_deduped._value.get()), int(m.events_dead_lettered._value.get()),
        )  # fmt: skip
        if progress != self._progress:
            self._progress = progress
            buffers = self.sink.buffers.values()
            writing = sum(1 for b in buffers if b.inflight is not None and not b.inflight.done())
            log.info("progress: %d messages read, %d rows written, %d duplicates, "
                     "%d dead letters, %d rows buffered, %d batches being written, "
                     "next offsets %s", *progress, sum(len(b.rows) for b in buffers), writing,
                     dict(sorted(self.sink.next_offsets.items())))  # fmt: skip

    def _positions(self) -> dict[int, int]:
        """The offset each assigned calls partition expects next.

        A partition that has delivered nothing since it was assigned counts from where it
        started: a fresh partition that aiokafka never fetched is a stall to catch too.
        """
        return {**self._starts, **self.sink.next_offsets}

    async def _end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The broker's log end offset of these calls partitions ({} if it won't say)."""
        tps = [TP(self.settings.topic_calls, p) for p in partitions]
        if not tps:
            return {}
        try:
            async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):
                ends = await self.app.consumer.highwaters(*tps)
        except Exception:  # broker away or rebalancing: no verdict this tick
            return {}
        return {tp.partition: int(end) for tp, end in ends.items() if end is not None}

    async def _unstall(self, end_offsets: dict[int, int]) -> None:
        """Re-seek partitions that stopped delivering although messages wait (``watchdog``).

        Seeking to the next offset the sink expects continues the stream exactly where it
        stands. No verdict while ClickHouse fails, while the agent has sat in one message
        since the last tick (a slow insert holds every partition back by design), or while
        Faust rebalances or recovers its tables (it holds the partitions back itself then).
        """
        stuck = self._busy and self._handled == self._handled_at_tick
        self._handled_at_tick = self._handled
        flowing = getattr(self.app.consumer, "flow_active", True)
        moving = self.app.rebalancing or self.app.in_recovery or not flowing
        if stuck or moving or self.sink.last_error:
            self.stalls.reset()
            return
        stalled = self.stalls.observe(self._positions(), end_offsets)
        consumer = self.app.consumer
        for partition, (next_offset, end) in sorted(stalled.items()):
            tp = TP(self.settings.topic_calls, partition)
            log.warning(
                "partition %d delivers nothing at offset %d (log end %d): seeking there (%s)",
                partition, next_offset, end, fetch_state(consumer, tp),
            )  # fmt: skip
            self.metrics.stall_seeks.inc()
            await self._seek(tp, next_offset)
            # Faust leaves a partition out of its fetches while it counts it paused or
            # not active; put it back (a no-op for one that is fetched already).
            with contextlib.suppress(Exception):
                consumer.resume_partitions([tp])

    async def _seek(self, tp: TP, offset: int) -> None:
        """Make the consumer fetch ``tp`` from ``offset`` next (best effort).

        seek_wait runs on the consumer's own thread; consumer.seek() would call aiokafka
        from this loop while that thread drains records (a KeyError there crashed Faust's
        Fetcher, after a ClickHouse outage, and the worker stalled).
        """
        with contextlib.suppress(Exception):
            await self.app.consumer.seek_wait({tp: offset})

    async def _on_assigned(self, app: faust.App, assigned: set[TP], **_: Any) -> None:
        if not self._seek_patched:
            self._seek_patched = True
            self._faust_add_gap = patch_gap_tracking(app.consumer, self.settings.topic_calls)
            patch_seek_to_committed(
                app.consumer,
                {self.settings.topic_calls, self.settings.topic_entities},
                self._expected_offset,
                self._started_at,
            )

    def _expected_offset(self, tp: TP) -> int | None:
        """Next offset of a calls partition the agent already reads in this assignment."""
        if tp.topic != self.settings.topic_calls:
            return None
        return self.sink.next_offsets.get(tp.partition)

    def _started_at(self, tp: TP, offset: int) -> None:
        if tp.topic == self.settings.topic_calls:
            self._starts[tp.partition] = offset

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Flush and commit what we can, then forget every open batch and index.

        Faust re-reads uncommitted messages after the rebalance, so anything not flushed
        here is replayed, and recorded ranges are re-formed (see ``sink``).
        """
        deadline = max(1.0, self.settings.processor_rebalance_timeout_s / 3)
        try:
            async with asyncio.timeout(deadline):
                await self.sink.flush_due(force=True)
                await self._flush_names()
                await app.commit(topics=None)  # type: ignore[arg-type]
        except (TimeoutError, Aborted):
            log.warning("rebalance: could not flush within %.1fs; batches will be replayed",
                        deadline)  # fmt: skip
        except Exception as exc:  # a failed commit only means a replay
            log.warning("rebalance: commit failed (%s); batches will be replayed", exc)
        self._starts.clear()
        self.holes.reset()
        log.info("rebalance: partitions revoked; open batches dropped (replayed if unflushed)")
        await self.sink.reset()
        for partition in list(self.deduper.partitions()):
            self.deduper.drop(partition)  # reloaded from the table when re-opened
        self._pending_names = []

    # --- web -------------------------------------------------------------------------------
    async def _metrics_page(self, web: Any, request: Any) -> Any:
        self.metrics.dedupe_ids.set(self.deduper.size())
        content_type = CONTENT_TYPE_LATEST.split(";  charset")[0].split("; charset")[0]
        return web.bytes(self.metrics.render(), content_type=content_type)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """OK unless ClickHouse has been failing for longer than the retry cap."""
        failing_for = time.monotonic() - self.sink.last_success if self.sink.last_error else 0.0
        ok = failing_for <= max(60.0, 2 * self.settings.processor_retry_max_s)
        return ok, {
            "status": "ok" if ok else "degraded",
            "clickhouse_error": self.sink.last_error or None,
            "clickhouse_failing_for_s": round(failing_for, 1),
            "cluster_id": self.cluster_id,
            "assigned": self.assigned(),
            "partitions": sorted(self.sink.buffers),
            "buffered_events": sum(len(b.rows) for b in self.sink.buffers.values()),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "time": datetime.now(UTC).isoformat(),
        }

    def assigned(self) -> list[int]:
        """Calls-topic partitions this worker owns right now."""
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # consumer not started yet
            return []
        return sorted(tp.partition for tp in assignment if tp.topic == self.settings.topic_calls)

    async def _health_page(self, web: Any, request: Any) -> Any:
        ok, body = self.health()
        return web.json(body, status=200 if ok else 503)
