"""Deduplication decisions are the same on first processing and on every replay."""

from __future__ import annotations

from datetime import UTC, datetime

from producers.contract import UsageEvent
from stream_processor.dedupe import Deduper


def _events(n: int) -> list[UsageEvent]:
    return [
        UsageEvent(tenant_id="t", occurred_at=datetime.now(UTC), source="chat", source_id="c",
                   model="m")
        for _ in range(n)
    ]  # fmt: skip


def test_duplicates_across_and_within_messages() -> None:
    dedupe = Deduper(3600, clock=lambda: 1000.0)
    dedupe.load(0, [])
    a, b, c = _events(3)
    assert dedupe.admit(0, 10, [a, b, b]) == ([a, b], 1)
    assert dedupe.admit(0, 11, [b, c, a]) == ([c], 2)
    assert dedupe.admit(0, 12, [a]) == ([], 1)
    assert dedupe.size() == 3


def test_a_replay_from_the_committed_offset_makes_identical_decisions() -> None:
    """Messages 5 and 6 were stored and committed, 7 was stored but not committed: the new
    owner starts from what ClickHouse holds and reads again from 7."""
    a, b, c, d = _events(4)
    first = Deduper(3600, clock=lambda: 1000.0)
    first.load(3, [])
    messages = [(5, [a, b, b]), (6, [b, c]), (7, [c, a, d])]
    decisions = [first.admit(3, offset, events) for offset, events in messages]
    assert decisions[2] == ([d], 2)
    stored = [(e.event_id.int, 999.0) for kept, _ in decisions for e in kept]
    replay = Deduper(3600, clock=lambda: 1000.0)
    assert replay.load(3, stored) == 4
    kept, duplicates = replay.admit(3, 7, [c, a, d])
    assert kept == [] and duplicates == 3, "d is in ClickHouse already: not written twice"
    fresh = Deduper(3600, clock=lambda: 1000.0)
    fresh.load(3, stored[:3])  # message 7's insert had not reached ClickHouse
    assert fresh.admit(3, 7, [c, a, d]) == decisions[2], "the same batch as the first time"


def test_an_id_seen_twice_in_one_message_is_kept_once_on_replay_too() -> None:
    (a,) = _events(1)
    dedupe = Deduper(3600, clock=lambda: 1.0)
    dedupe.load(0, [])
    assert dedupe.admit(0, 4, [a, a]) == ([a], 1)
    dedupe.drop(0)
    dedupe.load(0, [])
    assert dedupe.admit(0, 4, [a, a]) == ([a], 1)


def test_expiry_forgets_ids_older_than_the_window_loaded_ones_too() -> None:
    clock = [0.0]
    dedupe = Deduper(60, clock=lambda: clock[0])
    old, a, b = _events(3)
    dedupe.load(1, [(old.event_id.int, 0.5)])
    dedupe.admit(1, 1, [a])
    clock[0] = 30.0
    dedupe.admit(1, 2, [b])
    clock[0] = 61.0
    assert dedupe.expire() == 2
    assert dedupe.admit(1, 3, [a]) == ([a], 0), "forgotten after the window"
    assert dedupe.admit(1, 4, [old]) == ([old], 0), "a loaded id expires by its write time"
    assert dedupe.admit(1, 5, [b])[1] == 1, "still remembered inside the window"
    dedupe.drop(1)
    assert not dedupe.is_loaded(1) and dedupe.size() == 0
