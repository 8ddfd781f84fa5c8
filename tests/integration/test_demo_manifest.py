"""``llm-usage simulate --manifest`` against the API: the pipeline reports what was published.

The whole path is real: the CLI publishes through producers/ to the broker, a worker
process prices and writes to ClickHouse, and the API answers from the rollups and the raw
table. Every tenant's summary and per-source split must equal the manifest exactly, and so
must the cost by model: the demo's batch, fast-mode, US-only and web-search calls are priced
by the worker as the manifest prices them, and its fine-tuned model is reported unpriced.
The stored calls' attributes, grouped by key and value, equal the manifest's totals too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from llm_usage.simulate import UNKNOWN_MODEL
from producers.topics import ensure_topics
from query_api.app import create_app
from stream_processor.harness import WorkerProcess, settings_env

CALLS = 1500


def _wait_rows(settings: Settings, expected: int, timeout: float = 120.0) -> int:
    client = connect(settings)
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
        if count >= expected:
            break
        time.sleep(0.3)
    return count


def test_simulate_manifest_equals_api(migrated: Settings, tmp_path: Path) -> None:
    settings = migrated.model_copy(
        update={
            "processor_web_port": free_port(),
            "processor_rebalance_timeout_s": 3.0,
            "processor_session_timeout_s": 10.0,
            "api_keys": "key-one:tenant-1,key-two:tenant-2",
        }
    )
    asyncio.run(ensure_topics(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_assigned(timeout=90)
        manifest_path = tmp_path / "manifest.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")}
        env.update(settings_env(settings))
        subprocess.run(
            [sys.executable, "-m", "llm_usage", "simulate", "--calls", str(CALLS),
             "--days", "2", "--tenants", "2", "--seed", "11", "--manifest", str(manifest_path)],
            env=env, check=True, timeout=300, capture_output=True,
        )  # fmt: skip
        manifest = json.loads(manifest_path.read_text())
        assert manifest["calls"] == CALLS
        assert manifest["duplicates_published"] >= 0
        assert _wait_rows(settings, CALLS) == CALLS, worker.tail()
        time.sleep(1.5)  # a duplicate arriving late must still not add a row
        assert _wait_rows(settings, CALLS, timeout=0.1) == CALLS
    finally:
        worker.stop()

    client = TestClient(create_app(settings))
    now = datetime.now(UTC)
    window = {
        "from": (now - timedelta(days=3)).isoformat(),
        "to": (now + timedelta(minutes=5)).isoformat(),
    }
    for key, tenant in settings.api_key_tenants.items():
        expected = manifest["by_tenant"][tenant]
        headers = {"Authorization": f"Bearer {key}"}
        response = client.get("/v1/usage/summary", params=window, headers=headers)
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["calls"] == expected["calls"]
        assert Decimal(summary["total_cost_usd"]) == Decimal(expected["cost_usd"])
        for field in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                      "cache_creation_input_tokens", "unpriced_calls"):  # fmt: skip
            assert summary[field] == expected[field], field
        assert summary["cost_incomplete"] is (expected["unpriced_calls"] > 0)
        unpriced = {m["model"] for m in summary["unpriced_models"]}
        assert unpriced == ({UNKNOWN_MODEL} if expected["unpriced_calls"] else set())
        by_source = client.get("/v1/usage/by-source", params=window, headers=headers).json()
        assert sum(s["calls"] for s in by_source["sources"]) == expected["calls"]
    # and the manifest's own per-source split, across both tenants
    totals: dict[str, Decimal] = {}
    for key in settings.api_key_tenants:
        body = client.get(
            "/v1/usage/by-source", params=window, headers={"Authorization": f"Bearer {key}"}
        ).json()
        for s in body["sources"]:
            totals[s["source"]] = totals.get(s["source"], Decimal(0)) + Decimal(s["cost_usd"])
    for source, expected in manifest["by_source"].items():
        assert totals[source] == Decimal(expected["cost_usd"]), source
    assert manifest["unpriced_calls"] > 0, "the demo has calls of a model without a price"
    assert _by_model(client, settings, window) == {
        model: (t["calls"], Decimal(t["cost_usd"]), t["unpriced_calls"], t["web_search_requests"])
        for model, t in manifest["by_model"].items()
    }
    expected_attributes = {
        (key, value): (t["calls"], Decimal(t["cost_usd"]), t["unpriced_calls"])
        for key, values in manifest["by_attribute"].items()
        for value, t in values.items()
    }
    assert {key for key, _ in expected_attributes} == {"customer", "environment", "feature", "user"}
    assert _by_attribute(settings) == expected_attributes


def _by_attribute(settings: Settings) -> dict[tuple[str, str], tuple[int, Decimal, int]]:
    """(calls, cost, unpriced calls) per attribute key and value, from the stored calls."""
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT key, value, count(), sum(cost_usd), countIf(NOT priced) FROM usage_events"
            " ARRAY JOIN mapKeys(attributes) AS key, mapValues(attributes) AS value"
            " GROUP BY key, value"
        ).result_rows
    finally:
        client.close()
    return {
        (key, value): (calls, Decimal(cost), unpriced) for key, value, calls, cost, unpriced in rows
    }


def _by_model(
    client: TestClient, settings: Settings, window: dict[str, str]
) -> dict[str, tuple[int, Decimal, int, int]]:
    """(calls, cost, unpriced calls, web searches) per model, summed over every tenant."""
    out: dict[str, tuple[int, Decimal, int, int]] = {}
    for key in settings.api_key_tenants:
        headers = {"Authorization": f"Bearer {key}"}
        response = client.get("/v1/usage/by-model", params=window, headers=headers)
        assert response.status_code == 200, response.text
        for m in response.json()["models"]:
            calls, cost, unpriced, searches = out.get(m["model"], (0, Decimal(0), 0, 0))
            out[m["model"]] = (
                calls + m["calls"],
                cost + Decimal(m["cost_usd"]),
                unpriced + m["unpriced_calls"],
                searches + m["web_search_requests"],
            )
    return out
