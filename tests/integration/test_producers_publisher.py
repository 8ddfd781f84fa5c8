"""The publisher against the real local broker: batching, keys, renames, spool replay."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import UnknownError

from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from producers.batching import partition_for
from producers.contract import EntityRenamed, Source, UsageEvent, decode_calls, parse_call
from producers.publisher import SyncUsagePublisher, UsagePublisher
from producers.spool import SpoolLockedError
from producers.topics import ensure_topics, pipeline_topics, read_topic


def make_events(n: int, conversations: int = 40, tenant: str = "acme") -> list[UsageEvent]:
    now = datetime.now(UTC)
    return [
        UsageEvent(
            tenant_id=tenant,
            occurred_at=now,
            source=Source.CHAT,
            source_id=f"conv-{i % conversations}",
            model="claude-sonnet-4-6",
            input_tokens=i,
            output_tokens=1,
        )
        for i in range(n)
    ]


async def read_calls(settings: Settings, count: int, timeout: float = 30.0) -> list[UsageEvent]:
    """Every call event on the calls topic (at least ``count``), checking batch invariants."""
    events: list[UsageEvent] = []

    def enough(records: list) -> bool:  # type: ignore[type-arg]
        events.clear()
        for record in records:
            batch = [parse_call(r) for r in decode_calls(record.value)]
            for event in batch:  # every event of a message belongs on the message's partition
                part = partition_for(event.partition_key, settings.topic_partitions)
                assert part == record.partition
            assert partition_for(record.key, settings.topic_partitions) == record.partition
            events.extend(batch)
        return len(events) >= count

    await read_topic(settings, settings.topic_calls, until=enough, timeout=timeout)
    return events


def test_batches_keep_each_conversation_on_its_partition_in_order(settings: Settings) -> None:
    settings = settings.model_copy(update={"producer_batch_events": 50})
    published = make_events(1000)
    renames = [
        EntityRenamed(tenant_id="acme", source=Source.CHAT, source_id=f"conv-{i}", name=f"Chat {i}")
        for i in range(5)
    ]

    async def main() -> tuple[list[UsageEvent], list[bytes], dict[str, object]]:
        async with UsagePublisher(settings) as pub:
            for event in published:
                await pub.publish(event)
            for rename in renames:
                await pub.publish_rename(rename)
            await pub.flush()
            stats = pub.snapshot()
        got = await read_calls(settings, len(published))
        named = await read_topic(settings, settings.topic_entities, until=lambda r: len(r) >= 5)
        return got, [r.value for r in named], stats

    got, named, stats = asyncio.run(main())
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in published)
    by_conversation: dict[str, list[int]] = defaultdict(list)
    for event in got:
        by_conversation[event.source_id].append(event.input_tokens)
    assert all(seq == sorted(seq) for seq in by_conversation.values())
    assert stats["acked"] == 1005 and stats["spooled"] == 0 and stats["online"] is True
    assert 20 <= int(str(stats["messages"])) < 1000 / 10  # batched: far fewer messages than events
    assert stats["idempotent"] is False  # Tansu refuses InitProducerId; "auto" fell back
    assert sorted(EntityRenamed.model_validate_json(v).name for v in named) == [
        f"Chat {i}" for i in range(5)
    ]


def test_idempotence_on_refuses_to_start_without_it(settings: Settings) -> None:
    strict = settings.model_copy(update={"producer_idempotence": "on"})

    async def main() -> None:
        await UsagePublisher(strict).start()

    with pytest.raises(UnknownError):
        asyncio.run(main())


def test_topics_get_the_configured_partition_count(settings: Settings) -> None:
    settings = settings.model_copy(update={"topic_partitions": 5})

    async def main() -> tuple[list[list[str]], list[str], set[int] | None]:
        racing = await asyncio.gather(ensure_topics(settings), ensure_topics(settings))
        again = await ensure_topics(settings)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        await consumer.start()
        try:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(settings.topic_calls)
        finally:
            await consumer.stop()
        return racing, again, partitions

    racing, again, partitions = asyncio.run(main())
    everything = pipeline_topics(settings)  # the test's own names (tests/conftest.py)
    assert sorted(racing[0] + racing[1]) == sorted(everything)  # each created exactly once
    assert again == []
    assert partitions == set(range(5))


def test_sync_facade_publishes_from_plain_threads(settings: Settings) -> None:
    small = settings.model_copy(update={"producer_buffer_events": 100})  # a burst overflows
    published = make_events(3000, conversations=7)
    results: list[bool] = []

    def service_thread(pub: SyncUsagePublisher, events: list[UsageEvent]) -> None:
        for event in events:
            pub.publish(event)
        results.append(True)

    with SyncUsagePublisher(small) as pub:
        threads = [
            threading.Thread(target=service_thread, args=(pub, published[i::3])) for i in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pub.publish_rename(
            EntityRenamed(tenant_id="acme", source=Source.AGENT, source_id="a1", name="Scout")
        )
        pub.flush()
        assert pub.wait_replayed(20)
        assert pub.stats.acked == 3001 and pub.stats.published == 3001
    pub.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish(published[0])
    assert results == [True] * 3
    got = asyncio.run(read_calls(settings, 3000))
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in published)


def test_events_spooled_while_kafka_is_down_are_replayed_by_the_next_process(
    settings: Settings,
) -> None:
    """A service starts with Kafka unreachable, publishes, stops; the next start replays."""
    down = settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{free_port()}", "producer_request_timeout_ms": 1000}
    )
    published = make_events(500)

    async def offline_run() -> dict[str, object]:
        # (how fast events go to the spool with Kafka down: `llm-usage bench publish`)
        async with UsagePublisher(down) as pub:
            for event in published:
                await pub.publish(event)
            with pytest.raises(SpoolLockedError):
                await UsagePublisher(down).start()  # one process per spool folder
        return pub.snapshot()

    stats = asyncio.run(offline_run())
    assert stats["spooled"] == 500 and stats["acked"] == 0 and stats["online"] is False
    spool_dir = settings.home / "spool" / "default"
    assert any(spool_dir.glob("*.spool"))

    async def next_run() -> tuple[dict[str, object], list[UsageEvent]]:
        async with UsagePublisher(settings) as pub:
            assert await pub.wait_replayed(20)
            stats = pub.snapshot()
        return stats, await read_calls(settings, 500)

    stats, got = asyncio.run(next_run())
    assert stats["replayed"] == 500
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in published)
    assert not any(spool_dir.glob("*.spool"))  # acknowledged segments are deleted


def test_a_full_buffer_spills_to_the_spool_instead_of_blocking(settings: Settings) -> None:
    tight = settings.model_copy(
        update={"producer_buffer_events": 20, "producer_enqueue_timeout_ms": 0}
    )
    published = make_events(3000)

    async def main() -> tuple[dict[str, object], list[UsageEvent]]:
        async with UsagePublisher(tight) as pub:
            for event in published:  # no awaits in between: the sender never gets to run
                await pub.publish(event)
            assert pub.stats.spooled > 0
            await pub.flush()
            assert await pub.wait_replayed(20)
            stats = pub.snapshot()
        return stats, await read_calls(tight, 3000)

    stats, got = asyncio.run(main())
    assert stats["spooled"] == stats["replayed"]
    ids = [e.event_id for e in got]
    assert len(set(ids)) == 3000 and set(ids) == {e.event_id for e in published}
    assert json.loads(published[0].to_json())["event_id"] == str(published[0].event_id)


def test_cli_creates_topics_and_drains_a_dead_services_spool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from llm_usage.cli import app

    down = settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{free_port()}", "producer_spool_name": "chat-1"}
    )
    published = make_events(50)

    async def offline() -> None:
        async with UsagePublisher(down) as pub:
            for event in published:
                await pub.publish(event)

    asyncio.run(offline())
    env = {
        "LLM_USAGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LLM_USAGE_HOME": str(settings.home),
        "LLM_USAGE_TOPIC_CALLS": settings.topic_calls,
        "LLM_USAGE_TOPIC_ENTITIES": settings.topic_entities,
        "LLM_USAGE_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "LLM_USAGE_TOPIC_ALERTS": settings.topic_alerts,
        "LLM_USAGE_TOPIC_BUDGET_STATUS": settings.topic_budget_status,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    result = runner.invoke(app, ["topics"])
    created = len(pipeline_topics(settings))
    assert result.exit_code == 0 and result.output.count("created") == created, result.output
    result = runner.invoke(app, ["replay-spool", "--name", "chat-1", "--timeout", "20"])
    assert result.exit_code == 0 and "replayed 50 events; 0 bytes left" in result.output
    got = asyncio.run(read_calls(settings, 50))
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in published)
