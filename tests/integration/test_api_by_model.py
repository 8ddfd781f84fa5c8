"""Cost by model and tier over history written before migration 0011 (no price tier then).

``usage_hourly`` / ``usage_daily`` keep such rows with ``price_tier = ''`` while
``usage_events`` computes ``'standard'`` for them (from the defaults of ``service_tier`` and
``speed``: ``price_tier`` is MATERIALIZED), and 0011 backfills the per-model
rollups from the raw table. A search (served by the hourly/daily rollups) and no search
(served by the per-model rollups) must both equal brute force and never show a '' tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import apply_migrations, connect, migrations
from llm_usage.settings import Settings
from query_api.app import create_app
from tests.integration.test_api_oracle import (
    COLUMNS,
    END,
    START,
    BruteForce,
    Query,
    api_model_totals,
    generate,
    insert,
    iso_ms,
    ms,
    oracle_model_totals,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer k"}
V1_COLUMNS = COLUMNS[: COLUMNS.index("service_tier")]  # what usage_events had before 0011


@pytest.fixture
def legacy(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """A database migrated to 0010, given old rows, then migrated to the end, given new rows."""
    everything = migrations.discover
    admin = connect(settings, database="")
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "discover", lambda: [m for m in everything() if m.version < 11])
        apply_migrations(admin, settings)
    client = connect(settings)
    old = [row[: len(V1_COLUMNS)] for row in generate("acme", 1500, seed=21)]
    for i in range(0, len(old), 500):
        client.insert("usage_events", old[i : i + 500], column_names=V1_COLUMNS)
    later = [m.version for m in everything() if m.version >= 11]
    assert later[0] == 11 and [m.version for m in apply_migrations(admin, settings)] == later
    insert(client, generate("acme", 1500, seed=22))  # the same weeks: shared hours and days
    try:
        with TestClient(create_app(settings.model_copy(update={"api_keys": "k:acme"}))) as http:
            yield http, client
    finally:
        admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")


def test_history_before_0011_counts_as_standard(legacy: tuple[Any, Any]) -> None:
    http, client = legacy
    legacy_rows = client.query(
        "SELECT sum(calls) FROM usage_hourly WHERE price_tier = ''"
    ).result_rows[0][0]
    assert legacy_rows == 1500, "old rollup rows keep an empty tier"
    oracle = BruteForce(client)
    windows = [
        (ms(START) - 1, ms(END) + 1),
        (ms(START + timedelta(days=2, minutes=7, milliseconds=3)), ms(START + timedelta(days=9))),
    ]
    for start, end in windows:
        for search in (None, "alpha", "Digest sync"):
            params = {"from": iso_ms(start), "to": iso_ms(end)}
            if search:
                params["search"] = search
            body = http.get("/v1/usage/by-model", params=params, headers=AUTH).json()
            want = oracle.by_model(Query("acme", start, end, None, search))
            assert "" not in {i["price_tier"] for i in body["items"]}
            assert [(i["model"], i["price_tier"]) for i in body["items"]] == [
                r[:2] for r in want
            ], search
            for item, row in zip(body["items"], want, strict=True):
                assert api_model_totals(item) == oracle_model_totals(row[2:])
            summary = http.get("/v1/usage/summary", params=params, headers=AUTH).json()
            unpriced = oracle.unpriced_models(Query("acme", start, end, None, search))
            assert [(m["model"], m["calls"]) for m in summary["unpriced_models"]] == unpriced


def test_a_model_with_some_unpriced_calls_is_not_priced(legacy: tuple[Any, Any]) -> None:
    """generate() leaves a few unpriced calls on priced model names: priced is then false."""
    http, _ = legacy
    body = http.get(
        "/v1/usage/by-model",
        params={"from": iso_ms(ms(START) - 1), "to": iso_ms(ms(END) + 1)},
        headers=AUTH,
    ).json()
    mixed = [m for m in body["models"] if m["unpriced_calls"] and m["unpriced_calls"] < m["calls"]]
    assert mixed and all(m["priced"] is False for m in mixed)
    assert all(m["priced"] is (m["unpriced_calls"] == 0) for m in body["models"])
    assert {t for m in body["models"] for t in m["price_tiers"]} == {
        "standard", "batch", "fast", "priority"
    }  # fmt: skip
