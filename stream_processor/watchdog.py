"""Find calls partitions that stopped delivering although the broker holds more messages,
and messages that arrive past a hole.

Faust (0.15.3) resumes fetching before its post-recovery seek, and after a rebalance or a
broker outage aiokafka was seen to stop returning records for a partition. The consumer's
cached high watermark only moves with fetch responses, so a partition that is no longer
fetched looks up to date by that measure: the watchdog compares the sink's next offset with
the *broker's* end offset instead, and calls a partition stalled only when it has made no
progress for ``ticks`` checks in a row while messages wait. The cure (a seek to the next
offset the sink expects) is harmless on a false alarm: a message delivered twice is skipped
by offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum


class StallDetector:
    """Pure decision logic; the processor feeds it one observation per tick."""

    def __init__(self, ticks: int = 2) -> None:
        self.ticks = ticks
        self._seen: dict[int, tuple[int, int]] = {}  # partition -> (next offset, ticks)

    def observe(
        self, next_offsets: Mapping[int, int], end_offsets: Mapping[int, int]
    ) -> dict[int, tuple[int, int]]:
        """Partitions to re-seek now, as ``{partition: (next offset, end offset)}``.

        ``next_offsets``: the offset each open partition expects next; ``end_offsets``: the
        broker's log end offsets (partitions it did not answer for are left out).
        """
        stalled: dict[int, tuple[int, int]] = {}
        seen: dict[int, tuple[int, int]] = {}
        for partition, next_offset in next_offsets.items():
            end = end_offsets.get(partition)
            if end is None or end <= next_offset:
                continue  # nothing waits (or unknown): not stalled
            previous, ticks = self._seen.get(partition, (-1, 0))
            ticks = ticks + 1 if previous == next_offset else 1
            if ticks >= self.ticks:
                stalled[partition] = (next_offset, end)
                ticks = 0  # give the seek time to work before the next alarm
            seen[partition] = (next_offset, ticks)
        self._seen = seen
        return stalled

    def reset(self) -> None:
        """Forget every observation (an agent busy with ClickHouse is not a stall)."""
        self._seen = {}


class Verdict(Enum):
    SEEK = "seek"  # re-fetch from the expected offset; drop this message (it comes again)
    SKIP = "skip"  # a re-fetch is under way; drop this message (it comes again)
    ACCEPT = "accept"  # re-fetched and still missing: a real gap in the log


@dataclass
class _Hole:
    expected: int
    seeks: int
    sought_at: float


class HoleGuard:
    """Judge a message that arrives past the offset its partition expects next.

    Faust and aiokafka were seen to hand the agent a partition's messages with a hole in
    them (offset 11, then 16) around a restart; Faust then counted the hole as processed
    and committed past it, so those calls were never written. Offsets of the calls topic
    are contiguous unless the log really lacks them (transaction markers, compaction), so a
    hole is first re-fetched: ``retries`` seeks, ``retry_after_s`` apart, before it is
    accepted as a real gap.
    """

    def __init__(
        self,
        retries: int = 10,
        retry_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retries = retries
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._holes: dict[int, _Hole] = {}

    def check(self, partition: int, expected: int, offset: int) -> Verdict:
        """``offset`` arrived although ``partition`` expects ``expected`` (< ``offset``)."""
        now = self.clock()
        hole = self._holes.get(partition)
        if hole is None or hole.expected != expected:
            self._holes[partition] = _Hole(expected, 1, now)
            return Verdict.SEEK
        if now - hole.sought_at < self.retry_after_s:
            return Verdict.SKIP
        if hole.seeks < self.retries:
            hole.seeks += 1
            hole.sought_at = now
            return Verdict.SEEK
        del self._holes[partition]
        return Verdict.ACCEPT

    def closed(self, partition: int) -> None:
        """The partition delivered the offset it expected: no hole (any more)."""
        self._holes.pop(partition, None)

    def reset(self) -> None:
        self._holes.clear()
