"""Drop repeated ``event_id``s, with state that survives restarts and replays.

State is a changelogged Faust table keyed by *message* (``b"partition:offset"``), whose
value is the ids first accepted from that message (16 bytes each) after an 8-byte
first-seen timestamp: one changelog record per Kafka message, not per event. In memory an
index maps each id to the offset of the message that first carried it.

Replays must make the same decisions, or a re-formed batch would differ from the one
ClickHouse already holds: an id whose first message *is* the message being processed again
is accepted again (ClickHouse drops the repeated batch by its token); an id first seen in
another message is a duplicate. Duplicates are found within a partition; producers key
events by tenant and conversation/agent, so a producer's retries land in one partition.

Memory: about 100 bytes per remembered event (index entry plus 16 bytes in the table),
so ``processor_dedupe_window_seconds`` times the event rate bounds it; entries older than
the window are deleted, with tombstones in the changelog.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from producers.contract import UsageEvent

_TS = struct.Struct("<d")


def table_key(partition: int, offset: int) -> bytes:
    return b"%d:%d" % (partition, offset)


def parse_key(key: bytes) -> tuple[int, int]:
    partition, _, offset = key.partition(b":")
    return int(partition), int(offset)


class Deduper:
    """Per-partition id index rebuilt from the table after every assignment."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self._index: dict[int, dict[int, int]] = {}
        self._expiry: dict[int, deque[tuple[float, int, bytes]]] = {}

    def is_loaded(self, partition: int) -> bool:
        return partition in self._index

    def partitions(self) -> list[int]:
        return list(self._index)

    def size(self) -> int:
        return sum(len(index) for index in self._index.values())

    def load(self, partition: int, entries: Iterable[tuple[bytes, bytes]]) -> int:
        """Rebuild the index of ``partition`` from its table entries (key, value)."""
        index: dict[int, int] = {}
        rows = []
        for key, value in entries:
            p, offset = parse_key(key)
            if p == partition and value:
                rows.append((offset, value))
        rows.sort()
        expiry: deque[tuple[float, int, bytes]] = deque()
        for offset, value in rows:
            for start in range(_TS.size, len(value), 16):
                index.setdefault(int.from_bytes(value[start : start + 16], "big"), offset)
            expiry.append((_TS.unpack_from(value)[0], offset, value))
        self._index[partition] = index
        self._expiry[partition] = expiry
        return len(index)

    def drop(self, partition: int) -> None:
        """Forget a revoked partition (its new owner rebuilds it from the changelog)."""
        self._index.pop(partition, None)
        self._expiry.pop(partition, None)

    def admit(
        self, partition: int, offset: int, events: list[UsageEvent]
    ) -> tuple[list[UsageEvent], int, bytes | None]:
        """Events of message ``offset`` to keep, the duplicate count, and the table value
        to store for this message (None when it brought no new id)."""
        index = self._index[partition]
        kept: list[UsageEvent] = []
        new = False
        duplicates = 0
        seen: set[int] | None = set() if len(events) > 1 else None
        for event in events:
            key = event.event_id.int
            first = index.get(key)
            if first is None:
                index[key] = offset
                new = True
            elif first != offset or (seen is not None and key in seen):
                duplicates += 1
                continue
            if seen is not None:
                seen.add(key)
            kept.append(event)
        if not new:
            return kept, duplicates, None
        value = _TS.pack(self.clock()) + b"".join(e.event_id.bytes for e in kept)
        self._expiry[partition].append((_TS.unpack_from(value)[0], offset, value))
        return kept, duplicates, value

    def expire(self) -> Iterator[tuple[int, int]]:
        """Forget entries older than the window; yields (partition, offset) to tombstone."""
        horizon = self.clock() - self.window_s
        for partition, expiry in self._expiry.items():
            index = self._index[partition]
            while expiry and expiry[0][0] < horizon:
                _, offset, value = expiry.popleft()
                for start in range(_TS.size, len(value), 16):
                    key = int.from_bytes(value[start : start + 16], "big")
                    if index.get(key) == offset:
                        del index[key]
                yield partition, offset
