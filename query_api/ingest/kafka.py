"""The ingest service's Kafka side: accepted events go to the calls topic with ``acks=all``
and a request is answered only once Kafka acknowledged every one of them.

No spool here, unlike ``producers.UsagePublisher``: an HTTP client can retry, and must be
told the truth. While Kafka is unreachable every request gets 503 and nothing is
acknowledged that was not stored. A retry after a 503 (or a lost 202) may resend events that
did reach Kafka: the worker drops them by ``event_id``, as it drops any duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings
from producers.batching import batch_calls
from producers.contract import UsageEvent
from producers.topics import ensure_topics

log = logging.getLogger(__name__)

RECONNECT_EVERY_S = 1.0  # while Kafka is down, a request tries to connect at most this often


class KafkaUnavailable(RuntimeError):
    """Kafka did not acknowledge in time (or cannot be reached): the request gets 503."""


class EventSink:
    """One producer per ingest process, connected lazily and reconnected after failures."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._partitions = settings.topic_partitions
        self._lock = asyncio.Lock()
        self._last_attempt = 0.0
        self._last_error = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._producer is not None

    @property
    def last_error(self) -> str | None:
        return None if self._producer is not None else self._last_error

    async def send(self, events: list[UsageEvent]) -> None:
        """Publish ``events`` (batched per partition, as the Python publisher does); returns
        once every message is acknowledged by all in-sync replicas."""
        if not events:
            return
        producer = await self._connected()
        s = self.settings
        pairs = ((e.partition_key, e.to_json()) for e in events)
        batches = batch_calls(
            pairs,
            self._partitions,
            max_events=s.producer_batch_events,
            max_bytes=s.producer_batch_bytes,
        )
        try:
            async with asyncio.timeout(s.ingest_kafka_timeout_s):
                sent = [
                    await producer.send(s.topic_calls, b.encode(), key=b.key, partition=b.partition)
                    for b in batches
                ]
                await asyncio.gather(*sent)
        except (KafkaError, TimeoutError, OSError) as exc:
            await self._drop(producer, f"Kafka did not acknowledge: {_reason(exc)}")
            raise KafkaUnavailable(self._last_error) from exc

    async def dead_letter(self, raw: object, reason: str) -> None:
        """Best effort: a rejected event also goes to the dead-letter topic, with its reason,
        as the worker does with bad events (the caller was told in the response already)."""
        producer = self._producer
        if producer is None:
            return
        value = json.dumps(raw, default=str).encode()[: 512 * 1024]
        headers = [
            ("x-dead-letter-reason", reason.encode()[:4000]),
            ("x-dead-letter-origin", b"ingest-http"),
        ]
        try:
            await producer.send(self.settings.topic_dead_letter, value, headers=headers)
        except KafkaError:
            log.warning("could not dead-letter a rejected event (%s)", reason, exc_info=True)

    async def connect(self) -> None:
        """Connect now if not connected (readiness); KafkaUnavailable says why not."""
        await self._connected()

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._last_attempt < RECONNECT_EVERY_S:
                raise KafkaUnavailable(self._last_error)
            self._last_attempt = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.ingest_kafka_timeout_s):
                    self._producer = await self._start()
            except (KafkaError, TimeoutError, OSError, RuntimeError) as exc:
                # RuntimeError: ensure_topics could not create a topic (ACLs, replication)
                self._last_error = (
                    f"Kafka at {self.settings.kafka_bootstrap} is unreachable: {_reason(exc)}"
                )
                raise KafkaUnavailable(self._last_error) from exc
            return self._producer

    async def _start(self) -> AIOKafkaProducer:
        s = self.settings
        await ensure_topics(s, [s.topic_calls, s.topic_dead_letter])
        producer = AIOKafkaProducer(
            **kafka_client_options(s),
            client_id=f"{s.producer_client_id}-ingest",
            acks="all",
            # Tansu refuses InitProducerId; duplicates from a retry are dropped by event_id.
            enable_idempotence=s.producer_idempotence == "on",
            compression_type=None if s.producer_compression == "none" else s.producer_compression,
            linger_ms=2,
            max_batch_size=max(16_384, s.producer_batch_bytes + 1024),
            request_timeout_ms=int(s.ingest_kafka_timeout_s * 1000),
        )
        try:
            await producer.start()
            partitions = await producer.partitions_for(s.topic_calls)
        except BaseException:
            await producer.stop()
            raise
        self._partitions = len(partitions) if partitions else s.topic_partitions
        log.info("ingest publishing to %s (%d partitions)", s.kafka_bootstrap, self._partitions)
        return producer

    async def _drop(self, producer: AIOKafkaProducer, reason: str) -> None:
        """Forget ``producer`` after it failed (unless another request already replaced it);
        the next request reconnects."""
        if id(self._producer) != id(producer):  # already replaced by a reconnect
            return
        self._producer = None
        self._last_error = reason
        self._last_attempt = 0.0
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except (KafkaError, TimeoutError, OSError):
            log.debug("stopping a failed producer failed", exc_info=True)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + text if text else ''}"
