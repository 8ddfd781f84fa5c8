"""Create the pipeline's topics when they are missing.

Brokers that auto-create topics (Tansu does, with 4 partitions) would otherwise give the
calls topic a partition count nobody chose, and changing it later reshuffles which
partition a conversation lands on. So publishers, the worker and tests call
:func:`ensure_topics` first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings

log = logging.getLogger(__name__)


def pipeline_topics(settings: Settings) -> list[str]:
    """Every topic the pipeline uses: calls, entities, dead letters, alerts, budget status."""
    return [
        settings.topic_calls,
        settings.topic_entities,
        settings.topic_dead_letter,
        settings.topic_alerts,
        settings.topic_budget_status,
    ]


async def ensure_topics(
    settings: Settings,
    topics: Iterable[str] | None = None,
    *,
    partitions: int | None = None,
    timeout_ms: int = 10_000,
) -> list[str]:
    """Create the missing ones among ``topics`` (default: all pipeline topics).

    Returns the names it created. Existing topics are left as they are (their partition
    count is not changed). Safe to call concurrently from several processes.
    """
    wanted = list(topics) if topics is not None else pipeline_topics(settings)
    admin = AIOKafkaAdminClient(
        **kafka_client_options(settings),
        client_id=f"{settings.producer_client_id}-admin",
        request_timeout_ms=timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(wanted) if t not in existing]
        if not missing:
            return []
        count = partitions or settings.topic_partitions
        new = [NewTopic(t, count, settings.topic_replication_factor) for t in missing]
        try:
            response = await admin.create_topics(new, timeout_ms=timeout_ms)
        except TopicAlreadyExistsError:
            return []
        created = []
        for entry in getattr(response, "topic_errors", []):
            name, code = entry[0], entry[1]
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"could not create topic {name}: error code {code} {entry}")
        if created:
            log.info("created topics %s with %d partitions", created, count)
        return created
    finally:
        await admin.close()


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float = 30.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning of every partition until ``until(records)`` holds.

    No consumer group (so no join wait): for tests, tools and the benchmark, which need to
    see what producers wrote. Raises ``TimeoutError`` with the count read so far.
    """
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        if topic not in await consumer.topics():  # also refreshes the metadata
            raise LookupError(f"topic {topic} does not exist")
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise LookupError(f"topic {topic} does not exist")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(records):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"read {len(records)} records from {topic} in {timeout}s")
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records
