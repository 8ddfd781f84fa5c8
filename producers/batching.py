"""Group call events into small per-partition batches, one Kafka message each.

Faust pays a fixed cost per Kafka message (DESIGN.md: ~13k msgs/s per worker), so a
message carries a JSON array of call events. A batch only ever holds events bound for one
partition, chosen from each event's key with Kafka's default partitioner (murmur2), so one
tenant's conversation stays on one partition, in order, exactly as if every event had been
sent on its own with its key. The message key is the first event's key: it hashes to the
same partition, so anything that re-partitions by message key agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=65_536)  # murmur2 is pure Python; keys (tenant:conversation) repeat a lot
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class Batch:
    """Call events for one partition, already serialised."""

    partition: int
    key: bytes
    values: list[bytes] = field(default_factory=list)
    size: int = 2  # the brackets
    started: float = 0.0  # monotonic time of the first event (for linger)

    def add(self, value: bytes) -> None:
        self.size += len(value) + (1 if self.values else 0)
        self.values.append(value)

    def fits(self, value: bytes, max_events: int, max_bytes: int) -> bool:
        return not self.values or (
            len(self.values) < max_events and self.size + len(value) + 1 <= max_bytes
        )

    def encode(self) -> bytes:
        """The message value: the same bytes as ``contract.encode_calls``."""
        return b"[" + b",".join(self.values) + b"]"

    def __len__(self) -> int:
        return len(self.values)


def batch_calls(
    items: Iterable[tuple[bytes, bytes]],
    partitions: int,
    *,
    max_events: int,
    max_bytes: int,
) -> Iterator[Batch]:
    """Batch ``(key, value)`` pairs per partition (used by replay; keeps per-key order)."""
    open_batches: dict[int, Batch] = {}
    for key, value in items:
        part = partition_for(key, partitions)
        batch = open_batches.get(part)
        if batch is not None and not batch.fits(value, max_events, max_bytes):
            yield batch
            batch = None
        if batch is None:
            batch = open_batches[part] = Batch(part, key)
        batch.add(value)
    yield from open_batches.values()
