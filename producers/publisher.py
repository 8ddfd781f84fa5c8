"""Publish usage events to Kafka without ever holding up the service that made the call.

``publish()`` only serialises the event and puts it in a bounded in-memory buffer; a
background task batches call events per partition (one JSON array per Kafka message, see
``batching.py``) and sends them with ``acks=all``, compression and an idempotent producer
where the broker supports one. Whatever Kafka does not acknowledge (broker down, send timed
out, buffer overflow, shutdown while offline) goes to the on-disk spool and is replayed
once Kafka answers again, in this process or the next one. Replays and retries can
duplicate an event; the stream processor drops duplicates by ``event_id``.

Use it as ``async with UsagePublisher(settings) as pub: await pub.publish(event)``, or
:class:`SyncUsagePublisher` from threaded code.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future as ThreadFuture
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    UnknownError,
    UnsupportedVersionError,
)

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings
from producers.batching import Batch, batch_calls, partition_for
from producers.contract import EntityRenamed, UsageEvent
from producers.spool import KIND_CALL, KIND_RENAME, Record, Spool, read_records
from producers.topics import ensure_topics

log = logging.getLogger(__name__)

Item = tuple[int, bytes, bytes]  # (kind, key, value) exactly as spooled
T = TypeVar("T")
_MAX_BACKOFF_S = 30.0
# What a broker answers when it cannot do InitProducerId (Tansu's memory engine: UnknownError).
_IDEMPOTENCE_REFUSED = (UnknownError, UnsupportedVersionError, ClusterAuthorizationFailedError)
# While "auto" probes for idempotence, aiokafka's sender logs the expected refusal as an
# ERROR. The flag is a list so the sender task (which copies the context when start()
# creates it) sees it cleared once the probe is over, and later errors are logged again.
_probing: ContextVar[list[bool] | None] = ContextVar("llm_usage_idempotence_probe", default=None)


class _ProbeRefusalFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        probe = _probing.get()
        return not (probe and probe[0] and "InitProducerId" in record.getMessage())


logging.getLogger("aiokafka.producer.sender").addFilter(_ProbeRefusalFilter())


@dataclass
class PublisherStats:
    """Counters, in events (not Kafka messages), since ``start()``."""

    published: int = 0  # accepted by publish()/publish_rename()
    acked: int = 0  # acknowledged by Kafka, replays included
    messages: int = 0  # Kafka messages acknowledged
    spooled: int = 0  # written to the spool
    replayed: int = 0  # acknowledged from the spool
    dropped: int = 0  # lost: the spool was full (logged as errors)
    online: bool = False
    idempotent: bool = False
    spool_bytes: int = 0


class _Marker:
    """A flush/stop request travelling through the buffer behind earlier events."""

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class UsagePublisher:
    """Async Kafka publisher for call events and rename events; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = PublisherStats()
        self.spool = Spool(
            settings.home / "spool" / settings.producer_spool_name,
            max_bytes=settings.producer_spool_max_bytes,
            fsync=settings.producer_spool_fsync,
        )
        self._queue: asyncio.Queue[Item | _Marker] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._partitions = settings.topic_partitions
        self._idempotence_refused = settings.producer_idempotence == "off"
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closing_producers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._no_wait_until = 0.0  # monotonic time until which a full buffer spools at once

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool and connect; an unreachable Kafka is not an error (we spool)."""
        if self._started:
            return
        kafka_client_options(self.settings)  # a configuration error fails here, loudly
        self.spool.open()
        self._queue = asyncio.Queue(maxsize=self.settings.producer_buffer_events)
        self._wake = asyncio.Event()
        try:
            await self._connect()
        except _IDEMPOTENCE_REFUSED:
            if self.settings.producer_idempotence == "on":
                self.spool.close()
                raise  # a configuration error, not an outage: fail loudly
            log.warning("Kafka unreachable at start; spooling until it answers", exc_info=True)
        except (KafkaError, OSError) as exc:
            log.warning("Kafka unreachable at start (%s); spooling until it answers", exc)
        except Exception:
            log.exception("could not connect to Kafka at start; spooling until it answers")
        self._started = True
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="usage-publisher-send"),
            asyncio.create_task(self._maintain_loop(), name="usage-publisher-maintain"),
        ]

    async def stop(self) -> None:
        """Flush (to Kafka, or to the spool when offline), then close everything."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        assert self._queue is not None
        marker = _Marker(stop=True)
        await self._queue.put(marker)
        send_task, maintain_task = self._tasks
        try:
            await self._wait_marker(marker)
            await send_task
        finally:
            maintain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintain_task
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
            if self._closing_producers:
                await asyncio.gather(*self._closing_producers, return_exceptions=True)
            self.spool.close()
        self._started = False
        self.stats.online = False
        self.stats.spool_bytes = self.spool.size

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- publishing --------------------------------------------------------------------
    async def publish(self, event: UsageEvent) -> None:
        """Queue one call event; waits at most ``producer_enqueue_timeout_ms`` for room."""
        await self._enqueue((KIND_CALL, event.partition_key, event.to_json()))

    async def publish_rename(self, event: EntityRenamed) -> None:
        """Queue a rename for the entities topic (same buffering and spooling as calls)."""
        await self._enqueue((KIND_RENAME, event.partition_key, event.to_json()))

    async def flush(self) -> None:
        """Return once every event published so far is acked by Kafka or in the spool."""
        if not self._started:
            return
        assert self._queue is not None
        marker = _Marker()
        await self._queue.put(marker)
        await self._wait_marker(marker)

    async def _wait_marker(self, marker: _Marker) -> None:
        """Wait for the send loop to reach ``marker``; re-raise if the loop crashed instead."""
        send_task = self._tasks[0]
        await asyncio.wait([marker.done, send_task], return_when=asyncio.FIRST_COMPLETED)
        if not marker.done.done():
            send_task.result()  # raises what killed the loop
            raise RuntimeError("the publisher's send loop stopped")

    async def wait_replayed(self, timeout: float = 30.0) -> bool:
        """Wait until the spool is empty (replayed); False if it still holds data at timeout."""
        deadline = time.monotonic() + timeout
        while self.spool:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.05)
        return True

    async def _enqueue(self, item: Item) -> None:
        queue = self._check_open()
        self.stats.published += 1
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        if await self._wait_for_room(queue, item):
            return
        self._spool([item])  # the buffer stays bounded; the event is not lost

    async def _wait_for_room(self, queue: asyncio.Queue[Item | _Marker], item: Item) -> bool:
        """Wait up to ``producer_enqueue_timeout_ms`` for buffer space.

        After one such wait has timed out, Kafka is clearly not keeping up (a hung broker
        blocks sends for up to the request timeout), so for the next second events go to
        the spool at once instead of each paying the wait: publish() stays fast.
        """
        timeout = self.settings.producer_enqueue_timeout_ms / 1000
        if timeout <= 0 or time.monotonic() < self._no_wait_until:
            return False
        try:
            await asyncio.wait_for(queue.put(item), timeout)
            return True
        except TimeoutError:
            self._no_wait_until = time.monotonic() + 1.0
            return False

    async def drain(self, inbox: deque[Item]) -> None:
        """Move a thread-safe inbox into the buffer (the :class:`SyncUsagePublisher` path).

        Same rule as ``publish()``: wait up to ``producer_enqueue_timeout_ms`` for room; if
        the buffer is still full, Kafka is not keeping up, so the whole backlog is spooled at
        once rather than waiting that long for every event.
        """
        queue = self._check_open()
        while inbox:
            item = inbox.popleft()
            self.stats.published += 1
            try:
                queue.put_nowait(item)
                continue
            except asyncio.QueueFull:
                pass
            if await self._wait_for_room(queue, item):
                continue
            backlog = [item]
            while inbox:
                backlog.append(inbox.popleft())
            self.stats.published += len(backlog) - 1
            self._spool(backlog)

    def _check_open(self) -> asyncio.Queue[Item | _Marker]:
        if not self._started or self._stopping or self._queue is None:
            raise RuntimeError("UsagePublisher is not started (or already stopped)")
        return self._queue

    # --- the send loop -----------------------------------------------------------------
    async def _send_loop(self) -> None:
        """Drain the buffer into per-partition batches; send each when full or lingered."""
        assert self._queue is not None
        queue = self._queue
        s = self.settings
        linger = s.producer_linger_ms / 1000
        batches: dict[int, Batch] = {}
        while True:
            if batches:
                remaining = min(b.started for b in batches.values()) + linger - time.monotonic()
                if remaining <= 0:  # also under steady load: a quiet partition must not wait
                    await self._send_batches(batches)
                    continue
            if batches and queue.empty():
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    await self._send_batches(batches)
                    continue
            else:
                item = await queue.get()
            if isinstance(item, _Marker):
                await self._send_batches(batches)
                await self._drain_inflight()
                self.stats.spool_bytes = self.spool.size
                item.done.set_result(None)
                if item.stop:
                    return
                continue
            kind, key, value = item
            if kind == KIND_RENAME:
                await self._send_message(s.topic_entities, None, key, value, [item])
                continue
            part = partition_for(key, self._partitions)
            batch = batches.get(part)
            if batch is not None and not batch.fits(
                value, s.producer_batch_events, s.producer_batch_bytes
            ):
                del batches[part]
                await self._send_batch(batch)
                batch = None
            if batch is None:
                batch = batches[part] = Batch(part, key, started=time.monotonic())
            batch.add(value)
            if len(batch) >= s.producer_batch_events:
                del batches[part]
                await self._send_batch(batch)

    async def _send_batches(self, batches: dict[int, Batch]) -> None:
        pending = list(batches.values())
        batches.clear()
        for batch in pending:
            await self._send_batch(batch)

    async def _send_batch(self, batch: Batch) -> None:
        items = [(KIND_CALL, batch.key, v) for v in batch.values]
        partition = batch.partition if batch.partition < self._partitions else None
        await self._send_message(
            self.settings.topic_calls, partition, batch.key, batch.encode(), items
        )

    async def _send_message(
        self, topic: str, partition: int | None, key: bytes, value: bytes, items: list[Item]
    ) -> None:
        """Hand one message to aiokafka; its outcome (ack or spool) arrives in a callback."""
        producer = self._producer
        if producer is None:
            self._spool(items)
            return
        generation = self._generation
        try:
            future = await producer.send(topic, value, key=key, partition=partition)
        except Exception as exc:  # whatever it is, the events go to disk, not away
            self._spool(items)
            self._go_offline(generation, exc)
            return
        self._inflight.add(future)
        future.add_done_callback(lambda f: self._delivered(f, items, generation))

    def _delivered(self, future: asyncio.Future[Any], items: list[Item], generation: int) -> None:
        self._inflight.discard(future)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            self._spool(items)
            self._go_offline(generation, exc or RuntimeError("send cancelled"))
            return
        self.stats.acked += len(items)
        self.stats.messages += 1

    async def _drain_inflight(self) -> None:
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
            await asyncio.sleep(0)  # let the done-callbacks run

    # --- spool, offline and reconnect --------------------------------------------------
    def _spool(self, items: list[Item]) -> None:
        kept = self.spool.append(items)
        self.stats.spooled += kept
        self.stats.dropped += len(items) - kept
        self.stats.spool_bytes = self.spool.size
        self._wake.set()

    def _go_offline(self, generation: int, exc: BaseException) -> None:
        """Stop using the current producer; the maintain loop reconnects and replays."""
        if generation != self._generation or self._producer is None:
            return  # a late failure of a producer we already dropped
        log.warning("Kafka send failed (%s); spooling until it answers", str(exc) or repr(exc))
        producer, self._producer = self._producer, None
        self.stats.online = False
        task = asyncio.get_running_loop().create_task(self._close_producer(producer))
        self._closing_producers.add(task)
        task.add_done_callback(self._closing_producers.discard)
        self._wake.set()

    @staticmethod
    async def _close_producer(producer: AIOKafkaProducer) -> None:
        # stop() waits for its in-flight batches; they fail (and are spooled) or succeed.
        with contextlib.suppress(Exception):
            await producer.stop()

    async def _connect(self) -> None:
        s = self.settings
        if s.producer_ensure_topics:
            await ensure_topics(
                s, [s.topic_calls, s.topic_entities], timeout_ms=s.producer_request_timeout_ms
            )
        producer = await self._start_producer()
        try:
            partitions = await producer.partitions_for(s.topic_calls)
        except BaseException:
            await producer.stop()
            raise
        self._partitions = len(partitions) if partitions else s.topic_partitions
        self._generation += 1
        self._producer = producer
        self.stats.online = True
        log.info("publishing to %s (%d partitions)", s.kafka_bootstrap, self._partitions)

    async def _start_producer(self) -> AIOKafkaProducer:
        mode = self.settings.producer_idempotence
        if not self._idempotence_refused:
            producer = self._new_producer(idempotent=True)
            probe = [mode == "auto"]
            token = _probing.set(probe)
            try:
                await producer.start()
                self.stats.idempotent = True
                return producer
            except _IDEMPOTENCE_REFUSED as exc:
                await producer.stop()
                if mode == "on":
                    raise
                self._idempotence_refused = True
                log.warning(
                    "broker refused an idempotent producer (%s); publishing without "
                    "idempotence (duplicates from retries are dropped downstream by event_id)",
                    type(exc).__name__,
                )
            except BaseException:
                await producer.stop()
                raise
            finally:
                probe[0] = False
                _probing.reset(token)
        producer = self._new_producer(idempotent=False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self.stats.idempotent = False
        return producer

    def _new_producer(self, *, idempotent: bool) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(
            **kafka_client_options(s),  # bootstrap servers, TLS and SASL
            client_id=s.producer_client_id,
            acks="all",
            enable_idempotence=idempotent,
            compression_type=None if s.producer_compression == "none" else s.producer_compression,
            linger_ms=5,  # our own batching already lingers; this only merges messages
            max_batch_size=max(16_384, s.producer_batch_bytes + 1024),
            request_timeout_ms=s.producer_request_timeout_ms,
            retry_backoff_ms=100,
        )

    async def _maintain_loop(self) -> None:
        """Reconnect with exponential backoff while offline; replay the spool once online.

        The backoff only resets once the spool is empty, so a replay that keeps failing
        (an error that reconnecting does not cure) is retried ever more slowly, not in a
        tight loop. Nothing here may kill the task: every failure is logged and retried.
        """
        first = self.settings.producer_retry_backoff_ms / 1000
        backoff = first
        while True:
            self._wake.clear()
            try:
                if self._producer is None:
                    if self._closing_producers:
                        await asyncio.gather(*self._closing_producers, return_exceptions=True)
                    await self._connect()
                if self.spool:
                    await self._replay()
                    if self._producer is None:
                        raise ConnectionError("replay failed; will retry")
                    continue
            except Exception as exc:
                quiet = isinstance(exc, KafkaError | OSError)
                log.log(logging.DEBUG if quiet else logging.WARNING, "Kafka not usable: %r", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            backoff = first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _replay(self) -> None:
        """Send sealed spool segments oldest first; delete each once fully acknowledged."""
        self.spool.seal()
        for segment in self.spool.sealed_segments():
            producer, generation = self._producer, self._generation
            if producer is None:
                return
            records = list(read_records(segment))
            futures: list[asyncio.Future[Any]] = []
            try:
                for topic, partition, key, value in self._replay_messages(records):
                    futures.append(await producer.send(topic, value, key=key, partition=partition))
                results = await asyncio.gather(*futures, return_exceptions=True)
            except Exception as exc:
                self._go_offline(generation, exc)
                return
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                self._go_offline(generation, failed)
                return
            self.spool.remove(segment)
            self.stats.replayed += len(records)
            self.stats.acked += len(records)
            self.stats.messages += len(futures)
            self.stats.spool_bytes = self.spool.size
            log.info("replayed %d spooled events from %s", len(records), segment.name)

    def _replay_messages(self, records: list[Record]) -> list[tuple[str, int | None, bytes, bytes]]:
        s = self.settings
        calls = ((r.key, r.value) for r in records if r.kind == KIND_CALL)
        batches = batch_calls(
            calls,
            self._partitions,
            max_events=s.producer_batch_events,
            max_bytes=s.producer_batch_bytes,
        )
        messages: list[tuple[str, int | None, bytes, bytes]] = [
            (s.topic_calls, b.partition, b.key, b.encode()) for b in batches
        ]
        messages += [
            (s.topic_entities, None, r.key, r.value) for r in records if r.kind == KIND_RENAME
        ]
        return messages

    def snapshot(self) -> dict[str, Any]:
        """Stats as a plain dict (for logs, health endpoints, the benchmark)."""
        return asdict(self.stats)


class SyncUsagePublisher:
    """The publisher for threaded (non-async) services: its own event loop in a thread.

    ``publish()`` appends to a thread-safe inbox and returns at once; a task on the loop
    thread moves the inbox into the bounded buffer. The inbox is bounded too: when it holds
    ``producer_buffer_events`` the caller waits up to ``producer_enqueue_timeout_ms``, after
    which the backlog goes to the spool. ``close()`` also runs at interpreter exit, so a
    service that forgets it still spools instead of losing events.
    """

    def __init__(self, settings: Settings, *, start_timeout: float = 60.0) -> None:
        self._publisher = UsagePublisher(settings)
        self._inbox: deque[Item] = deque()
        self._capacity = settings.producer_buffer_events
        self._wait = settings.producer_enqueue_timeout_ms / 1000
        self._scheduled = False
        self._lock = threading.Lock()
        self._drain_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="usage-publisher", daemon=True)
        self._thread.start()
        try:
            self._call(self._publisher.start(), start_timeout)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            raise
        self._closed = False
        atexit.register(self.close)

    @property
    def stats(self) -> PublisherStats:
        return self._publisher.stats

    def snapshot(self) -> dict[str, Any]:
        return self._publisher.snapshot()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def publish(self, event: UsageEvent) -> None:
        """Serialise and hand over; waits only while the inbox is full (bounded)."""
        self._put((KIND_CALL, event.partition_key, event.to_json()))

    def publish_rename(self, event: EntityRenamed) -> None:
        self._put((KIND_RENAME, event.partition_key, event.to_json()))

    def _put(self, item: Item) -> None:
        if self._closed:
            raise RuntimeError("SyncUsagePublisher is closed")
        if len(self._inbox) >= self._capacity:
            deadline = time.monotonic() + self._wait
            while len(self._inbox) >= self._capacity and time.monotonic() < deadline:
                time.sleep(0.0005)
        self._inbox.append(item)
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            await self._publisher.drain(self._inbox)
            with self._lock:
                if not self._inbox:  # checked under the lock: _put schedules anew after this
                    self._scheduled = False
                    return

    async def _flush(self) -> None:
        if self._drain_task is not None:
            await self._drain_task
        await self._publisher.drain(self._inbox)
        await self._publisher.flush()

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything published so far is acked by Kafka or in the spool."""
        self._call(self._flush(), timeout)

    def wait_replayed(self, timeout: float = 30.0) -> bool:
        return self._call(self._publisher.wait_replayed(timeout), timeout + 5)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush and stop the publisher, then the loop thread. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._call(self._flush(), timeout)
            self._call(self._publisher.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
