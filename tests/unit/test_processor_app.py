"""The worker is wired from settings; the calls consumer takes offsets strictly in order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from llm_usage.settings import Settings
from stream_processor.app import Processor
from stream_processor.consumer import CallsConsumer, Progress
from stream_processor.metrics import Metrics


def _processor(tmp_path: Path) -> Processor:
    settings = Settings(home=tmp_path, processor_group="unit-proc", processor_web_port=7077,
                        processor_session_timeout_s=6, topic_partitions=3)  # fmt: skip
    return Processor(settings, cluster_id="cid")


def test_app_configuration_comes_from_settings(tmp_path: Path) -> None:
    processor = _processor(tmp_path)
    conf = processor.app.conf
    assert conf.id == "unit-proc-app", "the calls group is the calls consumer's alone"
    assert conf.web_bind == "127.0.0.1" and conf.web_port == 7077
    assert conf.broker_session_timeout == 6
    assert not processor.app.tables, "no Faust table: nothing recovered from a changelog"
    ok, body = processor.health()
    assert ok and body["assigned"] == [] and body["cluster_id"] == "cid"


@dataclass
class Record:
    offset: int
    key: bytes | None = None
    value: bytes | None = b"[]"


class Handler:
    """Records what the consumer hands on."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    async def open_partition(self, partition: int, offset: int) -> None:
        pass

    async def handle(self, partition: int, offset: int, key: Any, value: Any) -> None:
        self.taken.append(offset)

    async def flush(self) -> None:
        pass

    async def forget(self) -> None:
        pass


class Seeks:
    """The consumer methods ``_take`` calls: seek, and pause before a repeated re-read."""

    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []
        self.paused: list[int] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def pause(self, tp: TopicPartition) -> None:
        self.paused.append(tp.partition)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.remove(tp.partition)


class Broker(Seeks):
    """End offsets, and when the broker last answered a fetch of each partition."""

    def __init__(self, ends: dict[int, int], answered_s_ago: dict[int, float]) -> None:
        super().__init__()
        self.ends = ends
        self.answered_s_ago = answered_s_ago

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(1000 * (time.time() - self.answered_s_ago[tp.partition]))


def _consumer(tmp_path: Path) -> tuple[CallsConsumer, Handler]:
    handler = Handler()
    settings = Settings(home=tmp_path, processor_group="unit-proc")
    return CallsConsumer(settings, handler, Metrics(), hole_report_s=0.0), handler


def test_a_later_offset_first_is_re_read_from_the_expected_one_never_taken(
    tmp_path: Path,
) -> None:
    calls, handler = _consumer(tmp_path)
    tp = TopicPartition(calls.topic, 3)
    kafka = Seeks()
    calls.next_offsets[3] = 12

    async def run() -> None:
        # the broker returned 16.. while 12..15 were still being written
        await calls._take(kafka, tp, [Record(16), Record(17)])  # type: ignore[arg-type]
        assert handler.taken == [] and kafka.seeks == [(3, 12)]
        assert calls.next_offsets[3] == 12 and 3 in calls.gaps
        # the re-read brings them in order; a stale record below is ignored
        await calls._take(kafka, tp, [Record(11), *(Record(o) for o in range(12, 18))])  # type: ignore[arg-type]
        assert handler.taken == [12, 13, 14, 15, 16, 17] and calls.next_offsets[3] == 18
        assert calls.gaps == {}

    asyncio.run(run())
    assert calls.metrics.total("out_of_order_fetches") == 1


def test_an_offset_missing_too_long_turns_health_red_and_is_never_skipped(
    tmp_path: Path,
) -> None:
    calls, handler = _consumer(tmp_path)
    tp = TopicPartition(calls.topic, 0)
    kafka = Seeks()
    calls.next_offsets[0] = 5

    async def run() -> None:
        for _ in range(3):
            await calls._take(kafka, tp, [Record(7), Record(8)])  # type: ignore[arg-type]
        calls.consumer = Broker({0: 9}, {0: 0.1})  # type: ignore[assignment]
        await calls.check(clickhouse_failing=False)

    asyncio.run(run())
    assert handler.taken == [] and kafka.seeks == [(0, 5)] * 3
    assert kafka.paused == [0, 0], "the second and third re-reads wait a moment first"
    assert calls.problems() == ["partition 0: offsets from 5 missing (broker returned 7)"]
    assert calls.lag == {0: 4}


def test_only_stored_offsets_of_assigned_partitions_are_committed(tmp_path: Path) -> None:
    calls, _ = _consumer(tmp_path)
    committed: list[dict[TopicPartition, int]] = []

    class Commits:
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            committed.append(dict(offsets))

    calls.next_offsets.update({0: 40, 1: 7})
    calls.mark_written(0, 30)
    calls.mark_written(2, 99)  # not assigned (revoked meanwhile): never committed
    asyncio.run(calls._commit(Commits()))  # type: ignore[arg-type]
    asyncio.run(calls._commit(Commits()))  # type: ignore[arg-type]
    assert committed == [{TopicPartition(calls.topic, 0): 30}], "once, and only what is stored"


def _unmoved_for(calls: CallsConsumer, seconds: float, **next_offsets: int) -> None:
    """Partitions (``p<N>=offset``) that have been at ``offset`` for ``seconds``."""
    since = time.monotonic() - seconds
    for name, offset in next_offsets.items():
        calls.next_offsets[int(name[1:])] = offset
        calls._progress[int(name[1:])] = Progress(offset, since)


def test_a_partition_the_broker_answers_with_nothing_is_stalled_one_waiting_its_turn_is_not(
    tmp_path: Path,
) -> None:
    calls, _ = _consumer(tmp_path)
    _unmoved_for(calls, 40.0, p0=5, p1=7, p2=9)
    calls._took_at = time.monotonic()  # the consumer works through other partitions
    # p0's fetched records wait behind the others' (aiokafka fetches it again only after);
    # the broker keeps answering p1's fetches without records; p2 has no lag
    calls.consumer = Broker({0: 50, 1: 60, 2: 9}, {0: 39.0, 1: 0.4, 2: 0.4})  # type: ignore[assignment]
    asyncio.run(calls.check(clickhouse_failing=False))
    assert calls.problems() == ["partition 1: no progress with lag 53"]
    assert calls.metrics.registry.get_sample_value("llm_usage_processor_stalled_partitions") == 1


def test_every_lagging_partition_is_stalled_when_the_consumer_takes_nothing(
    tmp_path: Path,
) -> None:
    calls, _ = _consumer(tmp_path)
    _unmoved_for(calls, 40.0, p0=5, p1=7)
    calls._took_at = time.monotonic() - 40.0
    calls.consumer = Broker({0: 50, 1: 60}, {0: 39.0, 1: 39.0})  # type: ignore[assignment]
    asyncio.run(calls.check(clickhouse_failing=True))
    assert calls.problems() == [], "while ClickHouse fails the sink holds the consumer back"
    _unmoved_for(calls, 40.0, p0=5, p1=7)
    asyncio.run(calls.check(clickhouse_failing=False))
    assert calls.problems() == [
        "partition 0: no progress with lag 45",
        "partition 1: no progress with lag 53",
    ]
