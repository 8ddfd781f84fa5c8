"""The API's contract: auth, parameter errors, outages, operations endpoints, paging."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from query_api.app import create_app
from tests.integration.test_api_oracle import COLUMNS, generate, insert

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer k1"}
NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def api(migrated: Settings) -> Iterator[TestClient]:
    settings = migrated.model_copy(update={"api_keys": "k1:acme, k2:globex"})
    with TestClient(create_app(settings, clock=NOW.timestamp)) as client:
        yield client


def _event(at: datetime, cost: str, **over: object) -> list[object]:
    import uuid

    row: dict[str, object] = {
        "event_id": uuid.uuid4(), "tenant_id": "acme", "occurred_at": at, "source": "agent",
        "source_id": "agent-7", "source_name": "Nightly digest", "model": "claude-sonnet-4-5",
        "input_tokens": 1_500_000, "output_tokens": 45_000, "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 20, "cost_usd": Decimal(cost), "priced": True,
        "duration_ms": 1234, "status": "ok", "kafka_topic": "calls", "kafka_partition": 0,
        "kafka_offset": 0, "service_tier": "standard", "speed": "standard",
        "web_search_requests": 0, "tool_cost_usd": Decimal(0),
    }  # fmt: skip
    row.update(over)
    return [row[c] for c in COLUMNS]


def test_auth_is_required_and_decides_the_tenant(api: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic azE6"}):
        response = api.get("/v1/usage/summary", headers=headers)
        assert response.status_code == 401
        assert response.json()["detail"] and response.headers["www-authenticate"] == "Bearer"
    assert api.get("/v1/usage/summary", headers=AUTH).status_code == 200
    assert api.get("/v1/usage/summary", headers={"Authorization": "Bearer k2"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("summary", {"period": "1y"}, "period"),
        ("summary", {"period": "24h", "from": "2026-03-01T00:00:00Z"}, "either period"),
        ("summary", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "before"),
        ("summary", {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "before"),
        ("summary", {"to": "2026-03-01T00:00:00Z"}, "to needs from"),
        ("summary", {"from": "yesterday"}, "from"),
        ("summary", {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "at most"),
        ("summary", {"source": "email"}, "source"),
        ("by-model", {"period": "90d"}, "period"),
        ("by-model", {"source": "email"}, "source"),
        ("by-model", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "before"),
        ("by-model", {"search": "x" * 500}, "search"),
        ("timeseries", {"tz": "Mars/Olympus_Mons"}, "time zone"),
        ("timeseries", {"tz": "../../etc/passwd"}, "time zone"),
        ("timeseries", {"granularity": "week"}, "granularity"),
        ("top", {"by": "calls"}, "by"),
        ("top", {"limit": 0}, "limit"),
        ("records", {"page": 0}, "page"),
        ("records", {"page_size": 10_000}, "page_size"),
        ("records", {"cursor": "not-a-cursor"}, "cursor"),
        ("records", {"search": "x" * 500}, "search"),
    ],
)
def test_bad_parameters_get_422_with_a_message(
    api: TestClient, path: str, params: dict[str, object], message: str
) -> None:
    response = api.get(f"/v1/usage/{path}", params=params, headers=AUTH)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail


def test_values_are_exact_and_money_is_a_decimal_string(
    api: TestClient, migrated: Settings
) -> None:
    client = connect(migrated)
    at = NOW - timedelta(hours=2)
    client.insert(
        "usage_events",
        [
            _event(at, "0.100000000001"),
            _event(at + timedelta(minutes=1), "0.200000000002", source="chat", source_id="c1"),
            _event(at, "0", priced=False, model="claude-future-9"),
            _event(at, "99", tenant_id="globex", model="globex-secret-model", priced=False),
        ],
        column_names=COLUMNS,
    )
    summary = api.get("/v1/usage/summary", headers=AUTH).json()
    assert summary["total_cost_usd"] == "0.300000000003"
    assert summary["avg_cost_per_call_usd"] == "0.100000000001"
    assert summary["calls"] == 3 and summary["unpriced_calls"] == 1
    assert summary["cost_incomplete"] is True
    assert summary["unpriced_models"] == [{"model": "claude-future-9", "calls": 1}]
    assert summary["input_tokens"] == 4_500_000 and summary["output_tokens"] == 135_000
    assert summary["to"] == "2026-04-01T12:00:00+00:00"
    assert summary["from"] == "2026-03-31T12:00:00+00:00"
    sources = api.get("/v1/usage/by-source", headers=AUTH).json()["sources"]
    assert [(s["source"], s["cost_usd"], s["calls"]) for s in sources] == [
        ("chat", "0.200000000002", 1),
        ("agent", "0.100000000001", 2),
        ("memory", "0.000000000000", 0),
    ]
    series = api.get("/v1/usage/timeseries", params={"tz": "Asia/Kolkata"}, headers=AUTH).json()[
        "points"
    ]
    assert len(series) == 25  # 24 h from 17:30 +05:30: a partial first and last hour
    assert series[0]["bucket_start"] == "2026-03-31T17:00:00+05:30"
    assert sum(Decimal(p["cost_usd"]) for p in series) == Decimal("0.300000000003")
    top = api.get("/v1/usage/top", params={"by": "tokens"}, headers=AUTH).json()["items"]
    assert top[0]["source_id"] == "agent-7" and top[0]["total_tokens"] == 2 * 1_545_030
    assert top[0]["name"] == "Nightly digest"
    by_model = api.get("/v1/usage/by-model", headers=AUTH).json()
    assert [(i["model"], i["price_tier"], i["calls"], i["cost_usd"], i["priced"])
            for i in by_model["items"]] == [
        ("claude-sonnet-4-5", "standard", 2, "0.300000000003", True),
        ("claude-future-9", "standard", 1, "0.000000000000", False),
    ]  # fmt: skip
    assert by_model["total_cost_usd"] == "0.300000000003" and by_model["unpriced_calls"] == 1
    assert [m["model"] for m in by_model["models"]] == ["claude-sonnet-4-5", "claude-future-9"]
    priced_only = api.get("/v1/usage/summary", params={"source": "chat"}, headers=AUTH).json()
    assert priced_only["cost_incomplete"] is False and priced_only["unpriced_models"] == []


@pytest.mark.sharded
def test_records_pages_cursor_and_latest_names(api: TestClient, migrated: Settings) -> None:
    client = connect(migrated)
    rows = generate("acme", 257, seed=3)
    base = NOW - timedelta(days=6)
    for i, row in enumerate(rows):
        row[2] = base + timedelta(minutes=30 * i, milliseconds=i % 2)  # some share a ms
        if i % 10 == 0:
            row[2] = rows[i - 1][2] if i else row[2]
    insert(client, rows)
    client.insert(
        "source_names",
        [["acme", "chat", "conv-1", "Renamed", NOW + timedelta(days=1)]],
        column_names=["tenant_id", "source", "source_id", "source_name", "named_at"],
    )
    params = {"period": "7d", "page_size": 25}
    by_page: list[str] = []
    for page in range(1, 12):
        body = api.get("/v1/usage/records", params={**params, "page": page}, headers=AUTH).json()
        assert body["total"] == 257 and body["total_pages"] == 11 and body["page"] == page
        by_page += [r["event_id"] for r in body["items"]]
    by_cursor: list[str] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = api.get("/v1/usage/records", params={**params, **extra}, headers=AUTH).json()
        by_cursor += [r["event_id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert by_page == by_cursor and len(set(by_cursor)) == 257
    first = api.get("/v1/usage/records", params=params, headers=AUTH).json()["items"]
    times = [r["occurred_at"] for r in first]
    assert times == sorted(times, reverse=True)
    assert set(first[0]) >= {"event_id", "source", "source_id", "name", "model", "input_tokens",
                             "output_tokens", "cost_usd", "duration_ms", "occurred_at"}  # fmt: skip
    renamed = api.get("/v1/usage/records", params={**params, "search": "renamed"}, headers=AUTH)
    items = renamed.json()["items"]
    assert items and {(r["source"], r["source_id"], r["name"]) for r in items} == {
        ("chat", "conv-1", "Renamed")
    }
    past = api.get("/v1/usage/records", params={**params, "page": 99}, headers=AUTH).json()
    assert past["items"] == [] and past["total"] == 257


def test_clickhouse_down_is_503_with_a_message(migrated: Settings) -> None:
    dead = migrated.model_copy(
        update={"clickhouse_url": f"http://127.0.0.1:{free_port()}", "api_keys": "k1:acme"}
    )
    with TestClient(create_app(dead)) as client:
        for path in ("/v1/usage/summary", "/v1/usage/records", "/v1/usage/timeseries"):
            response = client.get(path, headers=AUTH)
            assert response.status_code == 503
            assert "unreachable" in response.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["detail"]
        assert client.get("/healthz").json() == {"status": "ok", "detail": None}
        assert "llm_usage_api_clickhouse_unavailable_total 3.0" in client.get("/metrics").text


def test_readyz_explains_missing_migrations(settings: Settings) -> None:
    admin = connect(settings, database="")
    admin.command(f"CREATE DATABASE `{settings.clickhouse_database}`")
    try:
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "llm-usage migrate" in ready.json()["detail"]
    finally:
        admin.command(f"DROP DATABASE `{settings.clickhouse_database}` SYNC")


def test_operations_endpoints(api: TestClient) -> None:
    assert api.get("/readyz").json()["status"] == "ready"
    api.get("/v1/usage/summary", headers=AUTH)
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert 'llm_usage_api_requests_total{method="GET",route="/v1/usage/summary",status="200"}' in (
        metrics.text
    )
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/usage/summary", "/v1/usage/timeseries", "/v1/usage/by-source",
            "/v1/usage/by-model", "/v1/usage/top", "/v1/usage/records", "/healthz",
            "/readyz"} <= set(paths)  # fmt: skip


def test_recovers_when_clickhouse_comes_back(
    api: TestClient, stack: LocalStack, migrated: Settings
) -> None:
    """503 while ClickHouse is down, 200 again once it is back, without restarting the API."""
    assert api.get("/v1/usage/summary", headers=AUTH).status_code == 200
    stack.stop_service("clickhouse")
    try:
        down = api.get("/v1/usage/summary", headers=AUTH)
        assert down.status_code == 503 and "unreachable" in down.json()["detail"]
        assert api.get("/readyz").status_code == 503
    finally:
        stack.start_service("clickhouse")
    assert api.get("/v1/usage/summary", headers=AUTH).status_code == 200
    assert api.get("/readyz").json()["status"] == "ready"
