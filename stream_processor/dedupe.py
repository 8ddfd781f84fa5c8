"""Drop repeated ``event_id``s within a partition, with state that ClickHouse restores.

In memory, each partition has an index from event id to the offset of the message that
first carried it. ClickHouse is the state of record: when a worker takes a partition, the
index starts from the ids ClickHouse already holds for it within the window
(``processor_seen_ids``, fed by a materialized view on ``usage_events``), all marked
:data:`WRITTEN`. Nothing else has to survive a restart: reading starts at the committed
offset, and every later message is decided again as it was the first time.

Replays must make the same decisions, or a re-formed batch would differ from the one
ClickHouse holds: an id whose first message *is* the message being processed again is
accepted again (ClickHouse drops the repeated batch by its token); an id first seen in
another message, or already written, is a duplicate. A row written by a batch whose offset
was not committed yet is a duplicate on replay as well: ClickHouse has it, so leaving it
out of the re-formed batch is right whether or not that batch's insert is dropped by token.
Duplicates are found within a partition: producers key events by tenant and conversation
or agent, so a producer's retries land in one partition.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from producers.contract import CallEvent

WRITTEN = -1  # first offset of an id ClickHouse held when the partition was taken


class Deduper:
    """Per-partition id index, started from ClickHouse on every assignment."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self._index: dict[int, dict[int, int]] = {}
        # per partition, in first-seen order: (first seen, offset, ids first seen there)
        self._expiry: dict[int, deque[tuple[float, int, list[int]]]] = {}

    def is_loaded(self, partition: int) -> bool:
        return partition in self._index

    def size(self) -> int:
        return sum(len(index) for index in self._index.values())

    def load(self, partition: int, written: Iterable[tuple[int, float]]) -> int:
        """Start ``partition`` from the ids ClickHouse holds: ``(id as int, written at)``."""
        index: dict[int, int] = {}
        by_second: dict[int, list[int]] = {}
        for event_id, written_at in written:
            index[event_id] = WRITTEN
            by_second.setdefault(int(written_at), []).append(event_id)
        self._index[partition] = index
        self._expiry[partition] = deque(
            (float(second), WRITTEN, ids) for second, ids in sorted(by_second.items())
        )
        return len(index)

    def drop(self, partition: int) -> None:
        """Forget a revoked partition (its next owner starts it from ClickHouse)."""
        self._index.pop(partition, None)
        self._expiry.pop(partition, None)

    def clear(self) -> None:
        self._index.clear()
        self._expiry.clear()

    def admit(
        self, partition: int, offset: int, events: list[CallEvent]
    ) -> tuple[list[CallEvent], int]:
        """Events of message ``offset`` to keep, and how many were duplicates."""
        index = self._index[partition]
        kept: list[CallEvent] = []
        new: list[int] = []
        duplicates = 0
        seen: set[int] | None = set() if len(events) > 1 else None
        for event in events:
            key = event.event_id.int
            first = index.get(key)
            if first is None:
                index[key] = offset
                new.append(key)
            elif first != offset or (seen is not None and key in seen):
                duplicates += 1
                continue
            if seen is not None:
                seen.add(key)
            kept.append(event)
        if new:
            self._expiry[partition].append((self.clock(), offset, new))
        return kept, duplicates

    def expire(self) -> int:
        """Forget ids first seen longer ago than the window; returns how many."""
        horizon = self.clock() - self.window_s
        forgotten = 0
        for partition, expiry in self._expiry.items():
            index = self._index[partition]
            while expiry and expiry[0][0] < horizon:
                _, offset, ids = expiry.popleft()
                for key in ids:
                    if index.get(key) == offset:
                        del index[key]
                        forgotten += 1
        return forgotten
