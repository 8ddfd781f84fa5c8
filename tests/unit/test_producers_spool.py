"""The spool keeps records across restarts, survives torn writes, and never grows unbounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.spool import KIND_CALL, KIND_RENAME, Record, Spool, SpoolLockedError, read_records


def records(n: int, kind: int = KIND_CALL) -> list[tuple[int, bytes, bytes]]:
    return [(kind, f"t:c{i % 3}".encode(), f'{{"i":{i}}}'.encode()) for i in range(n)]


def all_records(spool: Spool) -> list[Record]:
    return [r for seg in spool.sealed_segments() for r in read_records(seg)]


def test_append_then_replay_in_order_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    assert not spool
    assert spool.append(records(5)) == 5
    assert spool.append(records(2, KIND_RENAME)) == 2
    assert spool.size > 0
    spool.close()

    again = Spool(tmp_path)
    again.open()
    got = all_records(again)
    assert [r.value for r in got[:5]] == [v for _, _, v in records(5)]
    assert [r.kind for r in got] == [KIND_CALL] * 5 + [KIND_RENAME] * 2
    for segment in again.sealed_segments():
        again.remove(segment)
    assert not again and again.size == 0
    assert again.append(records(1)) == 1  # new segment after the old ones
    again.close()


def test_a_torn_tail_is_skipped_not_published(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(records(3))
    spool.close()
    (segment,) = spool.sealed_segments()
    data = segment.read_bytes()
    segment.write_bytes(data[:-4])  # killed mid-write
    assert [r.value for r in read_records(segment)] == [v for _, _, v in records(2)]


def test_a_corrupt_record_stops_the_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(records(3))
    spool.close()
    (segment,) = spool.sealed_segments()
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # flip bits in the last value: CRC mismatch
    segment.write_bytes(bytes(data))
    assert len(list(read_records(segment))) == 2


def test_one_process_per_spool_folder(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(SpoolLockedError, match="SPOOL_NAME"):
        Spool(tmp_path).open()
    first.close()
    second = Spool(tmp_path)
    second.open()
    second.close()


def test_the_size_cap_drops_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=200)
    spool.open()
    kept = spool.append(records(50))
    assert 0 < kept < 50
    assert spool.dropped == 50 - kept
    assert spool.size <= 200
    spool.close()


def test_segments_rotate_and_seal(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100, fsync=True)
    spool.open()
    for _ in range(5):
        spool.append(records(3))
    # 72 bytes per append: a segment seals every second append; the active one is not offered
    assert len(spool.sealed_segments()) == 2
    spool.seal()
    assert len(spool.sealed_segments()) == 3
    assert sum(1 for _ in all_records(spool)) == 15
    spool.close()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from([KIND_CALL, KIND_RENAME]), st.binary(max_size=300), st.binary()),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=60),
)
def test_any_records_round_trip_and_any_truncation_loses_only_the_tail(
    tmp_path: Path, items: list[tuple[int, bytes, bytes]], cut: int
) -> None:
    folder = tmp_path / f"s{abs(hash((tuple(items), cut)))}"
    spool = Spool(folder, segment_bytes=1 << 30)
    spool.open()
    spool.append(items)
    spool.close()
    assert [(r.kind, r.key, r.value) for r in all_records(spool)] == items
    for segment in spool.sealed_segments():
        data = segment.read_bytes()
        segment.write_bytes(data[: max(0, len(data) - cut)])
    survivors = [(r.kind, r.key, r.value) for r in all_records(spool)]
    assert survivors == items[: len(survivors)]
