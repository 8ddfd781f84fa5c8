"""All SQL of the API. User input only ever reaches ClickHouse as bound ``{pN:Type}`` values.

Aggregates are one ``UNION ALL`` per request: each part reads one table for the ranges that
:func:`query_api.window.plan` assigned to it (whole UTC days, hours or 15-minute slots from
rollups, partial edges from ``usage_events``), and the outer query sums the parts. Without
a name search the compact rollups answer (per source, or per source, model and price tier
for costs by model and the summary's unpriced models); with one (or for per-entity
rankings) the rollups that keep ``source_id``. One ``attr.<key>=<value>`` filter, a
breakdown by one attribute key and the list of keys read the attribute rollups; what they
cannot answer exactly (several attr filters, attr filters with per-entity questions) reads
``usage_events`` alone (see :func:`_tiers_for`).

Whole past hours of a window are read once and then served from :mod:`query_api.cache`
for as long as their ingest version (see :meth:`UsageRepository.version`) stays the same;
only the recent hour and the window's unaligned edges are queried on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from query_api.cache import SettledCache, SharedReads, Version
from query_api.db import ClickHouse
from query_api.window import (
    DAY,
    HOUR,
    MINUTE,
    QUARTER,
    RAW,
    Bucket,
    BucketIndex,
    Range,
    Window,
    from_ms,
    plan,
    raw_resolution,
    split_settled,
)

SOURCES = ("chat", "agent", "memory")
# ClickHouse orders the source Enum8 by value (chat = 1, agent = 2, memory = 3).
SOURCE_RANK = {source: rank for rank, source in enumerate(SOURCES, start=1)}
TopBy = Literal["cost", "tokens"]


@dataclass(frozen=True)
class Table:
    """A rollup grain: its table, time column and how that column is compared."""

    name: str
    column: str
    kind: Literal["date", "datetime"]


# Largest grain first; each divides the one before (see window.decompose). The finest
# grains (migration 0015) keep the raw edges of a window short: under a minute for the
# compact questions, under 15 minutes per conversation or agent.
EDGES = Table("usage_api_models_1m", "minute", "datetime")
COMPACT: dict[int, Table] = {
    DAY: Table("usage_api_daily", "day", "date"),
    QUARTER: Table("usage_api_15m", "slot", "datetime"),
    MINUTE: EDGES,
}
MODELS: dict[int, Table] = {
    DAY: Table("usage_api_models_daily", "day", "date"),
    QUARTER: Table("usage_api_models_15m", "slot", "datetime"),
    MINUTE: EDGES,
}
DETAILED: dict[int, Table] = {
    DAY: Table("usage_daily", "day", "date"),
    HOUR: Table("usage_hourly", "hour", "datetime"),
    QUARTER: Table("usage_entities_15m", "slot", "datetime"),
}
# Per attribute key and value (migration 0017): a filter on one attr value, a breakdown by
# one key and the list of keys. Questions they cannot answer (several attr filters, a
# filter on one key with a breakdown by another, per-entity ones) read usage_events only.
ATTRIBUTES: dict[int, Table] = {
    DAY: Table("usage_attributes_daily", "day", "date"),
    QUARTER: Table("usage_attributes_15m", "slot", "datetime"),
}
RAW_ONLY: dict[int, Table] = {}
_ATTRIBUTE_TABLES = frozenset(table.name for table in ATTRIBUTES.values())
# Group keys of the attribute rollups: "attr:<key>" groups by the values of one key (see
# attr_group); "attr_key", "attr_value" together list every key and value.
_ATTR_GROUP = "attr:"
_LISTING = ("attr_key", "attr_value")


def attr_group(key: str) -> str:
    """The group key of a breakdown by the values of attribute ``key``."""
    return f"{_ATTR_GROUP}{key}"


def _grouped_attribute(keys: Sequence[str]) -> str | None:
    """The attribute key of an :func:`attr_group` among ``keys``, if any."""
    for key in keys:
        if key.startswith(_ATTR_GROUP):
            return key[len(_ATTR_GROUP) :]
    return None


METRICS = (
    "calls",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
)
# What the per-model rollups (and usage_hourly / usage_daily, usage_entities_15m and the
# attribute rollups: every table a per-model question can read) hold on top of METRICS.
# The prompt-cache figures (migration 0019) are per-call sums like the cost.
SAVINGS = ("cache_read_savings_usd", "cache_write_premium_usd")
MODEL_METRICS = (*METRICS, "web_search_requests", "tool_cost_usd", *SAVINGS)
MONEY = frozenset({"cost_usd", "tool_cost_usd", *SAVINGS})
_RAW_METRICS = {
    "calls": "count()",
    "unpriced_calls": "countIf(NOT priced)",
    "web_search_requests": "sum(toUInt64(web_search_requests))",
}
# Keys the outer query reads through an expression (under another name: no alias that
# shadows its own column). usage_hourly / usage_daily rows written before migration 0011
# have price_tier '': those calls were billed at standard prices, and usage_events reads
# 'standard' for them (the column's default).
_OUTER_KEYS = {"price_tier": ("if(price_tier = '', 'standard', price_tier)", "billed_tier")}


def _outer_key(key: str) -> tuple[str, str]:
    """(select expression, group-by name) of ``key`` in the outer query."""
    if key in _OUTER_KEYS:
        expr, name = _OUTER_KEYS[key]
        return f"{expr} AS {name}", name
    if key.startswith(_ATTR_GROUP):
        return "attr_value", "attr_value"
    return key, key


# A search matching at most this many entities is sent as a bound list (one lookup per
# request, and the raw table's source_id bloom filter applies); beyond it, as a subquery.
MAX_BOUND_MATCHES = 1_000


@dataclass(frozen=True)
class Filters:
    """Who asks (tenant) and what they narrowed the data to.

    ``matches`` is the search resolved to (source, source_id) pairs by
    :meth:`UsageRepository.resolve_search`; None means "not resolved, use a subquery".
    """

    tenant: str
    source: str | None = None
    search: str | None = None
    matches: tuple[tuple[str, str], ...] | None = None
    source_id: str | None = None  # one conversation or agent (budgets of one entity)
    # attr.<key>=<value> filters, ANDed, sorted by key (one value per key)
    attributes: tuple[tuple[str, str], ...] = ()
    # when the request came in (time.monotonic()): a read sent later may answer it
    asked_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def per_entity(self) -> bool:
        """Whether only the rollups that keep ``source_id`` can answer."""
        return bool(self.search or self.source_id)


def _zero() -> Decimal:
    return Decimal(0)


@dataclass
class Totals:
    """Summed metrics of a set of calls; money stays a Decimal end to end.

    ``web_search_requests``, ``tool_cost_usd`` and the prompt-cache figures are only
    filled by per-model queries (:data:`MODEL_METRICS`).
    """

    calls: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: Decimal = field(default_factory=_zero)
    web_search_requests: int = 0
    tool_cost_usd: Decimal = field(default_factory=_zero)
    cache_read_savings_usd: Decimal = field(default_factory=_zero)
    cache_write_premium_usd: Decimal = field(default_factory=_zero)

    @classmethod
    def from_row(cls, values: Sequence[Any], metrics: Sequence[str] = METRICS) -> Totals:
        """Totals from query columns in the order of ``metrics``."""
        totals = cls()
        for name, value in zip(metrics, values, strict=False):
            setattr(totals, name, Decimal(value) if name in MONEY else int(value))
        return totals

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def subtract(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) - getattr(other, f.name))

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


@dataclass(frozen=True)
class TopItem:
    source: str
    source_id: str
    name: str
    totals: Totals


@dataclass(frozen=True)
class ModelUsage:
    """Calls of one model at one price tier (standard, batch, fast or priority)."""

    model: str
    price_tier: str
    totals: Totals


@dataclass(frozen=True)
class SummaryTotals:
    """The window's totals and the models without a price, most unpriced calls first."""

    totals: Totals
    unpriced_models: list[tuple[str, int]]
    repriced_at: datetime | None = None


@dataclass(frozen=True)
class Group:
    """One group of a breakdown: a source, a model or an attribute value (None: calls
    without the attribute)."""

    key: str | None
    totals: Totals


@dataclass(frozen=True)
class AttributeUsage:
    """One attribute key seen in a window: how many values, its calls, its top values."""

    key: str
    values: int
    totals: Totals
    top: list[tuple[str, Totals]]


BreakdownBy = Literal["source", "model", "attr"]


def by_cost(totals: Totals, *names: Any) -> tuple[Any, ...]:
    """Sort key: most cost first, then most calls, then ``names`` (deterministic ties)."""
    return (-totals.cost_usd, -totals.calls, *names)


@dataclass(frozen=True)
class Record:
    event_id: str
    source: str
    source_id: str
    name: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: Decimal
    priced: bool
    status: str
    duration_ms: int
    occurred_at_ms: int
    attributes: Mapping[str, str] = field(default_factory=dict)  # key -> value, by key


class _Params:
    """Collects bound parameters; names are generated here, values never enter the SQL."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._shared: dict[str, str] = {}

    def bind(self, value: Any, ch_type: str, *, share: str | None = None) -> str:
        """A ``{pN:Type}`` placeholder; ``share`` names a value bound once per statement."""
        if share is not None and share in self._shared:
            return self._shared[share]
        name = f"p{len(self.values)}"
        self.values[name] = value
        placeholder = f"{{{name}:{ch_type}}}"
        if share is not None:
            self._shared[share] = placeholder
        return placeholder


def _span_condition(table: Table | None, span: Range, params: _Params) -> str:
    a, b = span
    if table is None:
        lo = params.bind(a, "Int64")
        hi = params.bind(b, "Int64")
        return (
            f"(occurred_at >= fromUnixTimestamp64Milli({lo}, 'UTC')"
            f" AND occurred_at < fromUnixTimestamp64Milli({hi}, 'UTC'))"
        )
    if table.kind == "date":
        lo = params.bind(from_ms(a).date(), "Date")
        hi = params.bind(from_ms(b).date(), "Date")
        return f"({table.column} >= {lo} AND {table.column} < {hi})"
    lo = params.bind(a // 1000, "Int64")
    hi = params.bind(b // 1000, "Int64")
    return (
        f"({table.column} >= toDateTime({lo}, 'UTC') AND {table.column} < toDateTime({hi}, 'UTC'))"
    )


def _filter_conditions(filters: Filters, params: _Params, table: Table | None = None) -> list[str]:
    """WHERE conditions of ``filters`` on ``table`` (None: usage_events)."""
    tenant = params.bind(filters.tenant, "String", share="tenant")
    conditions = [f"tenant_id = {tenant}"]
    if filters.attributes:
        conditions.extend(_attribute_conditions(filters.attributes, table, params))
    if filters.source:
        conditions.append(f"source = {params.bind(filters.source, 'String')}")
    if filters.source_id:
        conditions.append(f"source_id = {params.bind(filters.source_id, 'String')}")
    if filters.search and filters.matches is not None:
        if not filters.matches:
            conditions.append("0")  # nothing matches: ClickHouse reads nothing
        else:
            ids = sorted({i for _, i in filters.matches})
            ids_param = params.bind(ids, "Array(String)", share="ids")
            pairs = params.bind(
                list(filters.matches), "Array(Tuple(String, String))", share="pairs"
            )
            conditions.append(f"source_id IN {ids_param}")
            conditions.append(f"(toString(source), source_id) IN {pairs}")
    elif filters.search:
        conditions.append(f"(source, source_id) IN ({_matching_sources(filters, params)})")
    return conditions


def _attribute_conditions(
    attributes: Sequence[tuple[str, str]], table: Table | None, params: _Params
) -> list[str]:
    """``attr.<key>=<value>`` filters: a Map lookup on the raw table (a missing key reads
    '', which no value equals), the sort key's prefix on an attribute rollup (one pair)."""
    pairs = [
        (
            params.bind(k, "String", share=f"attr-key:{k}"),
            params.bind(v, "String", share=f"attr-value:{k}={v}"),
        )
        for k, v in attributes
    ]
    if table is None:
        return [f"attributes[{k}] = {v}" for k, v in pairs]
    if table.name not in _ATTRIBUTE_TABLES or len(pairs) != 1:
        raise ValueError(f"{table.name} cannot filter by {len(pairs)} attributes")
    ((k, v),) = pairs
    return [f"attr_key = {k}", f"attr_value = {v}"]


def _matching_sources(filters: Filters, params: _Params) -> str:
    """(source, source_id) whose *latest* name contains the search, case-insensitively.

    The inner set narrows to ids that ever had a matching name; the outer one keeps those
    whose latest name still matches.
    """
    tenant = params.bind(filters.tenant, "String", share="tenant")
    search = params.bind(filters.search, "String", share="search")
    return (
        "SELECT source, source_id FROM source_names"
        f" WHERE tenant_id = {tenant} AND (source, source_id) IN ("
        f"SELECT source, source_id FROM source_names WHERE tenant_id = {tenant}"
        f" AND positionCaseInsensitiveUTF8(source_name, {search}) > 0)"
        " GROUP BY source, source_id"
        f" HAVING positionCaseInsensitiveUTF8(argMax(source_name, named_at), {search}) > 0"
    )


def _metrics(raw: bool, metrics: Sequence[str]) -> str:
    exprs = []
    for name in metrics:
        expr = _RAW_METRICS.get(name, f"sum({name})") if raw else f"sum({name})"
        exprs.append(f"{expr} AS x_{name}")
    return ", ".join(exprs)


def _time_key(table: Table | None, resolution: str) -> str:
    if table is None:
        return f"intDiv(toUnixTimestamp64Milli(occurred_at), {resolution}) * {resolution} AS t"
    if table.kind == "date":
        return f"toInt64(toUnixTimestamp(toDateTime({table.column}, 'UTC'))) * 1000 AS t"
    return f"toInt64(toUnixTimestamp({table.column})) * 1000 AS t"


def _aggregate_sql(
    ranges: Sequence[Range],
    filters: Filters,
    keys: Sequence[str],
    *,
    tiers: Mapping[int, Table],
    metrics: Sequence[str],
    raw_grain: int,
    params: _Params,
    constants: Sequence[str] = (),
) -> str:
    """UNION ALL of one part per table; each part grouped by ``keys`` (``t`` = grain start).

    ``constants`` (SQL literals such as ``1 AS whole``) come first in every part's columns.
    """
    resolution = params.bind(raw_grain, "Int64")
    grouped = _grouped_attribute(keys)
    names = [_outer_key(key)[1] if key.startswith(_ATTR_GROUP) else key for key in keys]
    parts = []
    for unit, spans in plan(ranges, list(tiers)).items():
        table = None if unit == RAW else tiers[unit]
        where = [*_filter_conditions(filters, params, table)]
        where.append("(" + " OR ".join(_span_condition(table, s, params) for s in spans) + ")")
        source = table.name if table else "usage_events"
        columns = list(constants)
        for key in keys:
            if key == "t":
                columns.append(_time_key(table, resolution))
            elif key.startswith(_ATTR_GROUP):
                # by one key's values: its rows in a rollup, the calls that have it in raw
                k = params.bind(grouped, "String", share=f"attr-key:{grouped}")
                where.append(
                    f"mapContains(attributes, {k})" if table is None else f"attr_key = {k}"
                )
                columns.append(f"attributes[{k}] AS attr_value" if table is None else "attr_value")
            else:
                columns.append(key)
        if table is None and "attr_key" in keys:  # every key and value: one row per pair
            source += (
                " ARRAY JOIN mapKeys(attributes) AS attr_key, mapValues(attributes) AS attr_value"
            )
        group = f" GROUP BY {', '.join(names)}" if keys else ""
        parts.append(
            f"SELECT {', '.join([*columns, _metrics(table is None, metrics)])}"
            f" FROM {source} WHERE {' AND '.join(where)}{group}"
        )
    return " UNION ALL ".join(parts)


def _breakdown_sql(
    ranges: Sequence[Range],
    filters: Filters,
    key: str,
    *,
    groups: Mapping[int, Table],
    whole: Mapping[int, Table],
    metrics: Sequence[str],
    params: _Params,
) -> str:
    """One statement for a breakdown by attribute ``key``: rows (whole, attr_value, metrics).

    ``whole = 0``: one row per value of ``key``, from ``groups`` (the attribute rollups, or
    usage_events); ``whole = 1``: one row with every call of the window (``attr_value``
    ''), from ``whole`` (the tables :meth:`UsageRepository.totals` reads). Both are parts of
    one UNION ALL summed by one outer query, so they come from the same read of the tables,
    not from two queries between which an insert may land; the calls without the key are
    the whole minus the groups.
    """
    by_value = _aggregate_sql(
        ranges, filters, [attr_group(key)], tiers=groups, metrics=metrics, raw_grain=QUARTER,
        params=params, constants=("0 AS whole",),
    )  # fmt: skip
    total = _aggregate_sql(
        ranges, filters, [], tiers=whole, metrics=metrics, raw_grain=QUARTER, params=params,
        constants=("1 AS whole", "'' AS no_value"),  # (attr_value: an attr filter's column)
    )  # fmt: skip
    return (
        f"SELECT whole, attr_value, {_outer_metrics(metrics)}"
        f" FROM ({by_value} UNION ALL {total}) GROUP BY whole, attr_value"
    )


def _outer_metrics(metrics: Sequence[str]) -> str:
    return ", ".join(f"sum(x_{name}) AS {name}" for name in metrics)


TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _shape(
    filters: Filters, keys: Sequence[str], tiers: Mapping[int, Table], metrics: Sequence[str]
) -> tuple[Hashable, ...]:
    """What, besides the time ranges, makes two aggregate queries return the same rows."""
    return (
        filters.tenant,
        filters.source,
        filters.source_id,
        filters.search if filters.matches is None else filters.matches,
        filters.attributes,
        tuple(keys),
        tuple(table.name for table in tiers.values()),
        tuple(metrics),
    )


def _tiers_for(
    filters: Filters, keys: Sequence[str], tiers: Mapping[int, Table]
) -> Mapping[int, Table]:
    """The rollups that can answer ``keys`` under ``filters`` exactly (``tiers`` if nothing
    stands in the way); RAW_ONLY where none can.

    An attribute rollup row holds one key's value of many calls: it answers one attr
    filter, a breakdown by one key (under a filter on that same key at most) or the list
    of keys, never two keys of one call together, nor anything per entity.
    """
    grouped = _grouped_attribute(keys)
    if grouped is not None or "attr_key" in keys:
        same_key = all(k == grouped for k, _ in filters.attributes)
        return ATTRIBUTES if same_key and not filters.per_entity else RAW_ONLY
    if filters.attributes:
        one = len(filters.attributes) == 1 and not filters.per_entity and tiers is not DETAILED
        return ATTRIBUTES if one else RAW_ONLY
    return DETAILED if filters.per_entity else tiers


def _finest(tiers: Mapping[int, Table]) -> Mapping[int, Table]:
    """Only the finest grain of ``tiers`` (RAW_ONLY if none): for a window's recent part."""
    return {min(tiers): tiers[min(tiers)]} if tiers else RAW_ONLY


def _merge(parts: Sequence[Sequence[Sequence[Any]]], width: int) -> list[Sequence[Any]]:
    """Rows of several parts summed per key (the first ``width`` columns)."""
    filled = [rows for rows in parts if rows]
    if len(filled) <= 1:
        return list(filled[0]) if filled else []
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for rows in filled:
        for row in rows:
            key = tuple(row[:width])
            known = merged.get(key)
            if known is None:
                merged[key] = list(row)
            else:
                for i in range(width, len(row)):
                    known[i] += row[i]
    return list(merged.values())


@dataclass(frozen=True)
class Ranking:
    """Every entity of a settled part, best first, as ``top`` orders them in SQL.

    Rows are (source, source_id, *METRICS), in ClickHouse's order (see :func:`_order_by`).
    """

    by: TopBy
    rows: Sequence[Sequence[Any]]
    by_key: dict[tuple[str, str], Sequence[Any]]

    @classmethod
    def of(cls, ordered: Sequence[Sequence[Any]], by: TopBy) -> Ranking:
        return cls(by, ordered, {(str(r[0]), str(r[1])): r for r in ordered})

    def top(self, live: Sequence[Sequence[Any]], limit: int) -> list[Sequence[Any]]:
        """The best ``limit`` once ``live`` rows are added: an entity without live rows
        keeps its settled total, so only the best ``limit`` of those can make the list."""
        recent = {(str(r[0]), str(r[1])): r for r in live}
        candidates: list[Sequence[Any]] = []
        for row in self.rows:
            if len(candidates) == limit:
                break
            if (str(row[0]), str(row[1])) not in recent:
                candidates.append(row)
        for key, row in recent.items():
            known = self.by_key.get(key)
            candidates.append(_merge([[known], [row]], 2)[0] if known else row)
        candidates.sort(key=lambda row: _rank_key(row, self.by))
        return candidates[:limit]


def _order_by(by: TopBy) -> str:
    """The top list's order: most cost (or tokens) first, then source and id."""
    metric = "cost_usd" if by == "cost" else " + ".join(TOKENS)
    return f" ORDER BY {metric} DESC, source, source_id"


_METRIC_AT = {name: 2 + i for i, name in enumerate(METRICS)}


def _rank_key(row: Sequence[Any], by: TopBy) -> tuple[Any, ...]:
    """ORDER BY metric DESC, source (enum order), source_id of a (source, source_id, ...)."""
    if by == "cost":
        metric = row[_METRIC_AT["cost_usd"]]
    else:
        metric = sum(row[_METRIC_AT[name]] for name in TOKENS)
    return (-metric, SOURCE_RANK[str(row[0])], str(row[1]))


class UsageRepository:
    """Every query the API makes, for one tenant at a time (``Filters.tenant``)."""

    def __init__(
        self,
        db: ClickHouse,
        *,
        cache: SettledCache | None = None,
        settle_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._cache = cache or SettledCache(0)
        self.shared_reads = SharedReads()
        self._settle_s = settle_s
        self._clock = clock
        # Independent single queries of one request run side by side here. A task in this
        # pool never waits for another one in it (that deadlocks once every thread waits):
        # whole methods that do, such as a records page's total, run in ``_methods``.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="usage-query")
        self._methods = ThreadPoolExecutor(max_workers=16, thread_name_prefix="usage-method")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._methods.shutdown(wait=False, cancel_futures=True)

    def records_page(
        self,
        window: Window,
        filters: Filters,
        *,
        limit: int,
        offset: int = 0,
        after: tuple[int, str] | None = None,
    ) -> tuple[list[Record], int]:
        """A page of :meth:`records` and the window's total, queried concurrently."""
        total = self._methods.submit(self.count, window, filters)
        rows = self.records(window, filters, limit=limit, offset=offset, after=after)
        return rows, total.result()

    def _grouped(
        self,
        window: Window,
        filters: Filters,
        keys: Sequence[str],
        *,
        tiers: Mapping[int, Table] = COMPACT,
        metrics: Sequence[str] = METRICS,
        ranges: Sequence[Range] | None = None,
        raw_grain: int = QUARTER,
    ) -> list[Sequence[Any]]:
        """Rows of ``keys`` + ``metrics``; ``tiers`` answer unless a search needs source_id.

        Settled whole hours come from the cache when their version allows; the rest is
        queried, and both are summed per key.
        """
        tiers = _tiers_for(filters, keys, tiers)
        ranges = list(ranges or [(window.start_ms, window.end_ms)])
        settled, recent = self._split(window, filters, ranges)
        if not settled:
            return list(self._query(ranges, filters, keys, tiers, metrics, raw_grain))
        version = self._pool.submit(self._shared_version, filters, settled)
        live = self._live(recent, filters, keys, tiers, metrics, raw_grain)

        def read_settled() -> tuple[list[Sequence[Any]], int]:
            rows = list(self._query(settled, filters, keys, tiers, metrics, raw_grain))
            return rows, len(rows)

        key = ("grouped", *_shape(filters, keys, tiers, metrics), tuple(settled))
        cached: list[Sequence[Any]] = self._cached(key, version.result(), read_settled)
        return _merge([cached, live.result() if live else []], len(keys))

    def _cached(self, key: Hashable, version: Version, read: Callable[[], tuple[Any, int]]) -> Any:
        """The cache's value of ``key`` at ``version``; else ``read()``'s (value, rows), kept."""
        value = self._cache.get(key, version)
        if value is None:
            value, rows = read()
            self._cache.put(key, version, value, rows)
        return value

    def _split(
        self, window: Window, filters: Filters, ranges: Sequence[Range]
    ) -> tuple[list[Range], list[Range]]:
        """(settled, recent) parts of ``ranges``: none settled without a cache.

        Settled pieces end with the last whole hour before now (the current hour is being
        written) and are whole 15-minute slots (any zone's buckets are whole slots).
        """
        if not self._cache.enabled or (filters.search and filters.matches is None):
            # a search answered by a subquery depends on names, which the version ignores
            return [], list(ranges)
        boundary = min(window.end_ms, int(self._clock() * 1000)) // HOUR * HOUR
        return split_settled(ranges, boundary, QUARTER)

    def _live(
        self,
        ranges: Sequence[Range],
        filters: Filters,
        keys: Sequence[str],
        tiers: Mapping[int, Table],
        metrics: Sequence[str],
        raw_grain: int,
    ) -> Future[Sequence[Sequence[Any]]] | None:
        """The recent part's rows, queried beside the version check (None if no part).

        The recent part spans little more than an hour, so only the finest grain reads it:
        one rollup with small granules and the raw table, fewer tables touched per request.
        """
        if not ranges:
            return None
        finest = {min(tiers): tiers[min(tiers)]} if tiers else RAW_ONLY
        return self._pool.submit(self._query, ranges, filters, keys, finest, metrics, raw_grain)

    def _query(
        self,
        ranges: Sequence[Range],
        filters: Filters,
        keys: Sequence[str],
        tiers: Mapping[int, Table],
        metrics: Sequence[str],
        raw_grain: int,
        tail: str = "",
        params: _Params | None = None,
    ) -> Sequence[Sequence[Any]]:
        """One query: the UNION ALL over ``ranges``, summed per key (then ``tail``)."""
        params = params or _Params()
        inner = _aggregate_sql(
            ranges,
            filters,
            keys,
            tiers=tiers,
            metrics=metrics,
            raw_grain=raw_grain,
            params=params,
        )
        outer = [_outer_key(key) for key in keys]
        columns = [column for column, _ in outer]
        group = f" GROUP BY {', '.join(name for _, name in outer)}" if keys else ""
        sql = f"SELECT {', '.join([*columns, _outer_metrics(metrics)])} FROM ({inner}){group}{tail}"
        return self._db.rows(sql, params.values)

    def _shared_version(self, filters: Filters, ranges: Sequence[Range]) -> Version:
        """:meth:`version`, shared with the requests that came in together."""
        lo, hi = min(a for a, _ in ranges) // HOUR * HOUR, max(b for _, b in ranges)
        return self.shared_reads.read(
            (filters.tenant, lo, hi),
            filters.asked_at,
            lambda: self.version(filters.tenant, lo, hi),
        )

    def version(self, tenant: str, start_ms: int, end_ms: int) -> Version:
        """The ingest version of the hours that start in ``[start_ms, end_ms)``, in one
        small query.

        ``ingest_activity`` holds the last write per tenant and event-time hour: a
        materialized view on every insert into ``usage_events`` writes it, and a reprice
        marks the hours whose rollups it changed.
        """
        params = _Params()
        t = params.bind(tenant, "String")
        lo = params.bind(start_ms // 1000, "Int64")
        hi = params.bind(end_ms // 1000, "Int64")
        rows = self._db.rows(
            "SELECT sum(cityHash64(hour, last)), count(), toUnixTimestamp64Milli(max(last)),"
            " toUnixTimestamp64Milli(now64(3))"
            " FROM (SELECT hour, max(last_ingested_at) AS last FROM ingest_activity"
            f" WHERE tenant_id = {t} AND hour >= toDateTime({lo}, 'UTC')"
            f" AND hour < toDateTime({hi}, 'UTC') GROUP BY hour)",
            params.values,
        )
        hashed, hours, last_ms, now_ms = (int(v) for v in rows[0])
        settled = now_ms - last_ms >= self._settle_s * 1000
        return Version((hashed, hours), settled)

    def resolve_search(self, filters: Filters) -> Filters:
        """``filters`` with the search resolved to its (source, source_id) matches, once."""
        if not filters.search:
            return filters
        params = _Params()
        rows = self._db.rows(
            f"SELECT toString(source), source_id FROM ({_matching_sources(filters, params)})"
            f" LIMIT {params.bind(MAX_BOUND_MATCHES + 1, 'UInt32')}",
            params.values,
        )
        if len(rows) > MAX_BOUND_MATCHES:
            return filters
        matches = tuple(sorted((str(s), str(i)) for s, i in rows))
        return replace(filters, matches=matches)

    def totals(self, window: Window, filters: Filters) -> Totals:
        """The window's totals from the smallest rollups (per source)."""
        rows = self._grouped(window, filters, [])
        return Totals.from_row(rows[0]) if rows else Totals()

    def summary(self, window: Window, filters: Filters) -> SummaryTotals:
        """Totals and unpriced models in one query over the per-model rollups (and, beside
        it, when the window's calls were last repriced)."""
        repriced = self._pool.submit(self.last_repriced, window, filters.tenant)
        rows = self._grouped(window, filters, ["model"], tiers=MODELS, metrics=MODEL_METRICS)
        totals = Totals()
        unpriced: list[tuple[str, int]] = []
        for row in rows:
            model = Totals.from_row(row[1:], MODEL_METRICS)
            totals.add(model)
            if model.unpriced_calls:
                unpriced.append((str(row[0]), model.unpriced_calls))
        unpriced.sort(key=lambda item: (-item[1], item[0]))
        return SummaryTotals(totals, unpriced, repriced.result())

    def last_repriced(self, window: Window, tenant: str) -> datetime | None:
        """When a finished reprice last changed calls of ``tenant`` that may be in ``window``."""
        params = _Params()
        t = params.bind(tenant, "String")
        start = params.bind(window.start.astimezone(UTC).date(), "Date")
        end = params.bind(window.end.astimezone(UTC).date(), "Date")
        rows = self._db.rows(
            "SELECT max(at), count() FROM reprice_runs WHERE step = 'finished' AND calls > 0"
            f" AND tenant_id IN ({t}, '') AND (from_day IS NULL OR from_day <= {end})"
            f" AND (to_day IS NULL OR to_day >= {start})",
            params.values,
        )
        if not rows or not rows[0][1]:
            return None
        moment: datetime = rows[0][0]
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def by_model(self, window: Window, filters: Filters) -> list[ModelUsage]:
        """Cost per model and price tier, most expensive first."""
        rows = self._grouped(
            window, filters, ["model", "price_tier"], tiers=MODELS, metrics=MODEL_METRICS
        )
        items = [
            ModelUsage(str(r[0]), str(r[1]), Totals.from_row(r[2:], MODEL_METRICS)) for r in rows
        ]
        items.sort(key=lambda i: by_cost(i.totals, i.model, i.price_tier))
        return items

    def by_source(self, window: Window, filters: Filters) -> dict[str, Totals]:
        rows = self._grouped(window, filters, ["source"])
        found = {str(row[0]): Totals.from_row(row[1:]) for row in rows}
        wanted = [filters.source] if filters.source else list(SOURCES)
        return {source: found.get(source, Totals()) for source in wanted}

    def timeseries(
        self, window: Window, buckets: Sequence[Bucket], filters: Filters
    ) -> list[Totals]:
        ranges = sorted(rng for bucket in buckets for rng in bucket.ranges)
        rows = self._grouped(
            window,
            filters,
            ["t"],
            ranges=ranges,
            raw_grain=raw_resolution(buckets, window),
        )
        index = BucketIndex(buckets, window)
        points = [Totals() for _ in buckets]
        for row in rows:
            points[index.find(int(row[0]))].add(Totals.from_row(row[1:]))
        return points

    def top(self, window: Window, filters: Filters, by: TopBy, limit: int) -> list[TopItem]:
        """The ``limit`` entities with the most cost or tokens, ties by source and id.

        Settled hours are ranked once and kept (every entity, in order); a request then
        only adds the entities of the recent part: the best of the others keep their rank.
        """
        keys = ["source", "source_id"]
        tiers = _tiers_for(filters, keys, DETAILED)
        span = [(window.start_ms, window.end_ms)]
        settled, recent = self._split(window, filters, span)
        rows: Sequence[Sequence[Any]]
        if settled:
            version = self._pool.submit(self._shared_version, filters, settled)
            live = self._live(recent, filters, keys, tiers, METRICS, QUARTER)

            def rank_settled() -> tuple[Ranking, int]:
                tail = _order_by(by)
                ordered = self._query(settled, filters, keys, tiers, METRICS, QUARTER, tail)
                return Ranking.of(ordered, by), len(ordered)

            key = ("top", by, *_shape(filters, keys, tiers, METRICS), tuple(settled))
            ranking: Ranking = self._cached(key, version.result(), rank_settled)
            rows = ranking.top(live.result() if live else [], limit)
        else:
            params = _Params()
            tail = f"{_order_by(by)} LIMIT {params.bind(limit, 'UInt32')}"
            rows = self._query(span, filters, keys, tiers, METRICS, QUARTER, tail, params)
        names = self.latest_names(filters.tenant, [(str(r[0]), str(r[1])) for r in rows])
        return [
            TopItem(
                source=str(row[0]),
                source_id=str(row[1]),
                name=names.get((str(row[0]), str(row[1])), ""),
                totals=Totals.from_row(row[2:]),
            )
            for row in rows
        ]

    def breakdown(
        self, window: Window, filters: Filters, by: BreakdownBy, key: str | None = None
    ) -> list[Group]:
        """Every group of ``by`` (attribute ``key`` for ``attr``), most cost first, then
        most calls, then key.

        By an attribute, the calls without it are one group (key None, listed when it has
        calls): see :meth:`_attribute_groups`.
        """
        if by == "attr":
            if key is None:
                raise ValueError("a breakdown by attribute needs its key")
            groups = self._attribute_groups(window, filters, key)
        else:
            keys, tiers = (["source"], COMPACT) if by == "source" else (["model"], MODELS)
            rows = self._grouped(window, filters, keys, tiers=tiers)
            groups = [Group(str(row[0]), Totals.from_row(row[1:])) for row in rows]
        groups.sort(key=lambda g: by_cost(g.totals, g.key is None, g.key or ""))
        return groups

    def _attribute_groups(self, window: Window, filters: Filters, key: str) -> list[Group]:
        """The values of attribute ``key`` and, as key None, the calls without it.

        A call without attributes has no rollup row, so "without" is the window's whole
        minus its values' groups, both read by one statement (:func:`_breakdown_sql`), so
        from one snapshot of the tables: an insert landing while the request runs is in both
        or in neither. (Only the instant at which one insert's views commit, one after the
        other, could still split it: the gap the cache's settle delay covers.) Settled
        hours come from the cache as in :meth:`_grouped` (one statement for them, kept
        together; one for the recent part): each part's "without" is exact, so their sum is.
        """
        keys = [attr_group(key)]
        by_value = _tiers_for(filters, keys, ATTRIBUTES)
        whole = _tiers_for(filters, [], COMPACT)
        span = [(window.start_ms, window.end_ms)]

        def read(
            ranges: Sequence[Range], groups: Mapping[int, Table], total: Mapping[int, Table]
        ) -> list[Sequence[Any]]:
            params = _Params()
            sql = _breakdown_sql(
                ranges, filters, key, groups=groups, whole=total, metrics=METRICS, params=params
            )
            return list(self._db.rows(sql, params.values))

        settled, recent = self._split(window, filters, span)
        if not settled:
            rows = read(span, by_value, whole)
        else:
            version = self._pool.submit(self._shared_version, filters, settled)
            live = (  # the recent part from the finest grain only, as in _live
                self._pool.submit(read, recent, _finest(by_value), _finest(whole))
                if recent
                else None
            )

            def read_settled() -> tuple[list[Sequence[Any]], int]:
                found = read(settled, by_value, whole)
                return found, len(found)

            shape = _shape(filters, ["whole", *keys], by_value, METRICS)
            cache_key = ("breakdown", *shape, tuple(t.name for t in whole.values()), tuple(settled))
            cached = self._cached(cache_key, version.result(), read_settled)
            rows = _merge([cached, live.result() if live else []], 2)
        groups: list[Group] = []
        rest = Totals()
        for row in rows:
            totals = Totals.from_row(row[2:])
            if int(row[0]):
                rest.add(totals)
            else:
                groups.append(Group(str(row[1]), totals))
        for group in groups:
            rest.subtract(group.totals)
        if rest.calls > 0:
            groups.append(Group(None, rest))
        return groups

    def attributes(self, window: Window, filters: Filters, top: int) -> list[AttributeUsage]:
        """The attribute keys of the window's calls, by name: each with its number of
        distinct values, its calls and its ``top`` values by cost (then calls, value)."""
        rows = self._grouped(window, filters, list(_LISTING), tiers=ATTRIBUTES)
        per_key: dict[str, list[tuple[str, Totals]]] = {}
        for row in rows:
            per_key.setdefault(str(row[0]), []).append((str(row[1]), Totals.from_row(row[2:])))
        found = []
        for name in sorted(per_key):
            values = per_key[name]
            totals = Totals()
            for _, value_totals in values:
                totals.add(value_totals)
            values.sort(key=lambda item: by_cost(item[1], item[0]))
            found.append(AttributeUsage(name, len(values), totals, values[:top]))
        return found

    def latest_names(
        self, tenant: str, ids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Latest name of each (source, source_id), from ``source_names``."""
        if not ids:
            return {}
        params = _Params()
        rows = self._db.rows(
            "SELECT toString(source), source_id, argMax(source_name, named_at)"
            f" FROM source_names WHERE tenant_id = {params.bind(tenant, 'String')}"
            f" AND source_id IN {params.bind(sorted({i for _, i in ids}), 'Array(String)')}"
            " GROUP BY source, source_id",
            params.values,
        )
        return {(str(s), str(i)): str(n) for s, i, n in rows}

    def count(self, window: Window, filters: Filters) -> int:
        """Calls in the window: the records table's total, from rollups."""
        return self.totals(window, filters).calls

    def records(
        self,
        window: Window,
        filters: Filters,
        *,
        limit: int,
        offset: int = 0,
        after: tuple[int, str] | None = None,
    ) -> list[Record]:
        """Calls newest first; ``after`` = (occurred_at ms, event_id) of the last row seen."""
        params = _Params()
        where = _filter_conditions(filters, params)
        where.append(_span_condition(None, (window.start_ms, window.end_ms), params))
        if after is not None:
            at = params.bind(after[0], "Int64")
            event_id = params.bind(after[1], "UUID")
            where.append(f"occurred_at <= fromUnixTimestamp64Milli({at}, 'UTC')")
            where.append(
                f"(occurred_at, event_id) < (fromUnixTimestamp64Milli({at}, 'UTC'), {event_id})"
            )
        sql = (
            "SELECT toString(event_id), toString(source), source_id, source_name, model,"
            " input_tokens, output_tokens, cache_creation_input_tokens,"
            " cache_read_input_tokens, cost_usd, priced, toString(status), duration_ms,"
            " toUnixTimestamp64Milli(occurred_at), attributes"
            f" FROM usage_events WHERE {' AND '.join(where)}"
            " ORDER BY occurred_at DESC, event_id DESC"
            f" LIMIT {params.bind(limit, 'UInt32')} OFFSET {params.bind(offset, 'UInt64')}"
        )
        rows = self._db.rows(sql, params.values)
        names = self.latest_names(filters.tenant, [(str(r[1]), str(r[2])) for r in rows])
        return [
            Record(
                event_id=str(r[0]),
                source=str(r[1]),
                source_id=str(r[2]),
                name=names.get((str(r[1]), str(r[2])), str(r[3])),
                model=str(r[4]),
                input_tokens=int(r[5]),
                output_tokens=int(r[6]),
                cache_creation_input_tokens=int(r[7]),
                cache_read_input_tokens=int(r[8]),
                cost_usd=Decimal(r[9]),
                priced=bool(r[10]),
                status=str(r[11]),
                duration_ms=int(r[12]),
                occurred_at_ms=int(r[13]),
                attributes=dict(sorted(r[14].items())),
            )
            for r in rows
        ]

    def records_csv(self, window: Window, filters: Filters, *, max_seconds: int) -> Iterator[bytes]:
        """Every call of the window as CSV (see :data:`RECORDS_CSV_COLUMNS`), newest first,
        in chunks as ClickHouse writes them: the API never holds more than one chunk.

        The same calls as :meth:`records` (its filters, its order, its latest names). The
        query starts before this returns, so a failure up to the first chunk raises
        :class:`~query_api.db.Unavailable` here; a later one, from the iterator.
        """
        params = _Params()
        sql = _records_csv_sql(window, filters, params)
        settings = {**CSV_SETTINGS, "max_execution_time": max_seconds}
        return _prefixed(RECORDS_CSV_HEADER, self._db.stream(sql, params.values, settings=settings))


# A cell a spreadsheet would read as a formula (OWASP's CSV-injection rule): text that
# producers or users chose and that starts with one of these gets a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _neutralised(expr: str) -> str:
    """``expr`` (a String) with a leading ``'`` where it would start a formula."""
    starts = ", ".join(
        "'" + c.replace("\t", "\\t").replace("\r", "\\r") + "'" for c in FORMULA_STARTS
    )
    return f"if(substring({expr}, 1, 1) IN ({starts}), concat('\\'', {expr}), {expr})"


# records.csv: (header, expression over usage_events; ``latest_names`` are the names of
# source_names). Times are UTC ISO 8601 with milliseconds; money is the exact
# Decimal(38, 12) with all 12 places (as the JSON API writes it); attributes are one JSON
# object, keys sorted.
RECORDS_CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("occurred_at", "concat(replaceOne(toString(occurred_at, 'UTC'), ' ', 'T'), 'Z')"),
    ("event_id", "toString(event_id)"),
    ("source", "toString(source)"),
    ("source_id", _neutralised("source_id")),
    (
        "name",
        _neutralised("transform((source, source_id), latest_names.1, latest_names.2, source_name)"),
    ),
    ("model", _neutralised("model")),
    ("price_tier", "price_tier"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_write_tokens", "cache_creation_input_tokens"),
    ("cache_read_tokens", "cache_read_input_tokens"),
    ("web_search_requests", "web_search_requests"),
    ("cost_usd", "cost_usd"),
    ("tool_cost_usd", "tool_cost_usd"),
    ("priced", "priced"),
    ("status", "toString(status)"),
    ("duration_ms", "duration_ms"),
    ("request_id", _neutralised("request_id")),
    ("attributes", "toJSONString(mapSort(attributes))"),
)
# The header row, quoted as ClickHouse quotes the strings of the rows (CRLF: RFC 4180).
RECORDS_CSV_HEADER = (",".join(f'"{name}"' for name, _ in RECORDS_CSV_COLUMNS) + "\r\n").encode()
CSV_SETTINGS: dict[str, Any] = {
    "output_format_decimal_trailing_zeros": 1,  # 0.100000000000, not 0.1
    "output_format_json_escape_forward_slashes": 0,  # attribute values as they were sent
    "output_format_csv_crlf_end_of_line": 1,  # RFC 4180
}


def _records_csv_sql(window: Window, filters: Filters, params: _Params) -> str:
    """The records.csv query (rows only, ``FORMAT CSV``): the window's calls filtered by
    :func:`_filter_conditions` and ordered as :meth:`UsageRepository.records` does, with
    the latest names of their conversations and agents.

    The order is the raw table's sort key, so ClickHouse reads the parts in (reverse) order
    and sends the first rows at once instead of sorting the whole window first. The names
    are a constant lookup: the latest name of every entity with calls in the window, read
    once before the rows (``transform`` keeps the call's own name for entities without one,
    as :meth:`UsageRepository.records` does). Output columns are named ``c_*`` so that no
    alias shadows a column the filters or the order read.
    """
    span = (window.start_ms, window.end_ms)
    where = " AND ".join(
        [*_filter_conditions(filters, params), _span_condition(None, span, params)]
    )
    tenant = params.bind(filters.tenant, "String", share="tenant")
    names = (
        "SELECT (groupArray(entity), groupArray(latest)) FROM (SELECT (source, source_id)"
        " AS entity, argMax(source_name, named_at) AS latest FROM source_names"
        f" WHERE tenant_id = {tenant} AND source_id IN (SELECT source_id FROM usage_events"
        f" WHERE {where}) GROUP BY source, source_id)"
    )
    columns = ", ".join(f"{expr} AS c_{name}" for name, expr in RECORDS_CSV_COLUMNS)
    return (
        f"WITH ({names}) AS latest_names SELECT {columns} FROM usage_events WHERE {where}"
        " ORDER BY occurred_at DESC, event_id DESC FORMAT CSV"
    )


def _prefixed(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first``, then ``rest``; closing this closes ``rest`` (its ClickHouse response)."""
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()
