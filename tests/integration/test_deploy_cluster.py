"""Cluster mode (issue 9): the SQL parses on the real engine, and a two-shard cluster works.

No ClickHouse Keeper can run here (chdb-core's server has no ZooKeeper client and refuses
``ON CLUSTER``), so cluster mode is checked in two halves:

* every statement ``llm-usage migrate`` would send to a cluster (``ON CLUSTER``,
  ``Replicated*MergeTree``, ``Distributed``) is parsed by the ClickHouse engine with
  ``EXPLAIN AST``, so the cluster SQL cannot rot;
* two real ClickHouse servers form a two-shard cluster (``remote_servers``, TCP between
  them), the same migration files are rendered with ``Distributed`` tables over plain
  MergeTree storage tables and applied on each server (what ``ON CLUSTER`` fans out), and
  the pipeline's inserts and queries run against it unchanged: rows spread over both shards,
  the materialized views fill each shard's rollups, a replayed batch with the same dedup
  token is dropped on every shard, and a JOIN of two Distributed tables works; then the
  real worker writes events published through producers/ into it exactly once, and the real
  query API answers from it, equal to brute force.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llm_usage.clickhouse import connect
from llm_usage.clickhouse.client import CLUSTER_QUERY_SETTINGS
from llm_usage.clickhouse.migrations import (
    FanOut,
    Layout,
    MigrationError,
    apply_migrations,
    apply_retention,
    bookkeeping_statements,
    cluster_problems,
    discover,
)
from llm_usage.localstack import LocalStack, processes
from llm_usage.localstack.stack import LOCAL_CLUSTER
from llm_usage.settings import Settings

pytestmark = pytest.mark.integration

CLUSTER = LOCAL_CLUSTER


def test_cluster_mode_sql_parses_on_the_engine(base_settings: Settings) -> None:
    settings = base_settings.model_copy(update={"clickhouse_cluster": CLUSTER})
    layout = Layout(cluster=CLUSTER)  # production: Replicated tables, ON CLUSTER
    statements = bookkeeping_statements(settings, layout)
    for migration in discover():
        rendered = migration.statements(settings, layout)
        assert cluster_problems(rendered, layout) == [], migration.path.name
        statements += rendered
    assert sum("ENGINE = Distributed(" in s for s in statements) >= 4
    client = connect(base_settings, database="")
    try:
        for statement in statements:
            ast = client.command(f"EXPLAIN AST {statement}")
            text = "\n".join(ast) if isinstance(ast, list) else str(ast)
            assert "Create" in text or "Alter" in text or "Insert" in text, statement[:80]
    finally:
        client.close()


def test_explain_ast_rejects_broken_cluster_sql(base_settings: Settings) -> None:
    """The parse check above has teeth: a malformed ON CLUSTER statement fails it."""
    client = connect(base_settings, database="")
    try:
        with pytest.raises(Exception, match="Syntax error"):
            client.command("EXPLAIN AST CREATE TABLE t ON CLUSTER (x UInt8) ENGINE = Log")
    finally:
        client.close()


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Settings]]:
    """Two ClickHouse servers (chdb-core) forming one cluster of two shards: the local
    stack of ``llm-usage stack up --shards 2``; the settings of each shard."""
    ports = processes.free_ports(4)
    stack = LocalStack(
        Settings(
            home=tmp_path_factory.mktemp("ch-cluster"),
            clickhouse_url=f"http://127.0.0.1:{ports}",
            clickhouse_tcp_port=ports + 2,
            clickhouse_shards=2,
        )  # type: ignore[call-arg]
    )
    try:
        for shard in stack.shards:
            stack.start_service(shard.name)
        yield [Settings(clickhouse_url=shard.url) for shard in stack.shards]  # type: ignore[call-arg]
    finally:
        stack.down()


COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cost_usd", "priced", "duration_ms", "status",
    "kafka_topic", "kafka_partition", "kafka_offset",
]  # fmt: skip


def _rows(n: int) -> list[list[object]]:
    start = datetime(2026, 11, 2, 21, 0, tzinfo=UTC)
    return [
        [
            uuid.uuid4(), f"t{i % 2}", start + timedelta(minutes=13 * i),
            ("chat", "agent", "memory")[i % 3], f"src-{i % 17}", f"Name {i % 17} v{i}",
            "claude-sonnet-4-5", 100 + i, 10 + i, Decimal("0.000123456789") * (i + 1),
            i % 9 != 0, 500 + i, "ok" if i % 7 else "error", "calls", i % 3, i,
        ]
        for i in range(n)
    ]  # fmt: skip


def test_two_shard_cluster_runs_the_pipeline_sql_unchanged(two_shards: list[Settings]) -> None:
    database = f"cluster_{uuid.uuid4().hex[:8]}"
    # Keeper-less layout: Distributed tables over plain MergeTree, DDL sent to every server
    # (which is what ON CLUSTER does); everything else is production cluster mode.
    layout = Layout(cluster=CLUSTER, replicated=False, on_cluster=False)
    nodes = [
        s.model_copy(update={"clickhouse_database": database, "clickhouse_cluster": CLUSTER})
        for s in two_shards
    ]
    fan_out = FanOut([connect(node, database="") for node in nodes])
    with pytest.raises(MigrationError, match="is not a cluster of this server"):
        apply_migrations(fan_out, nodes[0], Layout(cluster="nope", on_cluster=False))  # type: ignore[arg-type]
    applied = apply_migrations(fan_out, nodes[0], layout)  # type: ignore[arg-type]
    assert [m.version for m in applied] == [m.version for m in discover()]
    assert apply_migrations(fan_out, nodes[0], layout) == []  # type: ignore[arg-type]
    shorter = nodes[0].model_copy(update={"raw_retention_days": 90})
    assert apply_retention(fan_out, shorter, layout)  # type: ignore[arg-type]

    # The worker's insert, through the Distributed table, with its dedup token; twice.
    client = connect(nodes[0])
    rows = _rows(120)
    token = {
        "insert_deduplication_token": "cluster-abc:calls:0:0-119",
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    for _ in range(2):
        client.insert("usage_events", rows, column_names=COLUMNS, settings=token)

    expected_cost = sum((r[9] for r in rows), Decimal(0))
    expected_input = sum(int(r[7]) for r in rows)  # type: ignore[call-overload]
    per_shard = [connect(node).command("SELECT count() FROM usage_events_local") for node in nodes]
    assert sum(per_shard) == 120 and min(per_shard) > 0, per_shard  # spread, not doubled
    for table in ("usage_hourly", "usage_daily"):
        calls, tokens, cost = client.query(
            f"SELECT sum(calls), sum(input_tokens), sum(cost_usd) FROM {table}"
        ).result_rows[0]
        assert (calls, tokens, cost) == (120, expected_input, expected_cost), table
    raw = client.query("SELECT count(), sum(input_tokens), sum(cost_usd) FROM usage_events")
    assert raw.result_rows[0] == (120, expected_input, expected_cost)

    # The same queries as on one node, from either node, including a JOIN of two
    # Distributed tables (refused by ClickHouse's default distributed_product_mode).
    top_agents = """
        SELECT h.source_id, n.name, sum(h.cost_usd) AS cost
        FROM usage_hourly AS h
        LEFT JOIN (SELECT source_id, argMax(source_name, named_at) AS name
                   FROM source_names WHERE tenant_id = 't1' AND source = 'agent'
                   GROUP BY source_id) AS n USING source_id
        WHERE h.tenant_id = 't1' AND h.source = 'agent'
        GROUP BY h.source_id, n.name ORDER BY cost DESC, h.source_id LIMIT 5
    """
    brute = """
        SELECT source_id, argMax(source_name, occurred_at), sum(cost_usd) AS cost
        FROM usage_events WHERE tenant_id = 't1' AND source = 'agent'
        GROUP BY source_id ORDER BY cost DESC, source_id LIMIT 5
    """
    expected = client.query(brute).result_rows
    assert len(expected) == 5
    for node in nodes:
        assert connect(node).query(top_agents).result_rows == expected
    page = """
        SELECT event_id FROM usage_events WHERE tenant_id = 't0'
        ORDER BY occurred_at DESC LIMIT 10 OFFSET 20
    """
    newest_first = [r[0] for r in sorted(rows, key=lambda r: r[2], reverse=True) if r[1] == "t0"]  # type: ignore[arg-type, return-value]
    assert [e for (e,) in client.query(page).result_rows] == newest_first[20:30]
    plain = connect(nodes[0], query_settings={"distributed_product_mode": "deny"})
    with pytest.raises(Exception, match=r"DISTRIBUTED_IN_JOIN_SUBQUERY_DENIED|Double-distributed"):
        plain.query(top_agents)
    assert CLUSTER_QUERY_SETTINGS["distributed_product_mode"] == "global"

    ttl = connect(nodes[1]).command("SHOW CREATE TABLE usage_events_local")
    assert "toIntervalDay(90)" in str(ttl)


def test_worker_and_api_run_unchanged_on_the_cluster(
    two_shards: list[Settings], base_settings: Settings, tmp_path: Path
) -> None:
    """The real worker writes through the Distributed tables; the real API reads them."""
    from fastapi.testclient import TestClient

    from producers.contract import UsageEvent
    from producers.publisher import SyncUsagePublisher
    from query_api.app import create_app
    from stream_processor.harness import WorkerProcess

    suffix = uuid.uuid4().hex[:8]
    settings = base_settings.model_copy(
        update={
            "clickhouse_url": two_shards[0].clickhouse_url,
            "clickhouse_cluster": CLUSTER,
            "clickhouse_database": f"cluster_e2e_{suffix}",
            "topic_calls": f"cluster-calls-{suffix}",
            "topic_entities": f"cluster-entities-{suffix}",
            "topic_dead_letter": f"cluster-dlq-{suffix}",
            "home": tmp_path / "home",
            "processor_group": f"cluster-proc-{suffix}",
            "processor_session_timeout_s": 6.0,
            "processor_rebalance_timeout_s": 3.0,
            "processor_web_port": processes.free_port(),
            "processor_batch_max_seconds": 0.2,
            "processor_batch_max_events": 300,
            "producer_linger_ms": 5,
            "api_keys": "key-a:tenant-a,key-b:tenant-b",
        }
    )
    layout = Layout(cluster=CLUSTER, replicated=False, on_cluster=False)
    fan_out = FanOut([connect(s, database="") for s in two_shards])
    apply_migrations(fan_out, settings, layout)  # type: ignore[arg-type]

    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        UsageEvent(
            tenant_id=("tenant-a", "tenant-b")[i % 2], occurred_at=now - timedelta(minutes=37 * i),
            source=("chat", "agent", "memory")[i % 3], source_id=f"src-{i % 23}",
            source_name=f"Name {i % 23}", model=("claude-sonnet-4-5", "mystery-model")[i % 11 == 0],
            input_tokens=1000 + i, output_tokens=100 + i, duration_ms=800,
        )
        for i in range(900)
    ]  # fmt: skip
    publisher = SyncUsagePublisher(settings)
    try:
        for event in events + events[:120]:  # 120 duplicates: dropped by the worker
            publisher.publish(event)
    finally:
        publisher.close()

    client = connect(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        deadline = processes.time.monotonic() + 120
        while client.command("SELECT count() FROM usage_events") < len(events):
            assert worker.running(), worker.tail()
            assert processes.time.monotonic() < deadline, worker.tail()
            processes.time.sleep(0.3)
        processes.time.sleep(1.0)  # anything beyond the expected rows would show up now
    finally:
        worker.stop()

    assert client.command("SELECT count() FROM usage_events") == len(events)
    shards = [
        connect(s, database=settings.clickhouse_database).command(
            "SELECT count() FROM usage_events_local"
        )
        for s in two_shards
    ]
    assert sum(shards) == len(events) and min(shards) > 0, shards
    raw = client.query("SELECT count(), sum(input_tokens), sum(cost_usd) FROM usage_events")
    for table in ("usage_hourly", "usage_daily"):
        rollup = client.query(f"SELECT sum(calls), sum(input_tokens), sum(cost_usd) FROM {table}")
        assert rollup.result_rows == raw.result_rows, table

    api = TestClient(create_app(settings))
    for key, tenant in (("key-a", "tenant-a"), ("key-b", "tenant-b")):
        auth = {"Authorization": f"Bearer {key}"}
        brute = client.query(
            "SELECT count(), sum(cost_usd), countIf(NOT priced) FROM usage_events"
            " WHERE tenant_id = {t:String} AND occurred_at >= now() - INTERVAL 30 DAY",
            parameters={"t": tenant},
        ).result_rows[0]
        summary = api.get("/v1/usage/summary?period=30d", headers=auth)
        assert summary.status_code == 200, summary.text
        body = summary.json()
        assert (body["calls"], Decimal(body["total_cost_usd"]), body["unpriced_calls"]) == brute
        by_source = api.get("/v1/usage/by-source?period=30d", headers=auth).json()
        assert sum(s["calls"] for s in by_source["sources"]) == brute[0]
        top = api.get("/v1/usage/top?period=30d&by=cost&limit=5", headers=auth)
        assert top.status_code == 200 and top.json()["items"][0]["name"].startswith("Name ")
        series = api.get("/v1/usage/timeseries?period=7d&granularity=day&tz=Asia/Kolkata",
                         headers=auth)  # fmt: skip
        assert series.status_code == 200, series.text
        records = api.get("/v1/usage/records?period=30d&page=3&page_size=20&search=name 1",
                          headers=auth)  # fmt: skip
        assert records.status_code == 200, records.text
        expected_total = client.command(
            "SELECT count() FROM usage_events WHERE tenant_id = {t:String}"
            " AND occurred_at >= now() - INTERVAL 30 DAY AND positionCaseInsensitive("
            "source_name, 'name 1') > 0",
            parameters={"t": tenant},
        )
        assert records.json()["total"] == expected_total
