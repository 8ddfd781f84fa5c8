"""Window math of the query API: periods, local buckets in odd zones and on DST days,
and the split into rollup-sized pieces (pure functions, no ClickHouse)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_api.window import (
    DAY,
    HOUR,
    MINUTE,
    QUARTER,
    RAW,
    SECOND,
    BucketIndex,
    Piece,
    Window,
    WindowError,
    decompose,
    from_ms,
    local_buckets,
    parse_zone,
    plan,
    raw_resolution,
    resolve_window,
    to_ms,
)

NOW = to_ms(datetime(2026, 11, 25, 8, 30, 0, 123000, tzinfo=UTC))


def utc(*args: int) -> int:
    return to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def day_window(start: int, days: int = 1) -> Window:
    return Window(start, start + days * DAY)


class TestResolveWindow:
    def test_period_rolls_back_from_now(self) -> None:
        assert resolve_window("7d", None, None, now_ms=NOW, max_days=400) == Window(
            NOW - 7 * DAY, NOW
        )
        assert resolve_window(None, None, None, now_ms=NOW, max_days=400) == Window(NOW - DAY, NOW)

    def test_explicit_window_naive_is_utc_and_offsets_count(self) -> None:
        start = datetime(2026, 3, 1, 5, 30)
        end = datetime(2026, 3, 2, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
        window = resolve_window(None, start, end, now_ms=NOW, max_days=400)
        assert window == Window(utc(2026, 3, 1, 5, 30), utc(2026, 3, 1, 18, 30))

    def test_from_alone_runs_until_now_and_microseconds_floor(self) -> None:
        start = datetime(2026, 11, 20, 0, 0, 0, 999_999, tzinfo=UTC)
        window = resolve_window(None, start, None, now_ms=NOW, max_days=400)
        assert window == Window(utc(2026, 11, 20) + 999, NOW)

    @pytest.mark.parametrize(
        ("period", "start", "end", "message"),
        [
            ("1y", None, None, "unknown period"),
            ("24h", datetime(2026, 1, 1), None, "either"),
            (None, None, datetime(2026, 1, 1), "to needs from"),
            (None, datetime(2026, 1, 2), datetime(2026, 1, 1), "before"),
            (None, datetime(2026, 1, 1), datetime(2026, 1, 1), "before"),
            (None, datetime(2020, 1, 1), datetime(2026, 1, 1), "at most 400"),
            (None, datetime(1969, 12, 31), datetime(1970, 1, 2), "1970"),
        ],
    )
    def test_invalid(
        self, period: str | None, start: datetime | None, end: datetime | None, message: str
    ) -> None:
        with pytest.raises(WindowError, match=message):
            resolve_window(period, start, end, now_ms=NOW, max_days=400)


def test_parse_zone_accepts_iana_names_only() -> None:
    assert parse_zone("Asia/Kolkata").key == "Asia/Kolkata"
    assert parse_zone("UTC").key == "UTC"
    for bad in ("Mars/Base", "../../etc/passwd", "", "/etc/localtime", "IST"):
        with pytest.raises(WindowError, match="unknown time zone"):
            parse_zone(bad)


def _hours(ranges: tuple[tuple[int, int], ...]) -> float:
    return sum(b - a for a, b in ranges) / HOUR


@pytest.mark.parametrize(
    ("zone", "first_boundary"),
    [
        ("Asia/Kolkata", (2026, 3, 1, 18, 30)),  # +05:30
        ("Asia/Kathmandu", (2026, 3, 1, 18, 15)),  # +05:45
        ("Australia/Eucla", (2026, 3, 1, 15, 15)),  # +08:45
        ("America/St_Johns", (2026, 3, 1, 3, 30)),  # -03:30
        ("Pacific/Chatham", (2026, 3, 1, 10, 15)),  # +13:45 (DST)
    ],
)
def test_local_days_in_quarter_hour_zones(zone: str, first_boundary: tuple[int, ...]) -> None:
    buckets = local_buckets(day_window(utc(2026, 3, 1), 3), ZoneInfo(zone), "day")
    assert buckets[1].ranges[0][0] == utc(*first_boundary)
    assert all(b.start.hour == 0 and b.start.minute == 0 for b in buckets)
    assert [_hours(b.ranges) for b in buckets[1:-1]] == [24.0, 24.0]


def test_dst_days_have_23_and_25_hours() -> None:
    new_york = ZoneInfo("America/New_York")
    spring = local_buckets(Window(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)), new_york, "day")
    assert [(b.start.isoformat(), _hours(b.ranges)) for b in spring] == [
        ("2026-03-08T00:00:00-05:00", 23.0)
    ]
    fall = local_buckets(Window(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)), new_york, "day")
    assert [(b.start.isoformat(), _hours(b.ranges)) for b in fall] == [
        ("2026-11-01T00:00:00-04:00", 25.0)
    ]


def test_repeated_fall_back_hour_is_two_buckets() -> None:
    buckets = local_buckets(
        Window(utc(2026, 11, 1, 4), utc(2026, 11, 1, 8)), ZoneInfo("America/New_York"), "hour"
    )
    assert [b.start.isoformat() for b in buckets] == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]


def test_lord_howe_half_hour_dst_and_santiago_midnight_fall_back() -> None:
    # Lord Howe falls back 30 minutes at 02:00 +11 (2026-04-05): the 01:00 hour repeats
    # for half an hour at +10:30
    lord_howe = local_buckets(
        Window(utc(2026, 4, 4, 13), utc(2026, 4, 4, 17)), ZoneInfo("Australia/Lord_Howe"), "hour"
    )
    assert [(b.start.isoformat(), _hours(b.ranges)) for b in lord_howe] == [
        ("2026-04-05T00:00:00+11:00", 1.0),
        ("2026-04-05T01:00:00+11:00", 1.0),
        ("2026-04-05T01:30:00+10:30", 0.5),
        ("2026-04-05T02:00:00+10:30", 1.0),
        ("2026-04-05T03:00:00+10:30", 0.5),
    ]
    # Santiago falls back at 24:00 -03 to 23:00 -04: Saturday 2026-04-04 lasts 25 hours
    santiago = local_buckets(
        Window(utc(2026, 4, 4, 3), utc(2026, 4, 6, 4)), ZoneInfo("America/Santiago"), "day"
    )
    assert [(b.start.isoformat(), _hours(b.ranges)) for b in santiago] == [
        ("2026-04-04T00:00:00-03:00", 25.0),
        ("2026-04-05T00:00:00-04:00", 24.0),
    ]


def test_partial_first_bucket_keeps_its_local_start() -> None:
    window = Window(utc(2026, 3, 1, 10, 17) + 123, utc(2026, 3, 1, 12, 5))
    buckets = local_buckets(window, ZoneInfo("Asia/Kolkata"), "hour")
    assert buckets[0].start.isoformat() == "2026-03-01T15:00:00+05:30"
    assert buckets[0].ranges == ((window.start_ms, utc(2026, 3, 1, 10, 30)),)
    assert buckets[-1].ranges[-1][1] == window.end_ms


ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "America/St_Johns",
         "Australia/Lord_Howe", "America/Santiago", "Asia/Beirut", "Europe/London",
         "Pacific/Chatham", "Africa/Monrovia"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(utc(1970, 1, 1), utc(2030, 1, 1)),
    length=st.integers(1, 4 * DAY),
    zone=st.sampled_from(ZONES),
    granularity=st.sampled_from(["hour", "day"]),
)
def test_buckets_partition_the_window_by_local_key(
    start: int, length: int, zone: str, granularity: str
) -> None:
    tz = ZoneInfo(zone)
    window = Window(start, start + length)
    buckets = local_buckets(window, tz, granularity)  # type: ignore[arg-type]
    spans = sorted(r for b in buckets for r in b.ranges)
    assert spans[0][0] == window.start_ms and spans[-1][1] == window.end_ms
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))

    def key(ms: int) -> object:
        local = from_ms(ms, tz)
        return local.date() if granularity == "day" else (local.date(), local.hour,
                                                          local.utcoffset())  # fmt: skip

    keys = [key(b.ranges[0][0]) for b in buckets]
    assert len(set(keys)) == len(keys)
    for bucket, k in zip(buckets, keys, strict=True):
        assert key(to_ms(bucket.start)) == k
        for a, b in bucket.ranges:
            assert key(a) == k and key(b - 1) == k
    index = BucketIndex(buckets, window)
    grain = raw_resolution(buckets, window)
    for i, bucket in enumerate(buckets):
        for a, b in bucket.ranges:
            assert index.find(a) == i and index.find(b - 1) == i
            assert index.find(a // grain * grain) == i  # a raw group maps by its start
            assert index.find((b - 1) // grain * grain) == i


def test_raw_resolution_is_a_quarter_hour_in_modern_zones_and_finer_for_lmt() -> None:
    window = day_window(utc(2026, 3, 1) + 7, 3)
    assert raw_resolution(local_buckets(window, ZoneInfo("Australia/Eucla"), "hour"), window) == (
        QUARTER
    )
    old = day_window(utc(1971, 6, 1) + 7, 2)  # Monrovia was UTC-00:44:30 until 1972
    assert raw_resolution(local_buckets(old, ZoneInfo("Africa/Monrovia"), "day"), old) == SECOND
    assert MINUTE % SECOND == 0


def test_decompose_uses_the_largest_aligned_grain() -> None:
    start, end = utc(2026, 3, 1, 10, 7) + 5, utc(2026, 3, 4, 1, 50)
    pieces = decompose(start, end, [DAY, HOUR, QUARTER])
    assert pieces == [
        Piece(RAW, start, utc(2026, 3, 1, 10, 15)),
        Piece(QUARTER, utc(2026, 3, 1, 10, 15), utc(2026, 3, 1, 11)),
        Piece(HOUR, utc(2026, 3, 1, 11), utc(2026, 3, 2)),
        Piece(DAY, utc(2026, 3, 2), utc(2026, 3, 4)),
        Piece(HOUR, utc(2026, 3, 4), utc(2026, 3, 4, 1)),
        Piece(QUARTER, utc(2026, 3, 4, 1), utc(2026, 3, 4, 1, 45)),
        Piece(RAW, utc(2026, 3, 4, 1, 45), end),
    ]
    assert decompose(5, 10, [DAY]) == [Piece(RAW, 5, 10)]
    assert decompose(5, 5, [DAY]) == []


@given(
    start=st.integers(0, 10 * DAY),
    length=st.integers(0, 5 * DAY),
    units=st.sampled_from([[DAY, QUARTER], [DAY, HOUR], [HOUR], []]),
)
def test_decompose_covers_exactly_with_aligned_pieces(
    start: int, length: int, units: list[int]
) -> None:
    pieces = decompose(start, start + length, units)
    assert sum(p.end - p.start for p in pieces) == length
    assert all(pieces[i].end == pieces[i + 1].start for i in range(len(pieces) - 1))
    for piece in pieces:
        if piece.unit != RAW:
            assert piece.start % piece.unit == 0 and piece.end % piece.unit == 0
    if units:  # only the two partial edges are left to the raw table
        assert sum(p.end - p.start for p in pieces if p.unit == RAW) < 2 * units[-1]


def test_plan_merges_adjacent_ranges_per_grain() -> None:
    day = day_window(utc(2026, 3, 1, 10, 7), 2)
    buckets = local_buckets(day, ZoneInfo("Asia/Kolkata"), "hour")
    merged = plan([r for b in buckets for r in b.ranges], [DAY, QUARTER])
    assert merged[QUARTER] == [(utc(2026, 3, 1, 10, 15), utc(2026, 3, 3, 10))]
    assert merged[RAW] == [
        (day.start_ms, utc(2026, 3, 1, 10, 15)),
        (utc(2026, 3, 3, 10), day.end_ms),
    ]
    whole = plan([(day.start_ms, day.end_ms)], [DAY, QUARTER])
    assert whole[DAY] == [(utc(2026, 3, 2), utc(2026, 3, 3))]
