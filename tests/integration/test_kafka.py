"""The local broker speaks real Kafka: produce with aiokafka, consume in a consumer group."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from llm_usage.settings import Settings


async def _roundtrip(settings: Settings, count: int) -> list[bytes]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic_calls, 3, 1)])
    finally:
        await admin.close()

    # Tansu (memory engine) rejects InitProducerId, so no idempotent producer here.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(settings.topic_calls, f"m{i}".encode(), key=f"k{i % 5}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        settings.topic_calls,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id="test-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        rebalance_timeout_ms=3000,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(received) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert sum(offset or 0 for offset in committed.values()) == count
    return received


def test_produce_and_consume_in_a_group(settings: Settings) -> None:
    received = asyncio.run(_roundtrip(settings, 300))
    assert sorted(received) == sorted(f"m{i}".encode() for i in range(300))
