"""Response bodies. Money is an exact decimal string with 12 places (the column's scale),
never a binary float; times are ISO 8601 strings with their UTC offset."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from query_api.repository import (
    AttributeUsage,
    Group,
    ModelUsage,
    Record,
    SummaryTotals,
    TopItem,
    Totals,
    by_cost,
)
from query_api.window import Window, from_ms

MONEY_PLACES = Decimal("1e-12")


def money(value: Decimal) -> str:
    """``Decimal`` -> ``"12.345678901000"``: exact at the storage scale (12 places)."""
    with localcontext() as ctx:
        ctx.prec = 80
        return format(value.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN), "f")


def average(total: Decimal, count: int) -> str:
    """``total / count`` rounded half-even to 12 places; ``"0.000000000000"`` for no calls."""
    if count == 0:
        return money(Decimal(0))
    with localcontext() as ctx:
        ctx.prec = 80
        return money(total / count)


def iso(moment: datetime) -> str:
    """ISO 8601 with milliseconds only when there are any, and always with an offset."""
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec)


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class WindowBody(_Body):
    from_: str = Field(serialization_alias="from", description="window start (inclusive), UTC")
    to: str = Field(description="window end (exclusive), UTC")


class TokenCounts(_Body):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    calls: int


def window_fields(window: Window) -> dict[str, Any]:
    """Keyword arguments of :class:`WindowBody` for ``window``."""
    return {"from_": iso(window.start), "to": iso(window.end)}


def count_fields(totals: Totals) -> dict[str, Any]:
    """Keyword arguments of :class:`TokenCounts` for ``totals``."""
    return {
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_creation_input_tokens": totals.cache_creation_input_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "calls": totals.calls,
    }


# The prompt-cache figures: exact per call, at each call's own rates (see the README).
SAVINGS_DESCRIPTION = (
    "what cache reads saved: cache-read tokens x (input price - cache-read price) at each"
    " call's own rates (tier, geo, long context); calls stored before migration 0019 count"
    " 0 until a reprice run"
)
PREMIUM_DESCRIPTION = (
    "what cache writes cost on top: 5m writes x (5m write price - input price) + 1h writes"
    " x (1h write price - input price) at each call's own rates; calls stored before"
    " migration 0019 count 0 until a reprice run"
)


class UnpricedModel(_Body):
    model: str = Field(description="model name as normalised by the stream processor")
    calls: int = Field(description="calls of this model in the window that had no price")


class Summary(WindowBody, TokenCounts):
    total_cost_usd: str = Field(examples=["12.345678901000"])
    avg_cost_per_call_usd: str = Field(description="total cost / calls, 12 places half-even")
    unpriced_calls: int = Field(description="calls whose model had no price (cost counted 0)")
    unpriced_models: list[UnpricedModel] = Field(
        description="models without a price in the price book, most unpriced calls first"
    )
    cost_incomplete: bool = Field(
        description="true when unpriced calls are in the window: the total is a lower bound"
    )
    repriced_at: str | None = Field(
        None, description="when `llm-usage reprice` last changed calls of this window, if ever"
    )
    cache_read_savings_usd: str = Field(
        description=SAVINGS_DESCRIPTION, examples=["1.234500000000"]
    )
    cache_write_premium_usd: str = Field(
        description=PREMIUM_DESCRIPTION, examples=["0.120000000000"]
    )

    @classmethod
    def build(cls, window: Window, summary: SummaryTotals) -> Summary:
        totals = summary.totals
        return cls(
            **window_fields(window),
            **count_fields(totals),
            total_cost_usd=money(totals.cost_usd),
            avg_cost_per_call_usd=average(totals.cost_usd, totals.calls),
            unpriced_calls=totals.unpriced_calls,
            unpriced_models=[UnpricedModel(model=m, calls=n) for m, n in summary.unpriced_models],
            cost_incomplete=totals.unpriced_calls > 0,
            repriced_at=iso(summary.repriced_at) if summary.repriced_at else None,
            cache_read_savings_usd=money(totals.cache_read_savings_usd),
            cache_write_premium_usd=money(totals.cache_write_premium_usd),
        )


class Point(TokenCounts):
    bucket_start: str = Field(description="local start of the bucket, ISO 8601 with offset")
    cost_usd: str


class Timeseries(WindowBody):
    granularity: str
    tz: str
    points: list[Point]


class SourceUsage(TokenCounts):
    source: str
    cost_usd: str
    unpriced_calls: int


class BySource(WindowBody):
    sources: list[SourceUsage]


class TopEntry(TokenCounts):
    source: str
    source_id: str
    name: str = Field(description="latest conversation title or agent name")
    cost_usd: str
    total_tokens: int = Field(description="input + output + cache writes + cache reads")

    @classmethod
    def build(cls, item: TopItem) -> TopEntry:
        return cls(
            source=item.source,
            source_id=item.source_id,
            name=item.name,
            cost_usd=money(item.totals.cost_usd),
            total_tokens=item.totals.total_tokens,
            **count_fields(item.totals),
        )


class Top(WindowBody):
    by: str
    limit: int
    items: list[TopEntry]


class ModelCosts(TokenCounts):
    """What one model (or one model at one price tier) cost in the window."""

    model: str
    web_search_requests: int = Field(description="server-side web searches (billed per search)")
    cost_usd: str = Field(description="tokens and server tools")
    tool_cost_usd: str = Field(description="of which server tools (web search fees)")
    unpriced_calls: int = Field(description="calls without a price (their cost counted 0)")
    priced: bool = Field(description="false when some calls had no price: cost is a lower bound")
    total_tokens: int = Field(description="input + output + cache writes + cache reads")
    cache_read_savings_usd: str = Field(description=SAVINGS_DESCRIPTION)
    cache_write_premium_usd: str = Field(description=PREMIUM_DESCRIPTION)

    @staticmethod
    def fields_of(model: str, totals: Totals) -> dict[str, Any]:
        """Keyword arguments of the fields above, shared by per-tier and per-model rows."""
        return {
            "model": model,
            "web_search_requests": totals.web_search_requests,
            "cost_usd": money(totals.cost_usd),
            "tool_cost_usd": money(totals.tool_cost_usd),
            "unpriced_calls": totals.unpriced_calls,
            "priced": totals.unpriced_calls == 0,
            "total_tokens": totals.total_tokens,
            "cache_read_savings_usd": money(totals.cache_read_savings_usd),
            "cache_write_premium_usd": money(totals.cache_write_premium_usd),
            **count_fields(totals),
        }


class ModelTierCosts(ModelCosts):
    price_tier: str = Field(
        description="prices the calls were billed at: standard, batch, fast or priority"
    )


class ModelTotal(ModelCosts):
    price_tiers: list[str] = Field(description="the model's price tiers in items, as ordered")


class ByModel(WindowBody):
    total_cost_usd: str = Field(description="all models, all tiers")
    calls: int
    unpriced_calls: int
    items: list[ModelTierCosts] = Field(
        description="one per model and price tier: most cost first, then most calls"
    )
    models: list[ModelTotal] = Field(description="the same per model (all its tiers)")

    @classmethod
    def build(cls, window: Window, usage: list[ModelUsage]) -> ByModel:
        total = Totals()
        per_model: dict[str, tuple[Totals, list[str]]] = {}
        for item in usage:
            total.add(item.totals)
            model_totals, tiers = per_model.setdefault(item.model, (Totals(), []))
            model_totals.add(item.totals)
            tiers.append(item.price_tier)
        ranked = sorted(per_model.items(), key=lambda kv: by_cost(kv[1][0], kv[0]))
        return cls(
            **window_fields(window),
            total_cost_usd=money(total.cost_usd),
            calls=total.calls,
            unpriced_calls=total.unpriced_calls,
            items=[
                ModelTierCosts(
                    price_tier=item.price_tier, **ModelCosts.fields_of(item.model, item.totals)
                )
                for item in usage
            ],
            models=[
                ModelTotal(price_tiers=tiers, **ModelCosts.fields_of(model, totals))
                for model, (totals, tiers) in ranked
            ],
        )


class RecordItem(_Body):
    event_id: str
    source: str
    source_id: str
    name: str = Field(description="latest conversation title or agent name")
    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: str
    priced: bool
    status: str
    duration_ms: int
    occurred_at: str
    attributes: dict[str, str] = Field(
        default_factory=dict, description="the call's attributes (user, customer, ...), by key"
    )

    @classmethod
    def build(cls, record: Record) -> RecordItem:
        return cls(
            event_id=record.event_id,
            source=record.source,
            source_id=record.source_id,
            name=record.name,
            model=record.model,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cache_creation_input_tokens=record.cache_creation_input_tokens,
            cache_read_input_tokens=record.cache_read_input_tokens,
            cost_usd=money(record.cost_usd),
            priced=record.priced,
            status=record.status,
            duration_ms=record.duration_ms,
            occurred_at=iso(from_ms(record.occurred_at_ms)),
            attributes=dict(record.attributes),
        )


class Records(WindowBody):
    items: list[RecordItem]
    page: int | None = Field(description="page number; null when paging by cursor")
    page_size: int
    total: int
    total_pages: int
    next_cursor: str | None = Field(
        description="pass as cursor= for the next page, fast at any depth"
    )


class BreakdownGroup(_Body):
    key: str | None = Field(
        description="source, model or attribute value; null: calls without that attribute"
    )
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: str
    share: float = Field(
        description="the group's cost / the window's cost (0 if that is 0), a binary float;"
        " breakdown.csv writes the same number as a plain decimal (no exponent)"
    )

    @classmethod
    def of(cls, key: str | None, totals: Totals, total_cost: Decimal) -> BreakdownGroup:
        share = float(totals.cost_usd / total_cost) if total_cost else 0.0
        return cls(
            key=key,
            calls=totals.calls,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cache_read_tokens=totals.cache_read_input_tokens,
            cache_write_tokens=totals.cache_creation_input_tokens,
            cost_usd=money(totals.cost_usd),
            share=share,
        )


class BreakdownOther(BreakdownGroup):
    groups: int = Field(description="how many groups beyond the limit are summed here")


class Breakdown(WindowBody):
    by: str
    limit: int
    total_cost_usd: str = Field(description="every group, other included")
    groups: list[BreakdownGroup] = Field(
        description="the `limit` groups with most cost, then most calls, then key; by an"
        " attribute, also the calls without it (key null) whenever there are any: that group"
        " never counts against `limit` nor goes into `other`"
    )
    other: BreakdownOther | None = Field(
        description="the remaining groups summed (key null), or null when none remain"
    )

    @classmethod
    def build(cls, window: Window, by: str, limit: int, groups: list[Group]) -> Breakdown:
        """``groups`` in order (see :meth:`UsageRepository.breakdown`): the first ``limit``
        with a key and the one without (key None) listed where it sorts, the rest summed."""
        total = Totals()
        for group in groups:
            total.add(group.totals)
        valued = [g for g in groups if g.key is not None]
        kept = {id(g) for g in valued[:limit]}
        listed = [g for g in groups if g.key is None or id(g) in kept]
        rest = Totals()
        for group in valued[limit:]:
            rest.add(group.totals)
        other = None
        if len(valued) > limit:
            summed = BreakdownGroup.of(None, rest, total.cost_usd).model_dump()
            other = BreakdownOther(**summed, groups=len(valued) - limit)
        return cls(
            **window_fields(window),
            by=by,
            limit=limit,
            total_cost_usd=money(total.cost_usd),
            groups=[BreakdownGroup.of(g.key, g.totals, total.cost_usd) for g in listed],
            other=other,
        )


class AttributeValue(_Body):
    value: str
    calls: int
    cost_usd: str


class AttributeKey(_Body):
    key: str
    values: int = Field(description="distinct values of the key in the window")
    calls: int = Field(description="calls that have the key")
    cost_usd: str = Field(description="cost of the calls that have the key")
    top_values: list[AttributeValue] = Field(
        description="the values with most cost, then most calls, then value"
    )

    @classmethod
    def build(cls, usage: AttributeUsage) -> AttributeKey:
        return cls(
            key=usage.key,
            values=usage.values,
            calls=usage.totals.calls,
            cost_usd=money(usage.totals.cost_usd),
            top_values=[
                AttributeValue(value=value, calls=t.calls, cost_usd=money(t.cost_usd))
                for value, t in usage.top
            ],
        )


class Attributes(WindowBody):
    keys: list[AttributeKey] = Field(
        description="the attribute keys of the window's calls, by name"
    )


class Health(_Body):
    status: str
    detail: str | None = None


class ErrorBody(_Body):
    detail: str
