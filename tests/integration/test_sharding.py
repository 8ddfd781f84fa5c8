"""A real sharded cluster: ``llm-usage stack up --shards 2`` and ``migrate`` build it, and
the pipeline keeps every conversation or agent (raw rows, rollup rows, names) on one shard.

The exactness, crash, API and pagination tests marked ``sharded`` run a second time on a
two-shard session stack (``LLM_USAGE_TEST_SHARDS=2``, the second pass of ``make test``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port, free_ports, is_running
from llm_usage.settings import Settings
from stream_processor.harness import WorkerProcess
from tests.conftest import session_shards, wait_for
from tests.integration.test_processor_e2e import (
    cost_of,
    counted,
    expected_totals,
    make_events,
    publish,
    totals,
    worker_settings,
)

pytestmark = pytest.mark.integration


def test_stack_up_shards_2_and_migrate_build_a_working_cluster(tmp_path: Path) -> None:
    ports = free_ports(4)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")},
        "LLM_USAGE_HOME": str(tmp_path / "home"),
        "LLM_USAGE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "LLM_USAGE_CLICKHOUSE_URL": f"http://127.0.0.1:{ports}",
        "LLM_USAGE_CLICKHOUSE_TCP_PORT": str(ports + 2),
        "LLM_USAGE_CLICKHOUSE_DATABASE": "sharded",
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "llm_usage", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    up = cli("stack", "up", "--shards", "2")
    try:
        assert "2 shards" in up
        assert "applied 0013_api_keys.sql" in cli("migrate")
        assert "up to date" in cli("migrate")
        state = json.loads((tmp_path / "home" / "stack.json").read_text())
        urls = state["cluster"]["shard_urls"]
        assert len(urls) == 2 and urls[0] == env["LLM_USAGE_CLICKHOUSE_URL"]
        status = cli("stack", "status")
        assert status.count("clickhouse (chdb-core)") == 2
        for url in urls:  # storage tables on every shard, Distributed tables in front
            client = connect(Settings(clickhouse_url=url, clickhouse_database="sharded"))  # type: ignore[call-arg]
            engines = dict(
                client.query(
                    "SELECT name, engine FROM system.tables WHERE database = 'sharded'"
                ).result_rows
            )
            assert engines["usage_events_local"] == "MergeTree"
            assert engines["usage_events"] == "Distributed"
            assert engines["usage_hourly_local"] == "AggregatingMergeTree"
            clusters = client.query(
                "SELECT count() FROM system.clusters WHERE cluster = 'llm_usage_local'"
            ).result_rows[0][0]
            assert clusters == 2
            client.close()
        pids = [entry["pid"] for name, entry in state.items() if name.startswith("clickhouse")]
        assert len(pids) == 2
    finally:
        cli("stack", "down")
    assert not any(is_running(pid, "clickhouse") for pid in pids)


@pytest.mark.sharded
@pytest.mark.skipif(
    session_shards() < 2,
    reason="needs a sharded session stack: make test runs "
    "it in its second pass (LLM_USAGE_TEST_SHARDS=2)",
)
def test_rows_of_one_conversation_rollups_and_names_live_on_one_shard(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    import asyncio

    settings = worker_settings(migrated)
    events = make_events(600, datetime.now(UTC) - timedelta(days=5), step=timedelta(minutes=9))
    asyncio.run(publish(settings, events))
    worker = worker_factory(settings)
    wait_for(lambda: counted(settings, len(events)), 90, "every event", detail=worker.tail)
    expected = expected_totals(events, [cost_of(e) for e in events])
    got = totals(settings)
    assert got["raw"] == expected and got["hourly"] == expected and got["daily"] == expected
    client = connect(settings)
    try:

        def shards_of(table: str) -> dict[tuple[str, str], set[int]]:
            rows = client.query(
                f"SELECT tenant_id, source_id, groupUniqArray(_shard_num) FROM {table}"
                " GROUP BY tenant_id, source_id"
            ).result_rows
            return {(r[0], r[1]): set(r[2]) for r in rows}

        raw = shards_of("usage_events")
        assert all(len(shards) == 1 for shards in raw.values()), raw
        assert set().union(*raw.values()) == {1, 2}, "both shards hold conversations"
        for table in ("usage_hourly", "usage_daily", "source_names"):
            assert shards_of(table) == {k: v for k, v in raw.items() if k in shards_of(table)}
    finally:
        client.close()
