"""Migrations build the schema; materialized views fill the rollups; dedup tokens hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from llm_usage.clickhouse import apply_migrations, connect, pending_migrations
from llm_usage.clickhouse.migrations import apply_retention, discover
from llm_usage.settings import Settings

COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "cost_usd", "priced", "duration_ms", "status", "kafka_topic", "kafka_partition",
    "kafka_offset",
]  # fmt: skip


def _rows(n: int, start: datetime, offset0: int = 0) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(n):
        rows.append([
            uuid.uuid4(), "t1" if i % 3 else "t2", start + timedelta(minutes=7 * i),
            ("chat", "agent", "memory")[i % 3], f"src-{i % 4}", f"Name {i % 4} v{i}",
            "claude-sonnet-4-5", 100 + i, 10 + i, 5, 50, Decimal("0.000123456789") * (i + 1),
            i % 5 != 0, 1000 + i, "ok" if i % 7 else "error", "calls", 0, offset0 + i,
        ])  # fmt: skip
    return rows


def _totals(client, db: str) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    q = "SELECT count(), sum(calls), sum(input_tokens), sum(cost_usd) FROM {table}"
    raw = client.query(
        f"SELECT count(), sum(input_tokens), sum(cost_usd) FROM `{db}`.usage_events"
    ).result_rows[0]
    hourly = client.query(q.format(table=f"`{db}`.usage_hourly")).result_rows[0][1:]
    daily = client.query(q.format(table=f"`{db}`.usage_daily")).result_rows[0][1:]
    return {"raw": tuple(raw), "hourly": tuple(hourly), "daily": tuple(daily)}


def test_migrations_create_schema_and_are_idempotent(migrated: Settings) -> None:
    client = connect(migrated)
    tables = {row[0] for row in client.query("SHOW TABLES").result_rows}
    assert {"usage_events", "usage_hourly", "usage_daily", "source_names",
            "schema_migrations"} <= tables  # fmt: skip
    applied = client.query("SELECT version FROM schema_migrations ORDER BY version").result_rows
    assert [v for (v,) in applied] == [m.version for m in discover()]
    assert pending_migrations(client, migrated) == []
    assert apply_migrations(client, migrated) == []
    comments = client.query(
        "SELECT name, comment FROM system.columns WHERE database = currentDatabase()"
        " AND table = 'usage_events'"
    ).result_rows
    assert all(comment for _, comment in comments), "every raw column is documented"
    ddl = client.command("SHOW CREATE TABLE usage_events")
    assert "toIntervalDay(400)" in str(ddl) and "PARTITION BY toYYYYMM(occurred_at)" in str(ddl)


def test_retention_is_a_setting(migrated: Settings) -> None:
    client = connect(migrated)
    shorter = migrated.model_copy(update={"raw_retention_days": 30})
    assert apply_retention(client, shorter) is True
    assert "toIntervalDay(30)" in str(client.command("SHOW CREATE TABLE usage_events"))
    assert apply_retention(client, shorter) is False


def test_materialized_views_fill_rollups_exactly(migrated: Settings) -> None:
    client = connect(migrated)
    start = datetime(2026, 11, 1, 22, 0, tzinfo=UTC)
    rows = _rows(60, start)
    client.insert("usage_events", rows, column_names=COLUMNS)
    totals = _totals(client, migrated.clickhouse_database)
    expected_cost = sum((r[11] for r in rows), Decimal(0))
    expected_input = sum(int(r[7]) for r in rows)  # type: ignore[call-overload]
    assert totals["raw"] == (60, expected_input, expected_cost)
    assert totals["hourly"] == (60, expected_input, expected_cost)
    assert totals["daily"] == (60, expected_input, expected_cost)
    by_hour = client.query(
        "SELECT hour, sum(calls) FROM usage_hourly GROUP BY hour ORDER BY hour"
    ).result_rows
    brute = client.query(
        "SELECT toStartOfHour(occurred_at), count() FROM usage_events GROUP BY 1 ORDER BY 1"
    ).result_rows
    assert [(h.replace(tzinfo=None), c) for h, c in by_hour] == [
        (h.replace(tzinfo=None), c) for h, c in brute
    ]
    unpriced = client.command("SELECT sum(unpriced_calls) FROM usage_daily")
    assert unpriced == sum(1 for r in rows if not r[12])
    # latest name per source id
    names = dict(
        client.query(
            "SELECT source_id, argMax(source_name, named_at) FROM source_names GROUP BY source_id"
        ).result_rows
    )
    assert names["src-0"] == "Name 0 v56"


@pytest.mark.parametrize("token_mode", ["same-token", "new-token"])
def test_dedup_token_protects_raw_and_rollups(migrated: Settings, token_mode: str) -> None:
    client = connect(migrated)
    rows = _rows(40, datetime(2026, 11, 3, 5, 0, tzinfo=UTC))
    settings = {
        "insert_deduplication_token": "cluster-x:calls:0:0-39",
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    client.insert("usage_events", rows, column_names=COLUMNS, settings=settings)
    once = _totals(client, migrated.clickhouse_database)
    if token_mode == "new-token":
        settings = {**settings, "insert_deduplication_token": "cluster-y:calls:0:0-39"}
    client.insert("usage_events", rows, column_names=COLUMNS, settings=settings)
    twice = _totals(client, migrated.clickhouse_database)
    if token_mode == "same-token":
        assert twice == once  # replay dropped everywhere
    else:
        # a different token (e.g. a new broker cluster id) is a new, legitimate batch
        assert twice["hourly"][0] == 2 * once["hourly"][0]
        assert twice["daily"][0] == 2 * once["daily"][0]
