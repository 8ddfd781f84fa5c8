"""Batches follow Kafka's default partitioner and keep each key's order."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.batching import batch_calls, partition_for
from producers.contract import UsageEvent, decode_calls, encode_calls


def test_partition_matches_the_kafka_default_partitioner() -> None:
    parts = list(range(6))
    for i in range(500):
        key = f"tenant-{i % 7}:conv-{i}".encode()
        assert partition_for(key, 6) == DefaultPartitioner()(key, parts, parts)


def test_batches_respect_limits_and_keep_per_key_order() -> None:
    items = [
        (f"t:c{i % 10}".encode(), json.dumps({"k": i % 10, "i": i}).encode()) for i in range(1000)
    ]
    batches = list(batch_calls(items, 4, max_events=25, max_bytes=10_000))
    assert sum(len(b) for b in batches) == 1000
    assert all(len(b) <= 25 and len(b.encode()) <= 10_000 for b in batches)
    seen: dict[int, list[int]] = {}
    for batch in batches:
        for value in decode_calls(batch.encode()):
            assert partition_for(f"t:c{value['k']}".encode(), 4) == batch.partition
            seen.setdefault(value["k"], []).append(value["i"])
        assert partition_for(batch.key, 4) == batch.partition
    assert all(order == sorted(order) for order in seen.values())


def test_byte_limit_splits_batches() -> None:
    items = [(b"k", b'"' + b"x" * 98 + b'"') for _ in range(10)]
    batches = list(batch_calls(items, 1, max_events=100, max_bytes=350))
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_batch_bytes_equal_the_contract_encoding() -> None:
    now = datetime.now(UTC)
    events = [
        UsageEvent(tenant_id="t", occurred_at=now, source="chat", source_id="c", model="m")  # type: ignore[arg-type]
        for _ in range(3)
    ]
    (batch,) = batch_calls(
        [(e.partition_key, e.to_json()) for e in events], 3, max_events=10, max_bytes=100_000
    )
    assert batch.encode() == encode_calls(events)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"a:1", b"b:2", b"c:3", b"d:4", b"e:5"]), st.integers()),
        max_size=300,
    ),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=50),
)
def test_every_item_is_batched_once_on_its_partition_in_key_order(
    pairs: list[tuple[bytes, int]], partitions: int, max_events: int
) -> None:
    items = [(key, json.dumps([key.decode(), i, n]).encode()) for i, (key, n) in enumerate(pairs)]
    batches = list(batch_calls(items, partitions, max_events=max_events, max_bytes=1_000_000))
    seen = [tuple(v) for b in batches for v in decode_calls(b.encode())]
    assert sorted(seen) == sorted(tuple(json.loads(v)) for _, v in items)
    for batch in batches:
        assert 1 <= len(batch) <= max_events
        for key, *_ in decode_calls(batch.encode()):
            assert partition_for(key.encode(), partitions) == batch.partition
    for key in {k for k, _ in pairs}:
        order = [i for k, i, _ in seen if k == key.decode()]
        assert order == sorted(order)
