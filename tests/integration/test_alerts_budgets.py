"""Budgets through the API and the alerter's evaluation, on real ClickHouse.

Spend against a budget is the summary of its period and filter, to the last decimal; each
threshold crossed raises one alert per period (a rolling budget: per breach), never one per
evaluation; a hard budget that is used up is in the status the producers' guards read.
And tenant isolation: another tenant's key neither sees nor changes budgets, alerts or
webhooks; a key without the admin scope cannot change them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, publish
from producers.budget_guard import BudgetExceeded, BudgetGuard
from producers.topics import ensure_topics
from query_api.app import create_app
from query_api.db import ClickHouse
from query_api.keys import Scope
from stream_processor.alerts.evaluator import Alerter, Evaluator
from stream_processor.alerts.store import Alert
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.alerting import fast_settings, stored_calls

A = {"Authorization": "Bearer key-a"}  # tenant-1, every scope (LLM_USAGE_API_KEYS)
B = {"Authorization": "Bearer key-b"}  # tenant-2


@pytest.fixture
def loaded(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> Iterator[Settings]:
    """2,000 calls of two tenants, all in the last minutes (so in today's periods)."""
    settings = fast_settings(migrated, api_keys="key-a:tenant-1,key-b:tenant-2")
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    manifest = asyncio.run(publish(settings, SimulationConfig(calls=2000, days=0, tenants=2)))
    wait_for(
        lambda: stored_calls(settings) >= manifest.total.calls, 120, "rows", detail=worker.tail
    )
    yield settings


def _budget(api: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = api.post("/v1/budgets", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _summary_of(api: TestClient, budget: dict[str, Any]) -> dict[str, Any]:
    params = {"from": budget["spend"]["period_start"], "to": budget["spend"]["period_end"]}
    if budget["source"]:
        params["source"] = budget["source"]
    if budget["source_id"]:
        params["source_id"] = budget["source_id"]
    response = api.get("/v1/usage/summary", params=params, headers=A)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _tick(settings: Settings) -> list[Alert]:
    evaluator = Evaluator(settings, ClickHouse(settings))
    try:
        return evaluator.tick()
    finally:
        evaluator.close()


def test_budget_spend_equals_summary_and_each_threshold_alerts_once(loaded: Settings) -> None:
    api = TestClient(create_app(loaded))
    total = Decimal(api.get("/v1/usage/summary?period=24h", headers=A).json()["total_cost_usd"])
    top = api.get("/v1/usage/top?period=24h&limit=1", headers=A).json()["items"][0]
    top_cost = Decimal(top["cost_usd"])
    tenant_day = _budget(
        api,
        A,
        name="whole tenant",
        period="day",
        time_zone="Pacific/Kiritimati",
        limit_usd=str((total / Decimal("0.9")).quantize(Decimal("0.01"))),
    )
    entity_month = _budget(
        api,
        A,
        name="top consumer",
        source=top["source"],
        source_id=top["source_id"],
        period="month",
        time_zone="Europe/Berlin",
        limit_usd=str((top_cost / Decimal("1.5")).quantize(Decimal("0.000001"))),
        hard=True,
    )
    chat_rolling = _budget(
        api,
        A,
        name="chat",
        source="chat",
        period="rolling_24h",
        limit_usd="1000000",
        thresholds=[25, 75],
    )

    for budget in (tenant_day, entity_month, chat_rolling):
        summary = _summary_of(api, budget)
        assert budget["spend"]["cost_usd"] == summary["total_cost_usd"], budget
        assert budget["spend"]["calls"] == summary["calls"]
    assert tenant_day["spend"]["crossed"] == [50, 80]
    assert entity_month["spend"]["crossed"] == [50, 80, 100]
    assert chat_rolling["spend"]["crossed"] == []

    raised = _tick(loaded)
    crossings = sorted(
        (a.budget_id, a.threshold_pct) for a in raised if a.kind == "budget_threshold"
    )
    assert crossings == sorted(
        [(tenant_day["budget_id"], 50), (tenant_day["budget_id"], 80)]
        + [(entity_month["budget_id"], t) for t in (50, 80, 100)]
    )
    assert [a for a in _tick(loaded) if a.kind == "budget_threshold"] == [], "once per period"
    listed = api.get("/v1/alerts?kind=budget_threshold", headers=A).json()["items"]
    assert len(listed) == 5 and all("reached" in a["message"] for a in listed)

    # a rolling budget: lowered below its spend, it alerts once per threshold, then not again
    chat_spend = Decimal(chat_rolling["spend"]["cost_usd"])
    changed = api.put(
        f"/v1/budgets/{chat_rolling['budget_id']}",
        headers=A,
        json={
            "name": "chat",
            "source": "chat",
            "period": "rolling_24h",
            "thresholds": [25, 75],
            "limit_usd": str((chat_spend * 2).quantize(Decimal("0.000001"))),
        },
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["spend"]["crossed"] == [25]
    assert [a.threshold_pct for a in _tick(loaded) if a.budget_id == chat_rolling["budget_id"]] == [
        25
    ]
    assert [a for a in _tick(loaded) if a.budget_id == chat_rolling["budget_id"]] == []

    # the used-up hard budget is what producers' guards refuse calls for
    evaluator = Evaluator(loaded, ClickHouse(loaded))
    try:
        status = evaluator.budget_status()
    finally:
        evaluator.close()
    exhausted = status["tenant-1"]["exhausted"]
    assert [e["budget_id"] for e in exhausted] == [entity_month["budget_id"]]  # type: ignore[index]

    deleted = api.delete(f"/v1/budgets/{tenant_day['budget_id']}", headers=A)
    assert deleted.status_code == 204
    names = [b["name"] for b in api.get("/v1/budgets", headers=A).json()["items"]]
    assert names == ["top consumer", "chat"]


def test_tenant_isolation_budgets_alerts_and_webhooks(
    loaded: Settings, new_key: Callable[..., str]
) -> None:
    api = TestClient(create_app(loaded.model_copy(update={"api_key_cache_s": 0.0})))
    mine = _budget(api, A, name="tenant one's", period="day", limit_usd="0.000001")
    hook = api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=A)
    assert hook.status_code == 201 and len(hook.json()["secret"]) == 32
    assert any(a.tenant_id == "tenant-1" for a in _tick(loaded))

    # tenant-2 sees none of it and cannot touch it (404, as if it did not exist)
    assert api.get("/v1/budgets", headers=B).json()["items"] == []
    assert api.get("/v1/alerts", headers=B).json()["items"] == []
    assert api.get("/v1/webhooks", headers=B).json()["items"] == []
    budget_url = f"/v1/budgets/{mine['budget_id']}"
    assert api.get(budget_url, headers=B).status_code == 404
    body = {"period": "day", "limit_usd": "5"}
    assert api.put(budget_url, json=body, headers=B).status_code == 404
    assert api.delete(budget_url, headers=B).status_code == 404
    assert api.delete(f"/v1/webhooks/{hook.json()['webhook_id']}", headers=B).status_code == 404
    assert api.get(budget_url, headers=A).status_code == 200
    assert api.get("/v1/alerts", headers=A).json()["items"]

    # scopes: read may list, not change; ingest may do neither; admin may change
    read = {"Authorization": f"Bearer {new_key('tenant-1', Scope.READ)}"}
    ingest = {"Authorization": f"Bearer {new_key('tenant-1', Scope.INGEST)}"}
    admin = {"Authorization": f"Bearer {new_key('tenant-1', Scope.ADMIN)}"}
    assert api.get("/v1/budgets", headers=read).status_code == 200
    assert api.get("/v1/alerts", headers=read).status_code == 200
    assert api.post("/v1/budgets", json=body, headers=read).status_code == 403
    assert api.get("/v1/webhooks", headers=read).status_code == 403
    for path in ("/v1/budgets", "/v1/alerts"):
        assert api.get(path, headers=ingest).status_code == 403
    assert api.post("/v1/budgets", json=body, headers=admin).status_code == 201
    assert api.get("/v1/budgets").status_code == 401

    # bad input is a 422 with a reason, never a 500
    for bad in (
        {"period": "week", "limit_usd": "5"},
        {"period": "day", "limit_usd": "-1"},
        {"period": "day", "limit_usd": "5", "time_zone": "Mars/Olympus"},
        {"period": "day", "limit_usd": "5", "source_id": "x"},
        {"period": "day", "limit_usd": "5", "thresholds": [0]},
    ):
        response = api.post("/v1/budgets", json=bad, headers=A)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"]


def test_budget_guard_refuses_what_the_alerter_published_as_used_up(loaded: Settings) -> None:
    api = TestClient(create_app(loaded))
    top = api.get("/v1/usage/top?period=24h&limit=2", headers=A).json()["items"]
    hard = _budget(
        api,
        A,
        name="hard cap",
        source=top[0]["source"],
        source_id=top[0]["source_id"],
        period="day",
        limit_usd="0.01",
        hard=True,
    )
    assert hard["spend"]["crossed"] == [50, 80, 100]

    async def one_tick() -> None:
        alerter = Alerter(loaded)
        stop = asyncio.Event()
        task = asyncio.create_task(alerter.run(stop))
        while alerter.ticks < 1 and not task.done():
            await asyncio.sleep(0.1)
        stop.set()
        await task

    asyncio.run(one_tick())
    guard = BudgetGuard(loaded).start()
    try:
        wait_for(lambda: guard.age_s("tenant-1") is not None, 30, "the budget status")
        with pytest.raises(BudgetExceeded, match="hard cap"):
            guard.check("tenant-1", top[0]["source"], top[0]["source_id"])
        guard.check("tenant-1", top[1]["source"], top[1]["source_id"])  # not capped
    finally:
        guard.stop()
