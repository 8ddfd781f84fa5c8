"""The settled-hours cache and the pure pieces around it: the split of a window into settled
and recent parts, the LRU with versions, and the top list merged from a cached ranking."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from query_api.cache import SettledCache, SharedReads, Version
from query_api.repository import SOURCES, Ranking, _merge
from query_api.window import HOUR, QUARTER, split_settled

SETTLED = Version(("v1",), settled=True)


def test_split_keeps_whole_grains_before_the_boundary_and_queries_the_rest() -> None:
    start, end = 7 * HOUR + 123, 30 * HOUR + 45_000
    settled, recent = split_settled([(start, end)], boundary_ms=29 * HOUR, grain=QUARTER)
    assert settled == [(7 * HOUR + QUARTER, 29 * HOUR)]
    assert recent == [(start, 7 * HOUR + QUARTER), (29 * HOUR, end)]


def test_split_leaves_short_or_recent_ranges_whole_and_keeps_buckets_apart() -> None:
    assert split_settled([(5, QUARTER + 5)], HOUR * 10, QUARTER) == ([], [(5, QUARTER + 5)])
    assert split_settled([(0, 2 * HOUR)], HOUR, HOUR) == ([(0, HOUR)], [(HOUR, 2 * HOUR)])
    assert split_settled([(3 * HOUR, 4 * HOUR)], 2 * HOUR, HOUR) == ([], [(3 * HOUR, 4 * HOUR)])
    buckets = [(0, HOUR), (HOUR, 2 * HOUR)]  # two buckets stay two pieces (rows keyed by t)
    assert split_settled(buckets, 5 * HOUR, QUARTER) == (buckets, [])


@given(
    ranges=st.lists(st.tuples(st.integers(0, 50 * HOUR), st.integers(1, 9 * HOUR)), max_size=6),
    boundary=st.integers(0, 60 * HOUR),
    grain=st.sampled_from([QUARTER, HOUR]),
)
def test_split_covers_every_range_exactly_once(
    ranges: list[tuple[int, int]], boundary: int, grain: int
) -> None:
    disjoint: list[tuple[int, int]] = []
    for a, b in sorted({(a, a + n) for a, n in ranges}):
        if not disjoint or a >= disjoint[-1][1]:
            disjoint.append((a, b))
    settled, recent = split_settled(disjoint, boundary, grain)
    for a, b in settled:
        assert a % grain == 0 and b % grain == 0 and b <= max(boundary // grain * grain, 0)
    pieces = sorted(settled + recent)
    assert sum(b - a for a, b in pieces) == sum(b - a for a, b in disjoint)
    assert all(pieces[i][1] <= pieces[i + 1][0] for i in range(len(pieces) - 1))


def test_cache_serves_only_the_same_version_and_stores_only_settled_ones() -> None:
    cache = SettledCache(max_rows=10)
    cache.put("k", SETTLED, ["rows"], rows=1)
    assert cache.get("k", SETTLED) == ["rows"]
    assert cache.get("k", Version(("v2",), settled=True)) is None  # a late event since
    cache.put("young", Version(("v3",), settled=False), ["rows"], rows=1)
    assert cache.get("young", Version(("v3",), settled=False)) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_cache_evicts_least_recently_used_rows_beyond_its_size() -> None:
    cache = SettledCache(max_rows=10)
    cache.put("a", SETTLED, "A", rows=4)
    cache.put("b", SETTLED, "B", rows=4)
    assert cache.get("a", SETTLED) == "A"  # a is now the most recent
    cache.put("c", SETTLED, "C", rows=4)
    assert cache.get("b", SETTLED) is None and cache.get("a", SETTLED) == "A"
    cache.put("huge", SETTLED, "H", rows=11)  # larger than the whole cache: not kept
    assert cache.get("huge", SETTLED) is None and cache.rows == 8
    assert not SettledCache(0).enabled


def test_merge_sums_metrics_per_key() -> None:
    cold = [("chat", 2, Decimal("0.5")), ("agent", 1, Decimal("0.25"))]
    live = [("chat", 1, Decimal("0.125")), ("memory", 3, Decimal(0))]
    merged = {row[0]: tuple(row) for row in _merge([cold, live], 1)}
    assert merged == {
        "chat": ("chat", 3, Decimal("0.625")),
        "agent": ("agent", 1, Decimal("0.25")),
        "memory": ("memory", 3, Decimal(0)),
    }
    assert _merge([[], cold], 1) == cold and _merge([[], []], 1) == []


def _row(source: str, ident: str, cost: int, tokens: int) -> tuple[Any, ...]:
    # (source, source_id, calls, unpriced, input, output, cache write, cache read, cost)
    return (source, ident, 1, 0, tokens, 0, 0, 0, Decimal(cost).scaleb(-3))


entity = st.tuples(st.sampled_from(SOURCES), st.sampled_from([f"e{i}" for i in range(12)]))
rows = st.dictionaries(entity, st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=12)


@given(cold=rows, live=rows, limit=st.integers(1, 15), by=st.sampled_from(["cost", "tokens"]))
def test_ranking_top_equals_sorting_everything(
    cold: dict[tuple[str, str], tuple[int, int]],
    live: dict[tuple[str, str], tuple[int, int]],
    limit: int,
    by: str,
) -> None:
    """The cached ranking plus the recent rows gives the list a full sort would (ties by
    source in enum order, then id, as ClickHouse orders them)."""
    cold_rows = [_row(s, i, c, t) for (s, i), (c, t) in cold.items()]
    live_rows = [_row(s, i, c, t) for (s, i), (c, t) in live.items()]
    everything = _merge([cold_rows, live_rows], 2)
    rank = {source: n for n, source in enumerate(SOURCES)}
    metric = 8 if by == "cost" else 4

    def clickhouse_order(row: Any) -> tuple[Any, ...]:
        return (-row[metric], rank[row[0]], row[1])

    want = sorted(everything, key=clickhouse_order)[:limit]
    ranking = Ranking.of(sorted(cold_rows, key=clickhouse_order), by)  # type: ignore[arg-type]
    got = ranking.top(live_rows, limit)
    assert [tuple(r) for r in got] == [tuple(r) for r in want]


def test_a_read_is_shared_only_with_requests_that_arrived_before_it_was_sent() -> None:
    reads = SharedReads()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> str:
        calls.append("read")
        started.set()
        release.wait(5)
        return f"version {len(calls)}"

    early = time.monotonic()  # this request came in before the first read was sent
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(reads.read, "k", time.monotonic(), slow)
        assert started.wait(5)
        joined = pool.submit(reads.read, "k", early, slow)
        # Release the first read only once the second request has chosen: joined it (shared)
        # or sent a read of its own (a second call). Released earlier, the first read could
        # end before the second request arrives, which then rightly reads again.
        deadline = time.monotonic() + 5
        while reads.shared == 0 and len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        assert first.result() == joined.result() == "version 1"
    late = reads.read("k", time.monotonic(), slow)  # came in after: a read of its own
    assert late == "version 2" and calls == ["read", "read"] and reads.shared == 1
