"""The Faust app is wired from settings; dedupe expiry writes tombstones to the changelog."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_usage.settings import Settings
from producers.contract import UsageEvent
from stream_processor.app import Processor
from stream_processor.dedupe import table_key


def _processor(tmp_path: Path) -> Processor:
    settings = Settings(home=tmp_path, processor_group="unit-proc", processor_web_port=7077,
                        processor_session_timeout_s=6, topic_partitions=3)  # fmt: skip
    return Processor(settings, cluster_id="cid")


def test_app_configuration_comes_from_settings(tmp_path: Path) -> None:
    processor = _processor(tmp_path)
    conf = processor.app.conf
    assert conf.id == "unit-proc"
    assert conf.web_bind == "127.0.0.1" and conf.web_port == 7077
    assert conf.broker_session_timeout == 6
    assert conf.topic_partitions == 3 and conf.stream_wait_empty is False
    assert processor.dedupe.partitions == 3
    ok, body = processor.health()
    assert ok and body["assigned"] == [] and body["cluster_id"] == "cid"


def test_expired_dedupe_entries_leave_the_table_with_tombstones(tmp_path: Path) -> None:
    processor = _processor(tmp_path)
    clock = [1000.0]
    processor.deduper.clock = lambda: clock[0]
    processor.deduper.window_s = 60
    sent: list[tuple[Any, ...]] = []
    processor.dedupe.send_changelog = lambda *args, **kw: sent.append(args)  # type: ignore[method-assign]
    store = processor.dedupe.data
    processor.deduper.load(2, [])
    event = UsageEvent(tenant_id="t", occurred_at=datetime.now(UTC), source="chat",
                       source_id="c", model="m")  # fmt: skip
    _, _, value = processor.deduper.admit(2, 41, [event])
    assert value is not None
    store[table_key(2, 41)] = value
    asyncio.run(processor._expiry_timer())
    assert sent == [] and table_key(2, 41) in store
    clock[0] += 61
    asyncio.run(processor._expiry_timer())
    assert sent == [(2, table_key(2, 41), None)]
    assert table_key(2, 41) not in store


def test_post_recovery_seek_neither_skips_nor_rewinds() -> None:
    from faust.types import TP

    from stream_processor.app import patch_seek_to_committed

    class FakeConsumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[TP, int]] = []

        async def seek_to_committed(self) -> dict[TP, int | None]:
            return {TP("calls", 0): 5, TP("calls", 1): None, TP("calls", 2): 7,
                    TP("entities", 0): None, TP("app-dedupe-changelog", 0): None}  # fmt: skip

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 2 for tp in tps}

        async def seek_wait(self, partitions: dict[TP, int]) -> None:
            self.seeks.extend(partitions.items())  # on the consumer's thread, not _seek

        async def _seek(self, tp: TP, offset: int) -> None:
            raise AssertionError("_seek calls aiokafka from the wrong thread")

    consumer = FakeConsumer()
    already_read = {TP("calls", 0): 9}  # the agent took offsets 5..8 before the seek
    starts: dict[TP, int] = {}
    patch_seek_to_committed(consumer, {"calls", "entities"}, already_read.get, starts.__setitem__)
    committed = asyncio.run(consumer.seek_to_committed())
    assert committed[TP("calls", 0)] == 5
    assert sorted(consumer.seeks) == sorted([
        (TP("calls", 0), 9),  # continue, do not rewind to 5
        (TP("calls", 1), 2),  # never committed: from its earliest offset
        (TP("entities", 0), 2),
    ])  # fmt: skip
    # where each partition starts, for the watchdog: one that never delivers is still seen
    assert starts == {TP("calls", 0): 9, TP("calls", 1): 2, TP("calls", 2): 7,
                      TP("entities", 0): 2}  # fmt: skip


def test_watchdog_reseeks_a_partition_that_never_delivered(tmp_path: Path) -> None:
    """A fresh partition aiokafka never fetches has no sink position: the watchdog must ask
    the broker for its end offset too, and seek it back to where it started."""
    from faust.types import TP

    processor = _processor(tmp_path)
    settings = processor.settings

    class FakeConsumer:
        flow_active = True

        def __init__(self) -> None:
            self.asked: list[set[TP]] = []
            self.seeks: list[dict[TP, int]] = []
            self.resumed: list[TP] = []

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            self.asked.append(set(tps))
            return {tp: 50 for tp in tps}

        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            self.seeks.append(offsets)

        def resume_partitions(self, tps: list[TP]) -> None:
            self.resumed.extend(tps)

    consumer = FakeConsumer()
    processor.app.consumer = consumer  # type: ignore[assignment]
    processor._starts = {0: 7, 1: 3}
    processor.sink.next_offsets[0] = 20  # partition 0 delivers; partition 1 never did
    for _ in range(2):
        processor.sink.next_offsets[0] += 5
        asyncio.run(processor._lag_timer())
    fresh = TP(settings.topic_calls, 1)
    assert consumer.asked[-1] == {TP(settings.topic_calls, 0), fresh}
    assert consumer.seeks == [{fresh: 3}] and consumer.resumed == [fresh]


def test_a_message_past_a_hole_is_refetched_not_taken_and_faust_does_not_commit_over_it(
    tmp_path: Path,
) -> None:
    """Partition 3 expects offset 12 and offset 16 arrives: the sink must not see it (it
    comes again after the re-fetch from 12), and Faust's own gap tracking, which would
    count 12..15 as processed and commit over them, is kept out of the calls topic."""
    from faust.types import TP

    from stream_processor.app import patch_gap_tracking

    processor = _processor(tmp_path)
    calls = processor.settings.topic_calls

    class FakeConsumer:
        def __init__(self) -> None:
            self.seeks: list[dict[TP, int]] = []
            self.gaps: list[tuple[TP, int, int]] = []

        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            self.seeks.append(offsets)

        async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
            self.gaps.append((tp, offset_from, offset_to))

    consumer = FakeConsumer()
    processor._faust_add_gap = patch_gap_tracking(consumer, calls)
    asyncio.run(consumer._add_gap(TP(calls, 3), 12, 16))
    asyncio.run(consumer._add_gap(TP("other", 0), 1, 2))
    assert consumer.gaps == [(TP("other", 0), 1, 2)]

    processor.app.consumer = consumer  # type: ignore[assignment]
    processor._starts = {3: 12}  # where the partition (re)starts: its committed offset

    class Message:
        topic, partition, offset, value, key = calls, 3, 16, b"[]", None

    class Event:
        message = Message()

        def ack(self) -> bool:
            raise AssertionError("a message past a hole must not be acked")

    asyncio.run(processor.handle_call(Event()))  # type: ignore[arg-type]
    assert consumer.seeks == [{TP(calls, 3): 12}]
    assert not processor.sink.is_open(3) and processor.sink.next_offsets == {}
    assert processor.metrics.hole_seeks._value.get() == 1
