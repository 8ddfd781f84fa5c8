"""The SQL of a reprice run. Values from the command line only ever arrive bound.

Rollups are fed on insert, so updating ``usage_events`` alone would leave them stale. For
every rollup (each materialized view over ``usage_events``, found in ``system.tables``, so a
rollup added later is covered too) the run inserts *delta rows*: the view's own SELECT over
the repriced calls with their new prices, minus the same SELECT over them with their old
prices. Rollup columns are sums (``SimpleAggregateFunction(sum, ...)``), so adding the delta
rows makes them exactly what they would hold had the calls been priced so from the start.
A count that goes down (``unpriced_calls`` when a model gets a price) is inserted as a
negative number into a ``UInt64`` sum: ClickHouse sums unsigned integers modulo 2^64, so
every ``sum()`` of the column is exact. ``max()`` columns stay as they are (same calls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

# usage_events columns a reprice changes; reprice_values holds their new values. Its
# MATERIALIZED columns (token_cost_usd = cost_usd - tool_cost_usd) follow from them. The
# prompt-cache figures (migration 0019) are repriced like the cost: a call whose savings
# differ from its quote (0, stored before 0019) changes even when its cost does not.
REPRICED = ("cost_usd", "tool_cost_usd", "priced", "price_version", "cache_read_savings_usd",
            "cache_write_premium_usd")  # fmt: skip
# A view is a cost rollup when its target has one of these.
COST_COLUMNS = frozenset({"cost_usd", "token_cost_usd", "tool_cost_usd", "unpriced_calls"})
# What the pricing needs of each stored call (and its current prices, to compare).
STAGE_COLUMNS = (
    "event_id", "tenant_id", "occurred_at", "model", "input_tokens", "output_tokens",
    "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
    "cache_read_input_tokens", "service_tier", "speed", "inference_geo", "web_search_requests",
    "cost_usd", "token_cost_usd", *REPRICED[1:],
)  # fmt: skip
VALUE_COLUMNS = ("run_id", "event_id", "tenant_id", "occurred_at", "model", "old_cost_usd",
                 *REPRICED)  # fmt: skip
_SUM = re.compile(r"^SimpleAggregateFunction\(sum,\s*(.+)\)$")
_MAX = re.compile(r"^SimpleAggregateFunction\((?:max|min|any),")
_TARGET = re.compile(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?", re.IGNORECASE)
_INTEGER = re.compile(r"^U?Int\d+$")
# The same ClickHouse settings on every attempt: a delta insert re-sent after a crash forms
# the same blocks, so its insert_deduplication_token makes ClickHouse drop the repeat.
DELTA_SETTINGS: dict[str, Any] = {
    "max_threads": 1,
    "max_insert_threads": 1,
    "max_block_size": 65536,
    "min_insert_block_size_rows": 0,
    "min_insert_block_size_bytes": 0,
}


@dataclass(frozen=True)
class Selection:
    """Which stored calls a run reprices: every field narrows it, None means all."""

    models: tuple[str, ...] = ()
    tenant: str | None = None
    from_day: date | None = None
    to_day: date | None = None  # inclusive
    since: datetime | None = None  # catch-up passes: calls ingested from here on

    def where(self) -> tuple[str, dict[str, Any]]:
        """Condition on ``usage_events`` and its bound parameters."""
        conditions: list[str] = ["1"]
        params: dict[str, Any] = {}
        if self.tenant is not None:
            conditions.append("tenant_id = {tenant:String}")
            params["tenant"] = self.tenant
        if self.models:
            conditions.append("model IN {models:Array(String)}")
            params["models"] = list(self.models)
        if self.from_day is not None:
            conditions.append("occurred_at >= toDateTime64({from_day:Date}, 3, 'UTC')")
            params["from_day"] = self.from_day
        if self.to_day is not None:
            conditions.append("occurred_at < toDateTime64({end_day:Date}, 3, 'UTC')")
            params["end_day"] = self.to_day + timedelta(days=1)
        if self.since is not None:
            conditions.append("ingested_at >= {since:DateTime64(3, 'UTC')}")
            params["since"] = self.since
        return " AND ".join(conditions), params


@dataclass(frozen=True)
class Rollup:
    """A materialized view over usage_events and the table it feeds."""

    view: str
    target: str
    select: str  # the view's SELECT, reading from usage_events
    keys: tuple[str, ...]
    sums: tuple[tuple[str, str], ...]  # (column, type summed)
    others: tuple[str, ...]  # max/min/any columns: unchanged by a reprice

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.keys, *(c for c, _ in self.sums), *self.others)


def stage_sql(
    selection: Selection, after: tuple[str, datetime, Any] | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """One page of the selected calls in primary-key order, after the previous page's last.

    Pages (not one stream) so that the run can write between two reads on its connection.
    """
    where, params = selection.where()
    if after is not None:
        where += (
            " AND (tenant_id, occurred_at, event_id) >"
            " ({after_t:String}, {after_o:DateTime64(3, 'UTC')}, {after_e:UUID})"
        )
        params.update(after_t=after[0], after_o=after[1], after_e=after[2])
    columns = ", ".join(STAGE_COLUMNS)
    sql = (
        f"SELECT {columns} FROM usage_events WHERE {where}"
        f" ORDER BY tenant_id, occurred_at, event_id LIMIT {int(limit)}"
    )
    return sql, params


def count_sql(selection: Selection) -> tuple[str, dict[str, Any]]:
    where, params = selection.where()
    return f"SELECT count() FROM usage_events WHERE {where}", params


VIEWS_SQL = (
    "SELECT name, as_select, create_table_query FROM system.tables"
    " WHERE database = {db:String} AND engine = 'MaterializedView' ORDER BY name"
)
COLUMNS_SQL = (
    "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}"
    " ORDER BY position"
)
MATERIALIZED_SQL = (
    "SELECT name, default_expression FROM system.columns WHERE database = {db:String}"
    " AND table = 'usage_events' AND default_kind = 'MATERIALIZED' ORDER BY position"
)


def _from_usage_events(database: str) -> re.Pattern[str]:
    """``FROM db.usage_events`` (or its cluster-mode ``_local`` table) in a view's SELECT."""
    return re.compile(rf"\bFROM\s+`?{re.escape(database)}`?\.`?usage_events(?:_local)?`?\b")


def rollup_of(
    database: str, view: str, select: str, create: str, columns: list[tuple[str, str]]
) -> Rollup | None:
    """The view as a cost rollup of usage_events, or None (other source, no cost columns)."""
    source = _from_usage_events(database)
    target = _TARGET.search(create)
    if target is None or len(source.findall(select)) != 1:
        return None
    names = {name for name, _ in columns}
    if not names & COST_COLUMNS:
        return None
    keys, sums, others = [], [], []
    for name, ch_type in columns:
        summed = _SUM.match(ch_type)
        if summed:
            sums.append((name, summed.group(1)))
        elif _MAX.match(ch_type):
            others.append(name)
        else:
            keys.append(name)
    return Rollup(view, target.group(2), select, tuple(keys), tuple(sums), tuple(others))


def target_of(create: str) -> str | None:
    """The table a materialized view writes to (``TO db.table`` of its CREATE)."""
    match = _TARGET.search(create)
    return match.group(2) if match else None


def _negated(column: str, ch_type: str) -> str:
    if _INTEGER.match(ch_type):
        return f"-toInt64({column})"
    return f"-{column}"


def _plus(column: str, ch_type: str) -> str:
    return f"toInt64({column})" if _INTEGER.match(ch_type) else column


def delta_sql(database: str, rollup: Rollup, materialized: list[tuple[str, str]]) -> str:
    """INSERT of the rollup's delta rows for run ``{run:String}`` (new minus old prices).

    ``materialized`` are usage_events' MATERIALIZED columns (name, expression): ``*`` does
    not return them, so the old rows name them and the new rows compute them again from
    the new prices.
    """
    source = _from_usage_events(database)
    values = (
        f"SELECT event_id AS repriced_id, {', '.join(f'{c} AS new_{c}' for c in REPRICED)}"
        f" FROM {database}.reprice_values WHERE run_id = {{run:String}}"
    )
    replaced = ", ".join(f"new_{c} AS {c}" for c in REPRICED)
    computed = "".join(f", {expr} AS {name}" for name, expr in materialized)
    named = "".join(f", {name}" for name, _ in materialized)
    new_rows = (
        f"(SELECT *{computed} FROM (SELECT * REPLACE ({replaced})"
        f" FROM {database}.usage_events AS e"
        f" INNER JOIN ({values}) AS v ON e.event_id = v.repriced_id))"
    )
    old_rows = (
        f"(SELECT *{named} FROM {database}.usage_events WHERE event_id IN"
        f" (SELECT event_id FROM {database}.reprice_values WHERE run_id = {{run:String}}))"
    )
    with_new = source.sub(lambda _: f"FROM {new_rows} AS repriced", rollup.select)
    with_old = source.sub(lambda _: f"FROM {old_rows} AS repriced", rollup.select)
    plus = [*rollup.keys, *(f"{_plus(c, t)} AS {c}" for c, t in rollup.sums), *rollup.others]
    minus = [*rollup.keys, *(f"{_negated(c, t)} AS {c}" for c, t in rollup.sums),
             *rollup.others]  # fmt: skip
    summed = [*rollup.keys, *(f"sum({c}) AS {c}" for c, _ in rollup.sums),
              *(f"max({c}) AS {c}" for c in rollup.others)]  # fmt: skip
    keys = ", ".join(rollup.keys)
    return (
        f"INSERT INTO {database}.{rollup.target} ({', '.join(rollup.columns)})"
        f" SELECT {', '.join(summed)} FROM ("
        f"SELECT {', '.join(plus)} FROM ({with_new})"
        f" UNION ALL SELECT {', '.join(minus)} FROM ({with_old})"
        f") GROUP BY {keys} ORDER BY {keys}"
    )


def activity_sql(database: str) -> str:
    """Marks the hours of a run's calls as written in ``ingest_activity``, as an insert into
    ``usage_events`` does: the query API's cache of settled hours drops what it holds for
    them, and the alerter looks at them again."""
    return (
        f"INSERT INTO {database}.ingest_activity"
        " (tenant_id, hour, last_ingested_at, last_occurred_at)"
        " SELECT tenant_id, toStartOfHour(occurred_at) AS hour, now64(3), max(occurred_at)"
        f" FROM {database}.reprice_values WHERE run_id = {{run:String}} GROUP BY tenant_id, hour"
    )


def join_table(database: str, run_id: str) -> str:
    return f"{database}.reprice_join_{run_id}"


def join_ddl(database: str, run_id: str) -> list[str]:
    """A Join table of the run's new prices by event_id, for the raw-table mutation."""
    table = join_table(database, run_id)
    return [
        f"DROP TABLE IF EXISTS {table} SYNC",
        f"CREATE TABLE {table} (event_id UUID, cost_usd Decimal(38, 12),"
        " tool_cost_usd Decimal(38, 12), priced Bool, price_version String,"
        " cache_read_savings_usd Decimal(38, 12), cache_write_premium_usd Decimal(38, 12))"
        " ENGINE = Join(ANY, LEFT, event_id)",
        f"INSERT INTO {table} SELECT event_id, {', '.join(REPRICED)}"
        f" FROM {database}.reprice_values WHERE run_id = {{run:String}}",
    ]


def mutation_sql(database: str, run_id: str, selection: Selection) -> tuple[str, dict[str, Any]]:
    """ALTER UPDATE of the run's calls in usage_events to their new prices."""
    table = join_table(database, run_id)
    sets = ", ".join(f"{c} = joinGet('{table}', '{c}', event_id)" for c in REPRICED)
    where, params = Selection(tenant=selection.tenant, from_day=selection.from_day,
                              to_day=selection.to_day).where()  # fmt: skip
    sql = (
        f"ALTER TABLE {database}.usage_events UPDATE {sets}"
        f" WHERE {where} AND event_id IN (SELECT event_id FROM {database}.reprice_values"
        " WHERE run_id = {run:String})"
    )
    return sql, params
