"""One set of migration files, two layouts: a single node, or a cluster (issue 9)."""

from __future__ import annotations

import re

import pytest

from llm_usage.clickhouse.migrations import (
    Layout,
    MigrationError,
    bookkeeping_statements,
    cluster_problems,
    discover,
    render,
)
from llm_usage.settings import Settings

SINGLE = Settings()
CLUSTER = Settings(clickhouse_cluster="prod")
QUERIED = {"usage_events", "usage_hourly", "usage_daily", "source_names"}


def _created(statements: list[str]) -> dict[str, str]:
    """name -> statement of every CREATE TABLE / MATERIALIZED VIEW."""
    found = {}
    for s in statements:
        m = re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS \w+\.(\w+)", s)
        if m:
            found[m.group(1)] = s
    return found


@pytest.mark.parametrize("migration", discover(), ids=lambda m: m.path.name)
def test_single_node_rendering_has_no_cluster_sql(migration) -> None:  # type: ignore[no-untyped-def]
    for statement in migration.statements(SINGLE):
        for word in ("ON CLUSTER", "Replicated", "_local", "Distributed", "@cluster-only"):
            assert word not in statement, f"{migration.path.name}: {word} on a single node"


@pytest.mark.parametrize("migration", discover(), ids=lambda m: m.path.name)
def test_cluster_rendering_follows_the_rules(migration) -> None:  # type: ignore[no-untyped-def]
    layout = Layout.of(CLUSTER)
    statements = migration.statements(CLUSTER)
    assert cluster_problems(statements, layout) == []
    single = _created(migration.statements(SINGLE))
    cluster = _created(statements)
    for name, ddl in single.items():
        if "MergeTree" in ddl:  # a storage table: local + Distributed under the same name
            assert re.search(r"ENGINE = Replicated\w*MergeTree", cluster[f"{name}_local"])
            assert "ENGINE = Distributed('prod', llm_usage, " + f"{name}_local" in cluster[name]
        elif "MATERIALIZED VIEW" in ddl:  # views fire on the shard that got the insert
            assert re.search(r"TO llm_usage\.\w+_local AS", cluster[name]), name
            assert "FROM llm_usage.usage_events_local" in cluster[name], name
        assert "ON CLUSTER 'prod'" in cluster[name]


def test_the_tables_queries_use_exist_under_the_same_names_in_both_layouts() -> None:
    single: dict[str, str] = {}
    cluster: dict[str, str] = {}
    for migration in discover():
        single |= _created(migration.statements(SINGLE))
        cluster |= _created(migration.statements(CLUSTER))
    assert set(single) >= QUERIED and set(cluster) >= QUERIED
    for name in QUERIED:
        assert "MergeTree" in single[name] and "Distributed" in cluster[name]
    assert {n for n in cluster if not n.endswith("_local")} == set(single)


def test_bookkeeping_is_replicated_to_every_node_of_the_cluster() -> None:
    assert bookkeeping_statements(SINGLE)[1].endswith(
        "ENGINE = MergeTree ORDER BY version COMMENT 'Migrations applied by llm-usage migrate'"
    )
    create_db, create_table = bookkeeping_statements(CLUSTER)
    assert create_db == "CREATE DATABASE IF NOT EXISTS `llm_usage` ON CLUSTER 'prod'"
    path = re.search(r"ReplicatedMergeTree\('([^']+)', '([^']+)'\)", create_table)
    assert path and "{shard}" not in path.group(1) and "{shard}" in path.group(2)


def test_the_cluster_name_may_be_the_operator_macro() -> None:
    settings = Settings(clickhouse_cluster="{cluster}")
    statements = discover()[0].statements(settings)
    assert "ON CLUSTER '{cluster}'" in statements[0]
    with pytest.raises(ValueError, match="clickhouse_cluster"):
        Settings(clickhouse_cluster="x'; DROP")


BAD = """
CREATE TABLE IF NOT EXISTS ${database}.plain (x UInt8) ENGINE = MergeTree ORDER BY x;
CREATE TABLE IF NOT EXISTS ${database}.t${local} ${on_cluster} (x UInt8)
ENGINE = ReplacingMergeTree ORDER BY x;
ALTER TABLE ${database}.usage_events ${on_cluster} ADD INDEX i x TYPE minmax;
"""


def test_cluster_problems_catch_what_would_break_a_cluster() -> None:
    problems = cluster_problems(render(BAD, CLUSTER), Layout.of(CLUSTER))
    text = "\n".join(problems)
    assert "statement 1" in text and "DDL without ${on_cluster}" in text
    assert "storage table not named <name>${local}" in text
    assert "without the ${replicated} prefix" in text
    assert "storage table t_local has no '-- @cluster-only' Distributed table" in text
    assert "ALTER of a Distributed table" in text
    assert cluster_problems(render(BAD, SINGLE), Layout.of(SINGLE)) == []


def test_cluster_only_statements_and_placeholders() -> None:
    sql = "SELECT 1;\n-- @cluster-only\n-- why\nSELECT ${cluster};\nSELECT 3"
    assert render(sql, SINGLE) == ["SELECT 1", "SELECT 3"]
    assert render(sql, CLUSTER) == ["SELECT 1", "SELECT 'prod'", "SELECT 3"]
    with pytest.raises(MigrationError, match="must come before a statement"):
        render("SELECT 1,\n-- @cluster-only\n2", CLUSTER)
    with pytest.raises(MigrationError, match="bad placeholder"):
        render("SELECT ${nope}", SINGLE, name="x.sql")


def test_every_target_of_a_view_over_usage_events_deduplicates_inserts() -> None:
    """A replayed batch is dropped in raw and in every view's target only if each target
    keeps a deduplication window (DESIGN "Exactly once into ClickHouse, rollups included")."""
    statements = [s for m in discover() for s in m.statements(SINGLE)]
    created = _created(statements)
    targets = {
        m.group(1)
        for s in statements
        if (
            m := re.search(
                r"MATERIALIZED VIEW .*?TO \w+\.(\w+) AS\s.*FROM \w+\.usage_events\b", s, re.S
            )
        )
    }
    assert {"usage_hourly", "usage_daily", "ingest_activity"} <= targets
    for name in sorted(targets | {"usage_events"}):
        assert "non_replicated_deduplication_window" in created[name], name
