"""The pure parts of alerting: the spike detector, budget periods and crossings, webhook
signatures."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processor.alerts.budgets import Period, crossed, period_window
from stream_processor.alerts.spikes import HOUR, HourUsage, SpikeRule, judge, spikes
from stream_processor.alerts.webhooks import sign, verify

T0 = datetime(2026, 11, 20, tzinfo=UTC)
RULE = SpikeRule()


def every_six_hours(days: int, cost: str = "0.40", calls: int = 4) -> dict[datetime, HourUsage]:
    """An agent that runs every six hours at a steady cost."""
    return {
        T0 + timedelta(hours=h): HourUsage(Decimal(cost), calls) for h in range(0, days * 24, 6)
    }


def test_a_steady_agent_raises_nothing_on_its_own_schedule() -> None:
    series = every_six_hours(8)
    for hour in series:
        assert not judge(hour, series, RULE).anomalous


def test_an_expensive_hour_off_schedule_is_a_spike_with_its_baseline() -> None:
    series = every_six_hours(8)
    hour = T0 + timedelta(days=7, hours=3)
    series[hour] = HourUsage(Decimal("6.00"), 30)
    verdict = judge(hour, series, RULE)
    assert verdict.anomalous
    assert verdict.baseline is not None and verdict.baseline.cost_usd == Decimal("0.4")
    found = spikes([hour], series, RULE, complete_before=hour + 3 * HOUR)
    assert [(s.start, s.end) for s in found] == [(hour, hour + HOUR)]


def test_a_spike_over_two_hours_is_one_spike_and_open_until_the_next_hour_completes() -> None:
    series = every_six_hours(8)
    first = T0 + timedelta(days=7, hours=1)
    series[first] = series[first + HOUR] = HourUsage(Decimal("5"), 25)
    open_spike = spikes([first + HOUR], series, RULE, complete_before=first + 2 * HOUR)
    assert [(s.start, s.end) for s in open_spike] == [(first, None)]  # traced back to its start
    closed = spikes([first, first + HOUR], series, RULE, complete_before=first + 3 * HOUR)
    assert [(s.start, s.end) for s in closed] == [(first, first + 2 * HOUR)]


def test_tiny_entities_and_new_ones_never_alert() -> None:
    tiny = every_six_hours(8, cost="0.01", calls=1)
    hour = T0 + timedelta(days=7, hours=3)
    tiny[hour] = HourUsage(Decimal("0.90"), 15)  # 90 x normal, but under $1
    assert not judge(hour, tiny, RULE).anomalous
    new = {T0 + timedelta(hours=h): HourUsage(Decimal("0.4"), 4) for h in (0, 6)}
    new[T0 + HOUR * 9] = HourUsage(Decimal("50"), 100)  # no normal to compare with yet
    assert judge(T0 + HOUR * 9, new, RULE).baseline is None


def test_a_daily_run_at_its_usual_hour_is_judged_against_that_hour() -> None:
    """A nightly batch of many calls at 00:00 plus a few calls at other hours: the nightly
    hour is far above the other active hours but normal for that hour of the day."""
    series = {T0 + timedelta(days=d): HourUsage(Decimal("4"), 40) for d in range(8)}
    series |= {T0 + timedelta(days=d, hours=13): HourUsage(Decimal("0.2"), 2) for d in range(8)}
    assert not judge(T0 + timedelta(days=7), series, RULE).anomalous
    # at 13:00 the nightly level is not yet a spike (it is normal for this agent at some
    # hour: both baselines must agree), five times the nightly level is
    afternoon = T0 + timedelta(days=7, hours=13)
    series[afternoon] = HourUsage(Decimal("4"), 40)
    assert not judge(afternoon, series, RULE).anomalous
    series[afternoon] = HourUsage(Decimal("20"), 40)
    assert judge(afternoon, series, RULE).anomalous


def test_call_count_alone_makes_a_spike_when_the_hour_also_costs_enough() -> None:
    series = every_six_hours(8, cost="1.0", calls=3)
    hour = T0 + timedelta(days=7, hours=3)
    series[hour] = HourUsage(Decimal("2.5"), 60)  # 2.5x the cost (not a cost spike), 20x calls
    assert judge(hour, series, RULE).anomalous
    assert not judge(hour, series, SpikeRule(min_calls=100)).anomalous


@given(st.lists(st.decimals("0.05", "2", places=2), min_size=40, max_size=40))
def test_one_earlier_spike_in_the_baseline_does_not_hide_the_next(costs: list[Decimal]) -> None:
    series = {T0 + timedelta(hours=6 * i): HourUsage(c, 3) for i, c in enumerate(costs)}
    series[T0 + timedelta(hours=6 * 5)] = HourUsage(Decimal("500"), 300)  # an old spike
    hour = T0 + timedelta(hours=6 * 40 + 1)
    series[hour] = HourUsage(Decimal("100"), 3)
    assert judge(hour, series, RULE).anomalous


# --- budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("zone", "now", "start", "end"),
    [
        (
            "UTC",
            "2026-12-03T14:00:00+00:00",
            "2026-12-03T00:00:00+00:00",
            "2026-12-04T00:00:00+00:00",
        ),
        (
            "Europe/Berlin",
            "2026-03-29T12:00:00+00:00",
            "2026-03-28T23:00:00+00:00",
            "2026-03-29T22:00:00+00:00",
        ),
        (
            "Europe/Berlin",
            "2026-10-25T12:00:00+00:00",
            "2026-10-24T22:00:00+00:00",
            "2026-10-25T23:00:00+00:00",
        ),
        (
            "America/New_York",
            "2027-01-01T03:00:00+00:00",
            "2026-12-31T05:00:00+00:00",
            "2027-01-01T05:00:00+00:00",
        ),
    ],
)
def test_calendar_days_start_at_local_midnight_23_and_25_hour_days_included(
    zone: str, now: str, start: str, end: str
) -> None:
    window = period_window(Period.DAY, zone, datetime.fromisoformat(now))
    assert window == (datetime.fromisoformat(start), datetime.fromisoformat(end))


def test_months_and_rolling_periods() -> None:
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert period_window(Period.MONTH, "Asia/Tokyo", now) == (
        datetime(2026, 12, 31, 15, tzinfo=UTC),  # 1 January in Tokyo already
        datetime(2027, 1, 31, 15, tzinfo=UTC),
    )
    assert period_window(Period.ROLLING_24H, "UTC", now) == (now - timedelta(days=1), now)


def test_thresholds_reached_are_exact_at_the_boundary() -> None:
    limit = Decimal("10")
    assert crossed((50, 80, 100), limit, Decimal("4.999999999999")) == []
    assert crossed((50, 80, 100), limit, Decimal("5")) == [50]
    assert crossed((100, 50, 80), limit, Decimal("10")) == [50, 80, 100]


# --- webhooks ---------------------------------------------------------------------------
def test_signatures_verify_and_tampering_or_age_fails() -> None:
    body = b'{"alert_id":"a1"}'
    now = int(time.time())
    header = sign("s3cret", body, now)
    assert header.startswith(f"t={now},v1=") and verify("s3cret", body, header)
    assert not verify("other", body, header)
    assert not verify("s3cret", body + b" ", header)
    assert not verify("s3cret", body, sign("s3cret", body, now - 3600))
    assert not verify("s3cret", body, "garbage")
