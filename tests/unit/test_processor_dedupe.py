"""Deduplication decisions are the same on first processing and on every replay."""

from __future__ import annotations

from datetime import UTC, datetime

from producers.contract import UsageEvent
from stream_processor.dedupe import Deduper, parse_key, table_key


def _events(n: int) -> list[UsageEvent]:
    return [UsageEvent(tenant_id="t", occurred_at=datetime.now(UTC), source="chat",
                       source_id="c", model="m") for _ in range(n)]  # fmt: skip


def test_duplicates_across_and_within_messages() -> None:
    dedupe = Deduper(3600, clock=lambda: 1000.0)
    dedupe.load(0, [])
    a, b, c = _events(3)
    kept, dups, value = dedupe.admit(0, 10, [a, b, b])
    assert kept == [a, b] and dups == 1 and value is not None
    kept, dups, value = dedupe.admit(0, 11, [b, c, a])
    assert kept == [c] and dups == 2
    kept, dups, value = dedupe.admit(0, 12, [a])
    assert kept == [] and dups == 1 and value is None


def test_replay_from_the_table_makes_identical_decisions() -> None:
    clock = [1000.0]
    first = Deduper(3600, clock=lambda: clock[0])
    first.load(3, [])
    a, b, c = _events(3)
    table: dict[bytes, bytes] = {}
    decisions = []
    for offset, message in [(5, [a, b, b]), (6, [b, c]), (7, [c, a])]:
        kept, dups, value = first.admit(3, offset, message)
        decisions.append((kept, dups))
        if value is not None:
            table[table_key(3, offset)] = value
    # a crash: a new worker rebuilds the index from the changelogged table and replays
    replay = Deduper(3600, clock=lambda: clock[0])
    replay.load(3, [*table.items(), (table_key(4, 1), b"ignored partition")])
    again = [replay.admit(3, o, m)[:2] for o, m in [(5, [a, b, b]), (6, [b, c]), (7, [c, a])]]
    assert again == decisions
    assert replay.size() == 3


def test_expiry_forgets_old_messages_and_reports_tombstones() -> None:
    clock = [0.0]
    dedupe = Deduper(60, clock=lambda: clock[0])
    dedupe.load(1, [])
    a, b = _events(2)
    dedupe.admit(1, 1, [a])
    clock[0] = 30.0
    dedupe.admit(1, 2, [b])
    clock[0] = 61.0
    assert list(dedupe.expire()) == [(1, 1)]
    assert dedupe.admit(1, 3, [a])[0] == [a], "forgotten after the window"
    assert dedupe.admit(1, 4, [b])[1] == 1, "still remembered inside the window"
    dedupe.drop(1)
    assert not dedupe.is_loaded(1) and dedupe.size() == 0


def test_table_keys_round_trip() -> None:
    assert parse_key(table_key(12, 345678)) == (12, 345678)
