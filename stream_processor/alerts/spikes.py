"""Spike detection: is an entity's hour far above that entity's own normal hours?

The baseline of hour H is the entity's *active* hours (hours with at least one call) of the
seven days before H. Active, not all hours: an agent that runs at 02:00 every night has 167
idle hours a week, and a median over all of them would be 0, so its normal run would look
like a spike. Compared with its other runs, only an hour that is far more expensive (or far
busier) than its usual run stands out, and idle time is what budgets judge. The estimate is
robust: the median and the median absolute deviation (MAD), so one earlier spike in the
baseline does not raise the bar for the next one.

An hour is anomalous in a metric (cost, calls) when all of these hold:

- it is at least ``min_cost_usd`` (tiny entities never alert), and for calls at least
  ``min_calls``;
- it is at least ``min_ratio`` times the baseline median;
- it lies more than ``sensitivity`` robust standard deviations (1.4826 x MAD, floored at a
  tenth of the median so that a perfectly regular agent still has a scale) above the median;
- the baseline has at least ``min_history`` active hours (a new entity has no normal yet).

A spike is a run of consecutive anomalous hours; it alerts once when it starts and once
when it ends (the first hour after it that is complete and not anomalous).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import median

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data


@dataclass(frozen=True)
class SpikeRule:
    """How far above normal an hour must be to alert (settings ``alert_spike_*``)."""

    sensitivity: float = 6.0
    min_ratio: float = 3.0
    min_cost_usd: Decimal = Decimal("2")
    min_calls: int = 20
    min_history: int = 6
    min_days: int = 3
    baseline: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class HourUsage:
    cost_usd: Decimal
    calls: int


@dataclass(frozen=True)
class Baseline:
    """The normal hour an entity's hour was compared with (medians of its active hours)."""

    cost_usd: Decimal
    calls: float
    hours: int


@dataclass(frozen=True)
class Verdict:
    hour: datetime
    usage: HourUsage
    baseline: Baseline | None  # None: too little history to judge
    anomalous: bool


def _exceeds(value: float, values: list[float], rule: SpikeRule) -> bool:
    """Whether ``value`` is far above the robust centre of ``values`` (see the module)."""
    mid = median(values)
    mad = median(abs(v - mid) for v in values)
    scale = max(MAD_TO_SIGMA * mad, 0.1 * mid, 1e-9)
    return value >= rule.min_ratio * mid and (value - mid) / scale > rule.sensitivity


def _both_baselines(
    hour: datetime, value: float, series: Mapping[datetime, float], rule: SpikeRule
) -> bool | None:
    """``value`` (of ``hour``) against both baselines; None when history is too short."""
    active = [v for h, v in series.items() if hour - rule.baseline <= h < hour and v > 0]
    first = min(series, default=hour)
    days = rule.baseline // DAY
    same_hour = [
        series.get(hour - d * DAY, 0.0) for d in range(1, days + 1) if hour - d * DAY >= first
    ]
    if len(active) < rule.min_history or len(same_hour) < rule.min_days:
        return None
    return _exceeds(value, active, rule) and _exceeds(value, same_hour, rule)


def judge(hour: datetime, series: Mapping[datetime, HourUsage], rule: SpikeRule) -> Verdict:
    """The verdict on ``hour`` of one entity whose hourly usage is ``series``."""
    usage = series.get(hour, HourUsage(Decimal(0), 0))
    if usage.cost_usd < rule.min_cost_usd:  # the common case, and cheap: never a spike
        return Verdict(hour, usage, None, False)
    costs = {h: float(u.cost_usd) for h, u in series.items()}
    calls = {h: float(u.calls) for h, u in series.items()}
    by_cost = _both_baselines(hour, float(usage.cost_usd), costs, rule)
    if by_cost is None:
        return Verdict(hour, usage, None, False)
    by_calls = usage.calls >= rule.min_calls and bool(
        _both_baselines(hour, float(usage.calls), calls, rule)
    )
    history = [u for h, u in series.items() if hour - rule.baseline <= h < hour and u.calls > 0]
    baseline = Baseline(
        Decimal(str(median(float(u.cost_usd) for u in history))).quantize(Decimal("0.000001")),
        median(u.calls for u in history),
        len(history),
    )
    anomalous = by_cost or by_calls
    return Verdict(hour, usage, baseline, anomalous)


@dataclass(frozen=True)
class Spike:
    """A run of anomalous hours ``[start, end)``; ``end`` is None while it lasts (or while
    the hour after it is not complete)."""

    start: datetime
    end: datetime | None
    first: Verdict  # the verdict that started it: observed usage and baseline
    peak_cost_usd: Decimal


def spikes(
    hours: Iterable[datetime],
    series: Mapping[datetime, HourUsage],
    rule: SpikeRule,
    *,
    complete_before: datetime,
) -> list[Spike]:
    """The spikes that touch ``hours`` (UTC hour starts), each with its start and end.

    A spike that starts before the earliest of ``hours`` is traced back hour by hour, so a
    re-evaluation finds the same start (and so the same alert) as the first one did. An
    hour at or after ``complete_before`` may still receive calls: it can start a spike (a
    partial hour only grows) but cannot end one.
    """
    found: dict[datetime, Spike] = {}
    cache: dict[datetime, Verdict] = {}

    def verdict(h: datetime) -> Verdict:
        if h not in cache:
            cache[h] = judge(h, series, rule)
        return cache[h]

    for hour in sorted(set(hours)):
        if not verdict(hour).anomalous:
            continue
        start = hour
        while verdict(start - HOUR).anomalous:
            start -= HOUR
        if start in found:
            continue
        end = start + HOUR
        peak = verdict(start).usage.cost_usd
        while verdict(end).anomalous:
            peak = max(peak, verdict(end).usage.cost_usd)
            end += HOUR
        closed = end + HOUR <= complete_before
        found[start] = Spike(start, end if closed else None, verdict(start), peak)
    return sorted(found.values(), key=lambda s: s.start)
