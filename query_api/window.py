"""Window math as pure functions on epoch milliseconds, so exactness is unit-testable.

Three steps turn a request into SQL that reads rollups only where they are exact:

1. :func:`resolve_window` turns ``period`` or ``from``/``to`` into a half-open UTC window
   ``[start, end)`` in whole milliseconds (the precision of ``usage_events.occurred_at``).
2. :func:`local_buckets` cuts the window into the viewer's local hours or days. A bucket is
   the *set of instants* whose local date (and hour, and UTC offset for hours) is the same,
   so 23- and 25-hour DST days, repeated fall-back hours and zones that fall back across
   midnight (a local date seen twice) are all exact.
3. :func:`decompose` splits every range into whole UTC days / hours / 15-minute slots that a
   rollup can answer and partial edges that only the raw table can. Every zone offset in
   use today is a multiple of 15 minutes, so only the window's own edges normally hit raw.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, available_timezones

SECOND = 1_000
MINUTE = 60 * SECOND
QUARTER = 15 * MINUTE
HOUR = 60 * MINUTE
DAY = 24 * HOUR
RAW = 0  # the "unit" of pieces only the raw table can answer

PERIODS: dict[str, int] = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rollup DateTime columns end in 2106; keep windows well inside what every table can hold.
MAX_MS = int((datetime(2100, 1, 1, tzinfo=UTC) - EPOCH).total_seconds()) * SECOND

Granularity = Literal["hour", "day"]
Range = tuple[int, int]


class WindowError(ValueError):
    """A request's window, zone or granularity is invalid; the message is for the user."""


@dataclass(frozen=True)
class Window:
    """Half-open UTC window ``[start_ms, end_ms)``."""

    start_ms: int
    end_ms: int

    @property
    def start(self) -> datetime:
        return from_ms(self.start_ms)

    @property
    def end(self) -> datetime:
        return from_ms(self.end_ms)


def to_ms(value: datetime) -> int:
    """Epoch milliseconds, floored; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int, tz: ZoneInfo | None = None) -> datetime:
    """Aware datetime for epoch milliseconds (UTC unless ``tz``)."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.astimezone(tz) if tz is not None else moment


def resolve_window(
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    *,
    now_ms: int,
    max_days: int,
) -> Window:
    """The request's window: a rolling ``period`` ending now, or explicit ``from``/``to``.

    Without any of them the window is the last 24 hours (the page's default); ``from``
    without ``to`` runs until now.
    """
    if period is not None and (start is not None or end is not None):
        raise WindowError("give either period or from/to, not both")
    if start is None:
        if end is not None:
            raise WindowError("to needs from")
        period = period or "24h"
        if period not in PERIODS:
            raise WindowError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")
        return Window(now_ms - PERIODS[period], now_ms)
    start_ms = to_ms(start)
    end_ms = to_ms(end) if end is not None else now_ms
    if start_ms >= end_ms:
        raise WindowError("from must be before to")
    if start_ms < 0 or end_ms > MAX_MS:
        raise WindowError("from/to must lie between 1970-01-01 and 2100-01-01")
    if end_ms - start_ms > max_days * DAY:
        raise WindowError(f"the window may span at most {max_days} days")
    return Window(start_ms, end_ms)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones() | {"UTC"})


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; only names in the tz database (no paths, no abbreviations)."""
    if name not in _zone_names():
        raise WindowError(f"unknown time zone {name!r}; use an IANA name like Europe/Paris")
    return ZoneInfo(name)


@dataclass(frozen=True)
class Bucket:
    """One local hour or day: its local start and the UTC ranges (inside the window) it owns."""

    start: datetime
    ranges: tuple[Range, ...]


class _LocalClock:
    """Local bucket keys of instants in one zone, and where the next wall-clock bucket starts."""

    def __init__(self, tz: ZoneInfo, granularity: Granularity) -> None:
        self.tz = tz
        self.hourly = granularity == "hour"

    def key(self, ms: int) -> Hashable:
        local = from_ms(ms, self.tz)
        return (local.date(), local.hour, local.utcoffset()) if self.hourly else local.date()

    def next_wall_start(self, ms: int) -> tuple[int, Hashable]:
        """Where the next local hour/day starts if the offset stays as it is at ``ms``,
        and the signature (key, offset) that instant minus 1 ms must have for that to hold."""
        local = from_ms(ms, self.tz)
        into = (local.minute * 60 + local.second) * SECOND + local.microsecond // 1000
        if not self.hourly:
            into += local.hour * HOUR
        return ms - into + (HOUR if self.hourly else DAY), (self.key(ms), local.utcoffset())

    def signature(self, ms: int) -> Hashable:
        return self.key(ms), from_ms(ms, self.tz).utcoffset()


def _segments(start: int, end: int, clock: _LocalClock) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of constant key covering ``[start, end)``, exact to the ms.

    Jumps to the next wall-clock hour or day when the offset has not changed on the way;
    otherwise scans the 15-minute grid (where every modern boundary lies) and bisects a
    changed grid step down to the millisecond, so historical odd offsets are exact too.
    """
    key = clock.key
    runs: list[tuple[int, int]] = []
    run_start, t, current = start, start, key(start)
    while t < end:
        wall, signature = clock.next_wall_start(t)
        if t < wall - 1 < end and clock.signature(wall - 1) == signature:
            t = wall - 1  # same key and offset up to here: nothing changed in between
        step = min((t // QUARTER + 1) * QUARTER, end)
        if key(step - 1) != current:  # the key changed strictly inside (t, step)
            lo, hi = t, step - 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if key(mid) == current:
                    lo = mid
                else:
                    hi = mid
            step = hi
        elif step < end and key(step) == current:
            t = step
            continue
        if step >= end:
            break
        runs.append((run_start, step))
        run_start, t, current = step, step, key(step)
    runs.append((run_start, end))
    return runs


def local_buckets(window: Window, tz: ZoneInfo, granularity: Granularity) -> list[Bucket]:
    """The viewer's local hours or days that meet ``window``, in order, without gaps.

    Computed for the window widened to whole 15-minute slots (kept for reuse: a rolling
    window's widened form stays the same for up to 15 minutes), then cut to the window.
    """
    lo = window.start_ms // QUARTER * QUARTER
    hi = -(-window.end_ms // QUARTER) * QUARTER
    buckets = []
    for bucket in _slot_buckets(lo, hi, tz.key, granularity):
        ranges = tuple(
            (max(a, window.start_ms), min(b, window.end_ms))
            for a, b in bucket.ranges
            if max(a, window.start_ms) < min(b, window.end_ms)
        )
        if ranges:
            buckets.append(Bucket(bucket.start, ranges))
    return buckets


@lru_cache(maxsize=256)
def _slot_buckets(
    start_ms: int, end_ms: int, zone: str, granularity: Granularity
) -> tuple[Bucket, ...]:
    """:func:`local_buckets` of ``[start_ms, end_ms)`` (whole 15-minute slots)."""
    tz = ZoneInfo(zone)
    clock = _LocalClock(tz, granularity)
    lookback = 2 * DAY if granularity == "day" else 2 * HOUR  # to find the first one's start
    scan_from = (start_ms - lookback) // QUARTER * QUARTER
    buckets: dict[Hashable, tuple[int, list[Range]]] = {}
    for a, b in _segments(scan_from, end_ms, clock):
        lo, hi = max(a, start_ms), min(b, end_ms)
        if lo >= hi:
            continue
        ranges = buckets.setdefault(clock.key(a), (a, []))[1]
        ranges.append((lo, hi))
    return tuple(Bucket(from_ms(first, tz), tuple(ranges)) for first, ranges in buckets.values())


@dataclass(frozen=True)
class Piece:
    """A range answered by one rollup grain (``unit`` ms, aligned) or by raw (``unit`` 0)."""

    unit: int
    start: int
    end: int


def decompose(start: int, end: int, units: Sequence[int]) -> list[Piece]:
    """Split ``[start, end)`` greedily into aligned pieces of ``units`` (largest first).

    Each unit must divide the one before it; what no unit covers is a raw piece.
    """
    if start >= end:
        return []
    if not units:
        return [Piece(RAW, start, end)]
    unit, rest = units[0], units[1:]
    lo, hi = -(-start // unit) * unit, end // unit * unit
    if lo >= hi:
        return decompose(start, end, rest)
    return [*decompose(start, lo, rest), Piece(unit, lo, hi), *decompose(hi, end, rest)]


def plan(ranges: Sequence[Range], units: Sequence[int]) -> dict[int, list[Range]]:
    """Per unit (``RAW`` included), the merged ranges to read; ranges must not overlap."""
    pieces = sorted((p for a, b in ranges for p in decompose(a, b, units)), key=lambda p: p.start)
    merged: dict[int, list[Range]] = {}
    for piece in pieces:
        spans = merged.setdefault(piece.unit, [])
        if spans and spans[-1][1] == piece.start:
            spans[-1] = (spans[-1][0], piece.end)
        else:
            spans.append((piece.start, piece.end))
    return merged


def raw_resolution(buckets: Sequence[Bucket], window: Window) -> int:
    """The coarsest grain (15 min, 1 min, 1 s, 1 ms) that no interior boundary cuts.

    Raw rows are grouped by this grain; a group then lies inside one bucket.
    """
    interior = {
        edge
        for bucket in buckets
        for rng in bucket.ranges
        for edge in rng
        if window.start_ms < edge < window.end_ms
    }
    for grain in (QUARTER, MINUTE, SECOND):
        if all(edge % grain == 0 for edge in interior):
            return grain
    return 1


class BucketIndex:
    """Maps a time-grain start (epoch ms) to the bucket that owns it, by bisection."""

    def __init__(self, buckets: Sequence[Bucket], window: Window) -> None:
        spans = sorted((a, b, i) for i, bucket in enumerate(buckets) for a, b in bucket.ranges)
        self._starts = [a for a, _, _ in spans]
        self._spans = spans
        self._window_start = window.start_ms

    def find(self, grain_start_ms: int) -> int:
        """Bucket of a grain that starts at ``grain_start_ms`` (clamped into the window)."""
        t = max(grain_start_ms, self._window_start)
        pos = bisect.bisect_right(self._starts, t) - 1
        a, b, index = self._spans[pos]
        if not a <= t < b:
            raise LookupError(f"{t} is in no bucket")
        return index


def split_settled(
    ranges: Sequence[Range], boundary_ms: int, grain: int
) -> tuple[list[Range], list[Range]]:
    """Split ``ranges`` into (settled, recent): whole ``grain`` pieces before ``boundary_ms``
    that a cache may keep, and the rest (unaligned edges, everything after the boundary).

    Each range keeps its own settled piece (a bucket stays a bucket: rows keyed by grain
    start still fall into the bucket that owns them).
    """
    settled: list[Range] = []
    recent: list[Range] = []
    for a, b in ranges:
        lo = -(-a // grain) * grain
        hi = min(b, boundary_ms) // grain * grain
        if lo >= hi:
            recent.append((a, b))
            continue
        settled.append((lo, hi))
        recent.extend(piece for piece in ((a, lo), (hi, b)) if piece[0] < piece[1])
    return settled, recent
