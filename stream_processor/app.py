"""The worker: a Faust app (entities agent, timers, web pages) and the calls consumer.

Calls, per Kafka message (``consumer.CallsConsumer`` reads them in offset order and alone
commits their offsets): validate (dead-letter the bad parts) -> dedupe (``dedupe``, started
from ClickHouse) -> price and enrich -> buffer in the sink, which inserts and then reports
the offsets it stored. Entities agent: renames update this worker's names (read by
enrichment) and are written to ``source_names``, where the API and the other workers read
them. Faust holds no table: nothing the calls path needs is recovered from a changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from llm_usage.kafka import faust_broker_options
from llm_usage.settings import Settings
from producers.contract import EntityRenamed, describe_validation_error
from stream_processor.cluster import fetch_metadata
from stream_processor.consumer import CallsConsumer
from stream_processor.dedupe import Deduper
from stream_processor.enrich import Enricher
from stream_processor.metrics import Metrics
from stream_processor.names import Names, name_key
from stream_processor.pricing import PriceBook
from stream_processor.pricing.watch import WatchedBook
from stream_processor.sink import Aborted, ClickHouseWriter, Sink
from stream_processor.validate import Rejected, validate_message

log = logging.getLogger(__name__)

# Bytes in, bytes out: the worker decodes (validate.py) and encodes itself.
RAW_SCHEMA: faust.Schema = faust.Schema(
    key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
NAMES_FLUSH_AT = 1000
NAMES_REFRESH_S = 5.0  # how often names written by others are read from source_names
NAMES_LOOKBACK_S = 86400.0  # names older than a day are forgotten (see names.py)
NAMES_OVERLAP_MS = 300_000  # each refresh re-reads the last 5 minutes (late inserts)
# A dead letter must fit in one Kafka message: the Faust producer refuses records over its
# max_request_size (1,000,000 bytes) and brokers over message.max.bytes (about 1 MiB), and a
# refused send crashes the worker. Longer payloads (a 1 MB string in an event) are cut
# here; the headers keep the original size and SHA-256.
DEAD_LETTER_MAX_BYTES = 512 * 1024
PRICE_RELOAD_SECONDS = 2.0  # how often the price book's files are checked for changes


def faust_app(settings: Settings) -> faust.App:
    """A Faust app configured from settings; the web server binds where settings say.

    Its id (and consumer group, of the entities topic) is the processor group with
    ``-app`` appended: the calls topic's group is the calls consumer's alone, and a group's
    members must share one assignment protocol (Faust's and aiokafka's differ).
    """
    session = settings.processor_session_timeout_s
    datadir = settings.home / "processor" / settings.processor_group  # unused by memory://
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{settings.processor_group}-app",
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
        producer_acks=-1,
        web_enabled=settings.processor_web_port > 0,
        web_port=settings.processor_web_port or 6066,
        web_bind=settings.processor_web_host,
        web_host=settings.processor_web_host,
        worker_redirect_stdouts=False,
    )


class Processor:
    """One worker's state and wiring; ``app`` is what ``faust.Worker`` runs."""

    def __init__(self, settings: Settings, cluster_id: str, book: PriceBook | None = None):
        self.settings = settings
        self.cluster_id = cluster_id
        self.metrics = Metrics()
        self.app = app = faust_app(settings)
        self.entities_topic = app.topic(settings.topic_entities, schema=RAW_SCHEMA)
        self.dead_letter_topic = app.topic(settings.topic_dead_letter, schema=RAW_SCHEMA)
        self.deduper = Deduper(settings.processor_dedupe_window_seconds)
        self.names = Names(NAMES_LOOKBACK_S)
        self.prices: WatchedBook | None = None  # None: a fixed book was given (tests)
        if book is None:
            self.prices = WatchedBook(overrides=settings.price_overrides)
            book = self.prices.book
        self.enricher = Enricher(book, self.names)
        self.calls = CallsConsumer(settings, self, self.metrics)
        self.sink = Sink(
            ClickHouseWriter(settings),
            self.metrics,
            cluster_id=cluster_id,
            topic=settings.topic_calls,
            max_events=settings.processor_batch_max_events,
            max_seconds=settings.processor_batch_max_seconds,
            retry_max_s=settings.processor_retry_max_s,
            on_written=self.calls.mark_written,
        )
        self._pending_names: list[tuple[EventT, list[Any]]] = []
        self._names_lock = asyncio.Lock()
        self._names_read_ms = 0  # wall clock of the last names refresh
        self._started = time.monotonic()
        self._progress: tuple[int, ...] = ()
        self._progress_logged = 0.0
        self._wire()

    # --- wiring ----------------------------------------------------------------------------
    def _wire(self) -> None:
        app = self.app
        app.agent(self.entities_topic, name="entities")(self._entities_agent)
        app.task(self._start_calls)
        app.task(self._flush_loop)
        app.timer(interval=30.0, name="dedupe-expiry")(self._expiry_timer)
        app.timer(interval=1.0, name="lag")(self._lag_timer)
        app.timer(interval=PRICE_RELOAD_SECONDS, name="prices")(self._prices_timer)
        app.timer(interval=NAMES_REFRESH_S, name="names")(self._names_timer)

        async def metrics(web: Any, request: Any) -> Any:
            return await self._metrics_page(web, request)

        async def health(web: Any, request: Any) -> Any:
            return await self._health_page(web, request)

        app.page("/metrics")(metrics)
        app.page("/health")(health)

    async def _start_calls(self) -> None:
        """Start the calls consumer once the app (its producer, for dead letters) runs;
        it stops with the app, storing and committing what it buffered."""
        await self._refresh_names()
        await self.app.add_runtime_dependency(self.calls)

    # --- the calls path (driven by CallsConsumer) ----------------------------------------
    async def open_partition(self, partition: int, offset: int) -> None:
        """Before a partition's first record: its dedupe window and recorded batches."""
        sink = self.sink
        if sink.is_open(partition) and self.deduper.is_loaded(partition):
            return
        generation = sink.generation
        written = await sink.call(
            sink.writer.written_ids,
            self.settings.topic_calls,
            partition,
            self.settings.processor_dedupe_window_seconds,
            generation=generation,
        )
        await sink.open_partition(partition, offset, generation)
        loaded = self.deduper.load(partition, written)  # no await since the generation check
        log.info("partition %d: dedupe window starts with %d event ids", partition, loaded)

    async def on_assignment(self) -> None:
        """Partitions are being assigned: the broker may be a new one (a restarted memory-only
        broker, a recreated cluster) whose offsets start again at 0; batches of its topic
        must get tokens of their own, or ClickHouse would drop them as old ones."""
        cluster_id, _ = await fetch_metadata(self.settings)
        if cluster_id != self.cluster_id:
            log.warning(
                "the Kafka cluster id changed from %s to %s: new insert tokens",
                self.cluster_id,
                cluster_id,
            )
            self.cluster_id = self.sink.cluster_id = cluster_id

    async def handle(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        metrics = self.metrics
        metrics.messages_in.inc()
        events, rejected = validate_message(value, self.settings.processor_default_tenant)
        metrics.events_in.inc(len(events) + len(rejected))
        kept, duplicates = self.deduper.admit(partition, offset, events)
        if duplicates:
            metrics.events_deduped.inc(duplicates)
        enricher = self.enricher
        unpriced, unavailable = enricher.unpriced, enricher.tier_unavailable
        rows = enricher.rows(kept, self.settings.topic_calls, partition, offset)
        if enricher.unpriced != unpriced:
            metrics.events_unpriced.inc(enricher.unpriced - unpriced)
        if enricher.tier_unavailable != unavailable:
            metrics.events_tier_unavailable.inc(enricher.tier_unavailable - unavailable)
        for item in rejected:
            await self._dead_letter(self.settings.topic_calls, partition, offset, key, item)
        await self.sink.add(partition, offset, rows)

    async def flush(self) -> None:
        """Store every buffered batch (a rebalance or a stop is coming)."""
        await self.sink.flush_due(force=True)
        await self._flush_names()

    async def forget(self) -> None:
        """Drop every open batch and dedupe index; unstored messages are read again."""
        await self.sink.reset()
        self.deduper.clear()
        log.info("calls partitions released: open batches dropped (replayed if unstored)")

    async def _dead_letter(
        self, topic: str, partition: int, offset: int, key: bytes | None, item: Rejected
    ) -> None:
        headers = [
            ("x-dead-letter-reason", item.reason.encode()[:4000]),
            ("x-source-topic", topic.encode()),
            ("x-source-partition", str(partition).encode()),
            ("x-source-offset", str(offset).encode()),
        ]
        if item.index is not None:
            headers.append(("x-source-index", str(item.index).encode()))
        payload = item.payload
        if len(payload) > DEAD_LETTER_MAX_BYTES:
            headers.append(("x-dead-letter-truncated-from", str(len(payload)).encode()))
            headers.append(("x-original-sha256", hashlib.sha256(payload).hexdigest().encode()))
            payload = payload[:DEAD_LETTER_MAX_BYTES]
        if key is not None and len(key) > 1024:
            key = key[:1024]
        sent = await self.dead_letter_topic.send(key=key, value=payload, headers=headers)
        await sent  # delivered before the offset that carried it can be committed
        self.metrics.events_dead_lettered.inc()
        index = f" #{item.index}" if item.index is not None else ""
        log.info(
            "dead-lettered %s[%d]@%d%s: %s", topic, partition, offset, index, item.reason[:300]
        )

    # --- names -----------------------------------------------------------------------------
    async def _entities_agent(self, stream: StreamT) -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            message = event.message
            try:
                rename = EntityRenamed.model_validate_json(message.value or b"")
            except ValidationError as exc:
                reason = describe_validation_error(exc)
                await self._dead_letter(
                    message.topic,
                    message.partition,
                    message.offset,
                    message.key,
                    Rejected(reason, message.value or b""),
                )
                event.ack()
                continue
            source = rename.source.value
            renamed_ms = int(rename.renamed_at.timestamp() * 1000)
            self.names.apply(
                name_key(rename.tenant_id, source, rename.source_id), rename.name, renamed_ms
            )
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

    async def _refresh_names(self) -> None:
        """Read the names written since the last refresh (by any worker, or by calls)."""
        now_ms = int(time.time() * 1000)
        if self._names_read_ms:
            since = self._names_read_ms - NAMES_OVERLAP_MS
        else:
            since = now_ms - int(NAMES_LOOKBACK_S * 1000)
        rows = await self.sink.call(self.sink.writer.latest_names, since)
        self.names.apply_all(rows)
        self._names_read_ms = now_ms

    async def _names_timer(self) -> None:
        await self._refresh_names()
        self.names.forget_old()

    # --- timers ----------------------------------------------------------------------------
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
        """Forget event ids older than the dedupe window."""
        expired = self.deduper.expire()
        if expired:
            log.info("dedupe: forgot %d event ids older than the window", expired)
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
        await self.calls.check(clickhouse_failing=bool(self.sink.last_error))

    def _log_progress(self) -> None:
        m = self.metrics
        progress = tuple(
            int(m.total(name))
            for name in ("messages_in", "events_written", "events_deduped", "events_dead_lettered")
        )
        if progress != self._progress:
            self._progress = progress
            buffers = self.sink.buffers.values()
            log.info(
                "progress: %d messages read, %d rows written, %d duplicates, "
                "%d dead letters, %d rows buffered, %d batches being written, "
                "next offsets %s, committed %s",
                *progress,
                sum(len(b.rows) for b in buffers),
                self.sink.writing(),
                dict(sorted(self.calls.next_offsets.items())),
                dict(sorted(self.calls.committed.items())),
            )

    # --- web -------------------------------------------------------------------------------
    async def _metrics_page(self, web: Any, request: Any) -> Any:
        self.metrics.dedupe_ids.set(self.deduper.size())
        content_type = CONTENT_TYPE_LATEST.split(";  charset")[0].split("; charset")[0]
        return web.bytes(self.metrics.render(), content_type=content_type)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """OK unless ClickHouse has been failing for longer than the retry cap, offsets are
        missing, or a partition with lag delivers nothing."""
        failing_for = time.monotonic() - self.sink.last_success if self.sink.last_error else 0.0
        problems = self.calls.problems()
        ok = failing_for <= max(60.0, 2 * self.settings.processor_retry_max_s) and not problems
        return ok, {
            "status": "ok" if ok else "degraded",
            "problems": problems,
            "clickhouse_error": self.sink.last_error or None,
            "clickhouse_failing_for_s": round(failing_for, 1),
            "cluster_id": self.cluster_id,
            "assigned": self.calls.assigned(),
            "next_offsets": {str(p): o for p, o in sorted(self.calls.next_offsets.items())},
            "committed": {str(p): o for p, o in sorted(self.calls.committed.items())},
            "lag": {str(p): n for p, n in sorted(self.calls.lag.items())},
            "partitions": sorted(self.sink.buffers),
            "buffered_events": sum(len(b.rows) for b in self.sink.buffers.values()),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "time": datetime.now(UTC).isoformat(),
        }

    async def _health_page(self, web: Any, request: Any) -> Any:
        ok, body = self.health()
        return web.json(body, status=200 if ok else 503)
