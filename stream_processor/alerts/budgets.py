"""Budgets: what they cover, the period they are measured over, and which thresholds a
spend has crossed. Pure functions; spend itself comes from the API's own summary query, so
a budget always agrees with ``/v1/usage/summary`` for the same window and filter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

from query_api.repository import Filters, SummaryTotals
from query_api.window import Window, to_ms

DEFAULT_THRESHOLDS = (50, 80, 100)


class Period(StrEnum):
    DAY = "day"  # calendar day in the budget's time zone
    MONTH = "month"  # calendar month in the budget's time zone
    ROLLING_24H = "rolling_24h"  # the 24 hours before now


@dataclass(frozen=True)
class Budget:
    tenant_id: str
    budget_id: str
    name: str
    source: str  # "" = the whole tenant
    source_id: str  # "" = every entity of ``source``
    period: Period
    time_zone: str
    limit_usd: Decimal
    thresholds: tuple[int, ...]
    hard: bool
    created_at: datetime
    updated_at: datetime
    attr_key: str = ""  # with attr_value: only the calls whose attribute has that value
    attr_value: str = ""

    @property
    def scope(self) -> str:
        """tenant, source, entity or attribute (the calls of one attribute value, of
        ``source`` only when that is set too)."""
        if self.attr_key:
            return "attribute"
        if not self.source:
            return "tenant"
        return "entity" if self.source_id else "source"


def period_window(period: Period, zone: str, now: datetime) -> tuple[datetime, datetime]:
    """The half-open UTC window of the period that contains ``now``.

    A calendar day or month starts at local midnight in ``zone`` (23 or 25 hours long on a
    daylight-saving change); a rolling period is the 24 hours that end at ``now``.
    """
    now = now.astimezone(UTC)
    if period is Period.ROLLING_24H:
        return now - timedelta(hours=24), now
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    if period is Period.DAY:
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + timedelta(days=1, hours=2)).replace(hour=0)  # past a 23 h day too
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + timedelta(days=32)).replace(day=1)
    start = start.replace(tzinfo=None).replace(tzinfo=tz)  # re-resolve the local offset
    nxt = nxt.replace(tzinfo=None).replace(tzinfo=tz)
    return start.astimezone(UTC), nxt.astimezone(UTC)


def crossed(thresholds: tuple[int, ...], limit: Decimal, spend: Decimal) -> list[int]:
    """The thresholds (percent of ``limit``) that ``spend`` has reached, lowest first."""
    return sorted(t for t in thresholds if limit > 0 and spend * 100 >= limit * t)


def used_up(budget: Budget, spend: Decimal) -> bool:
    """Whether the whole limit is spent (what a hard budget's guard refuses calls for)."""
    return spend >= budget.limit_usd


class SummaryRepository(Protocol):
    def summary(self, window: Window, filters: Filters) -> SummaryTotals: ...


@dataclass(frozen=True)
class Spend:
    """A budget's spend in its current period, as ``/v1/usage/summary`` reports it."""

    start: datetime
    end: datetime
    cost_usd: Decimal
    calls: int

    def percent(self, limit: Decimal) -> float:
        return float(self.cost_usd * 100 / limit) if limit > 0 else 0.0


def budget_filters(budget: Budget) -> Filters:
    """The summary filter of the budget: ``attr.<key>=<value>`` for an attribute budget."""
    return Filters(
        tenant=budget.tenant_id,
        source=budget.source or None,
        source_id=budget.source_id or None,
        attributes=((budget.attr_key, budget.attr_value),) if budget.attr_key else (),
    )


def spend_of(repository: SummaryRepository, budget: Budget, now: datetime) -> Spend:
    """The budget's spend: the summary of [period start, period end) with its filter."""
    start, end = period_window(budget.period, budget.time_zone, now)
    window = Window(to_ms(start), to_ms(end))
    totals = repository.summary(window, budget_filters(budget)).totals
    return Spend(start, end, totals.cost_usd, totals.calls)
