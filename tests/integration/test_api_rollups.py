"""Migrations 0010's and 0011's compact rollups (per source; per source, model and price
tier): exact, replay-safe, and backfilled from existing rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.settings import Settings
from tests.integration.test_api_oracle import COLUMNS, generate

pytestmark = pytest.mark.integration

RAW = (
    "SELECT count(), sum(input_tokens), sum(cost_usd), countIf(NOT priced)"
    " FROM usage_events WHERE tenant_id = 't'"
)
COMPACT = (
    "SELECT sum(calls), sum(input_tokens), sum(cost_usd), sum(unpriced_calls)"
    " FROM {table} WHERE tenant_id = 't'"
)


def _totals(client, table: str) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    return tuple(client.query(COMPACT.format(table=table)).result_rows[0])


def test_compact_rollups_equal_raw_and_drop_replayed_blocks(migrated: Settings) -> None:
    client = connect(migrated)
    rows = generate("t", 500, seed=11)
    token = {
        "insert_deduplication_token": "cluster-1:calls:0:0-499",
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    for _ in range(2):  # the second insert is a replay of the same batch
        client.insert("usage_events", rows, column_names=COLUMNS, settings=token)
    raw = tuple(client.query(RAW).result_rows[0])
    assert raw[0] == 500
    assert _totals(client, "usage_api_15m") == raw
    assert _totals(client, "usage_api_daily") == raw
    per_model = (
        "SELECT model, price_tier, count(), sum(cost_usd), sum(tool_cost_usd),"
        " sum(toUInt64(web_search_requests)) FROM usage_events WHERE tenant_id = 't'"
        " GROUP BY ALL ORDER BY ALL"
    )
    want = client.query(per_model).result_rows
    assert len({r[1] for r in want}) == 4, "every price tier is in the data"
    for table in ("usage_api_models_15m", "usage_api_models_daily"):
        got = client.query(
            "SELECT model, price_tier, sum(calls), sum(cost_usd), sum(tool_cost_usd),"
            f" sum(web_search_requests) FROM {table} WHERE tenant_id = 't'"
            " GROUP BY ALL ORDER BY ALL"
        ).result_rows
        assert got == want, table
    slots = client.query(
        "SELECT toUnixTimestamp(slot) % 900, count() FROM usage_api_15m GROUP BY 1"
    ).result_rows
    assert [s for s, _ in slots] == [0]


def test_migration_backfills_rows_written_before_it(migrated: Settings) -> None:
    client = connect(migrated)
    client.insert("usage_events", generate("t", 300, seed=12), column_names=COLUMNS)
    # pretend 0010 was never applied: drop its objects and its bookkeeping row
    for name in ("usage_api_15m_mv", "usage_api_daily_mv", "usage_api_15m", "usage_api_daily"):
        client.command(f"DROP TABLE {name} SYNC")
    client.command("DELETE FROM schema_migrations WHERE version = 10")
    applied = apply_migrations(connect(migrated, database=""), migrated)
    assert [m.version for m in applied] == [10]
    raw = tuple(client.query(RAW).result_rows[0])
    assert _totals(client, "usage_api_15m") == raw
    assert _totals(client, "usage_api_daily") == raw
    # and new rows keep flowing through the recreated views
    client.insert(
        "usage_events",
        [[*r[:2], datetime(2026, 5, 1, tzinfo=UTC), *r[3:]] for r in generate("t", 10, seed=13)],
        column_names=COLUMNS,
    )
    assert _totals(client, "usage_api_15m") == tuple(client.query(RAW).result_rows[0])
