"""Find calls partitions that stopped delivering although the broker holds more messages.

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

from collections.abc import Mapping


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
