"""The reprice SQL builders: which views are cost rollups, how their deltas are formed."""

from __future__ import annotations

from datetime import date

from stream_processor.reprice.queries import Selection, delta_sql, rollup_of, target_of

HOURLY_CREATE = "CREATE MATERIALIZED VIEW db.usage_hourly_mv TO db.usage_hourly (...) AS SELECT"
HOURLY_SELECT = (
    "SELECT tenant_id, toStartOfHour(occurred_at) AS hour, model, count() AS calls,"
    " countIf(NOT priced) AS unpriced_calls, sum(cost_usd) AS cost_usd,"
    " max(occurred_at) AS last_occurred_at FROM db.usage_events GROUP BY tenant_id, hour, model"
)
HOURLY_COLUMNS = [
    ("tenant_id", "LowCardinality(String)"),
    ("hour", "DateTime('UTC')"),
    ("model", "LowCardinality(String)"),
    ("calls", "SimpleAggregateFunction(sum, UInt64)"),
    ("unpriced_calls", "SimpleAggregateFunction(sum, UInt64)"),
    ("cost_usd", "SimpleAggregateFunction(sum, Decimal(38, 12))"),
    ("last_occurred_at", "SimpleAggregateFunction(max, DateTime64(3, 'UTC'))"),
]


def test_a_cost_rollup_is_split_into_keys_sums_and_maxima() -> None:
    rollup = rollup_of("db", "usage_hourly_mv", HOURLY_SELECT, HOURLY_CREATE, HOURLY_COLUMNS)
    assert rollup is not None and rollup.target == "usage_hourly"
    assert rollup.keys == ("tenant_id", "hour", "model")
    assert [c for c, _ in rollup.sums] == ["calls", "unpriced_calls", "cost_usd"]
    assert rollup.others == ("last_occurred_at",)


def test_views_without_cost_columns_or_over_other_tables_are_not_rollups() -> None:
    names = [("tenant_id", "String"), ("source_name", "String"), ("named_at", "DateTime64(3)")]
    assert rollup_of("db", "names_mv", HOURLY_SELECT, HOURLY_CREATE, names) is None
    other = HOURLY_SELECT.replace("db.usage_events", "db.other")
    assert rollup_of("db", "x_mv", other, HOURLY_CREATE, HOURLY_COLUMNS) is None
    assert target_of("CREATE MATERIALIZED VIEW db.v AS SELECT 1") is None


def test_the_delta_adds_new_prices_and_subtracts_old_ones_per_key() -> None:
    rollup = rollup_of("db", "usage_hourly_mv", HOURLY_SELECT, HOURLY_CREATE, HOURLY_COLUMNS)
    assert rollup is not None
    sql = delta_sql("db", rollup, [("token_cost_usd", "cost_usd - tool_cost_usd")])
    assert sql.startswith("INSERT INTO db.usage_hourly (tenant_id, hour, model, calls,")
    assert "-toInt64(unpriced_calls) AS unpriced_calls" in sql  # counts may go down
    assert "-cost_usd AS cost_usd" in sql
    assert "max(last_occurred_at) AS last_occurred_at" in sql  # the same calls: unchanged
    assert "cost_usd - tool_cost_usd AS token_cost_usd" in sql  # recomputed from new prices
    assert sql.count("{run:String}") == 2 and "usage_events GROUP BY" not in sql
    assert sql.endswith("GROUP BY tenant_id, hour, model ORDER BY tenant_id, hour, model")


def test_a_selection_binds_every_value() -> None:
    where, params = Selection(("m1",), "acme", date(2026, 1, 1), date(2026, 1, 31)).where()
    assert "acme" not in where and "m1" not in where
    assert params == {"tenant": "acme", "models": ["m1"], "from_day": date(2026, 1, 1),
                      "end_day": date(2026, 2, 1)}  # fmt: skip
    assert Selection().where() == ("1", {})
