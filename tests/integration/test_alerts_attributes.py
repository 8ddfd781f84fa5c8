"""Budgets and spike alerts per attribute value, on the real broker, worker and ClickHouse.

A budget on ``attr.user=<one user>`` spends exactly what ``usage_events`` holds for that
user (and what ``/v1/usage/summary?attr.user=...`` answers), raises one alert per threshold
and none for other users' spend, in its tenant or another. On simulate's demo week with the
demo's attributes, one user whose spend jumps (over conversations that are new, so no
conversation's own normal can show it) raises one spike alert naming the user; nobody else
does (the count is printed).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from llm_usage.simulate import Published, SimulationConfig, generate
from producers.contract import UsageEvent
from producers.publisher import UsagePublisher
from producers.topics import ensure_topics
from query_api.app import create_app
from query_api.db import ClickHouse
from stream_processor.alerts.evaluator import Evaluator
from stream_processor.alerts.store import Alert
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.alerting import (
    demo_end,
    expensive_call,
    fast_settings,
    stored_calls,
    with_attributes,
    write_attributed,
)

A = {"Authorization": "Bearer key-a"}  # tenant-1, every scope
B = {"Authorization": "Bearer key-b"}  # tenant-2
DEMO_CALLS = 30_000  # what `llm-usage run` backfills


async def _publish(settings: Settings, items: list[Published | UsageEvent]) -> int:
    """Publish calls (with the demo's attributes) and renames; the number of unique calls."""
    calls = 0
    async with UsagePublisher(settings) as publisher:
        for item in items:
            if isinstance(item, UsageEvent):
                await publisher.publish(item)
                calls += 1
            elif item.rename is not None:
                await publisher.publish_rename(item.rename)
            elif item.call is not None:
                await publisher.publish(with_attributes(item.call))
                calls += not item.duplicate
        await publisher.flush()
    return calls


@pytest.fixture
def attributed(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> Iterator[tuple[Settings, WorkerProcess]]:
    """2,000 calls of two tenants with users and customers, all in the last minutes."""
    settings = fast_settings(migrated, api_keys="key-a:tenant-1,key-b:tenant-2")
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    items: list[Published | UsageEvent] = list(
        generate(SimulationConfig(calls=2000, days=0, tenants=2))
    )
    calls = asyncio.run(_publish(settings, items))
    wait_for(lambda: stored_calls(settings) >= calls, 120, "rows", detail=worker.tail)
    yield settings, worker


def _brute_force(settings: Settings, tenant: str, user: str, budget: dict[str, Any]) -> Decimal:
    """The user's cost in the budget's period, summed over the raw calls."""
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT sum(cost_usd) FROM usage_events WHERE tenant_id = {t:String}"
            " AND attributes['user'] = {u:String}"
            " AND occurred_at >= parseDateTime64BestEffort({s:String}, 3)"
            " AND occurred_at < parseDateTime64BestEffort({e:String}, 3)"
            " AND ({source:String} = '' OR toString(source) = {source:String})",
            parameters={
                "t": tenant,
                "u": user,
                "s": budget["spend"]["period_start"],
                "e": budget["spend"]["period_end"],
                "source": budget["source"] or "",
            },
        ).result_rows
    finally:
        client.close()
    return Decimal(rows[0][0])


def _users(settings: Settings, tenant: str) -> list[tuple[str, Decimal]]:
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT attributes['user'] AS u, sum(cost_usd) AS c FROM usage_events"
            " WHERE tenant_id = {t:String} AND u != '' GROUP BY u ORDER BY c DESC, u",
            parameters={"t": tenant},
        ).result_rows
    finally:
        client.close()
    return [(str(u), Decimal(c)) for u, c in rows]


def _tick(settings: Settings) -> list[Alert]:
    evaluator = Evaluator(settings, ClickHouse(settings))
    try:
        return evaluator.tick()
    finally:
        evaluator.close()


def _budget(api: TestClient, **body: Any) -> dict[str, Any]:
    response = api.post("/v1/budgets", json=body, headers=A)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_user_budget_raises_one_alert_per_threshold_and_none_for_other_users(
    attributed: tuple[Settings, WorkerProcess],
) -> None:
    settings, worker = attributed
    api = TestClient(create_app(settings))
    users = _users(settings, "tenant-1")
    (top, top_cost), (other, _) = users[0], users[1]
    limit = (top_cost / Decimal("0.9")).quantize(Decimal("0.000001"))
    mine = _budget(
        api,
        name="top user",
        attr_key="user",
        attr_value=top,
        period="month",
        limit_usd=str(limit),
    )
    nobody = _budget(
        api, name="nobody", attr_key="user", attr_value="no-such-user", period="month",
        limit_usd="0.000001",
    )  # fmt: skip
    agents_of_top = _budget(
        api, name="top user's agent calls", source="agent", attr_key="user", attr_value=top,
        period="month", limit_usd="0.000001",
    )  # fmt: skip  # the demo's users chat only: nothing
    assert (mine["scope"], mine["attr_key"], mine["attr_value"]) == ("attribute", "user", top)
    assert mine["source"] is None and mine["source_id"] is None
    for budget in (mine, nobody, agents_of_top):
        expected = _brute_force(settings, "tenant-1", budget["attr_value"], budget)
        assert Decimal(budget["spend"]["cost_usd"]) == expected, budget
    assert Decimal(mine["spend"]["cost_usd"]) == top_cost
    assert mine["spend"]["crossed"] == [50, 80]
    assert nobody["spend"]["crossed"] == agents_of_top["spend"]["crossed"] == []
    summary = api.get(
        "/v1/usage/summary",
        params={
            "from": mine["spend"]["period_start"],
            "to": mine["spend"]["period_end"],
            "attr.user": top,
        },
        headers=A,
    )
    assert summary.status_code == 200, summary.text
    assert summary.json()["total_cost_usd"] == mine["spend"]["cost_usd"]
    assert summary.json()["calls"] == mine["spend"]["calls"]

    raised = [a for a in _tick(settings) if a.kind == "budget_threshold"]
    assert sorted((a.budget_id, a.threshold_pct) for a in raised) == [
        (mine["budget_id"], 50),
        (mine["budget_id"], 80),
    ]
    assert all((a.scope, a.attr_key, a.attr_value) == ("attribute", "user", top) for a in raised)
    assert f"user '{top}'" in raised[0].message
    assert [a for a in _tick(settings) if a.kind == "budget_threshold"] == [], "once per period"
    listed = api.get("/v1/alerts?kind=budget_threshold", headers=A).json()["items"]
    assert (
        sorted((a["attr_key"], a["attr_value"], a["scope"]) for a in listed)
        == [("user", top, "attribute")] * 2
    )

    # other users' spend, here and in the other tenant (a user of the same name), moves it
    # not; the user's own crosses 100 % and raises that one threshold only
    needed = int((limit - top_cost) / Decimal("0.4")) + 2
    now = datetime.now(UTC)
    more = [
        expensive_call(tenant, "chat", f"conv-more-{user}-{n}", now).model_copy(
            update={"attributes": {"user": user}}
        )
        for tenant, user in (("tenant-1", other), ("tenant-2", top))
        for n in range(needed)
    ]
    before = stored_calls(settings)
    asyncio.run(_publish(settings, list(more)))
    wait_for(lambda: stored_calls(settings) >= before + len(more), 60, "rows", detail=worker.tail)
    assert [a for a in _tick(settings) if a.kind == "budget_threshold"] == []
    again = api.get(f"/v1/budgets/{mine['budget_id']}", headers=A).json()
    assert Decimal(again["spend"]["cost_usd"]) == top_cost
    own = [
        expensive_call("tenant-1", "chat", f"conv-own-{n}", now).model_copy(
            update={"attributes": {"user": top}}
        )
        for n in range(needed)
    ]
    before = stored_calls(settings)
    asyncio.run(_publish(settings, list(own)))
    wait_for(lambda: stored_calls(settings) >= before + len(own), 60, "rows", detail=worker.tail)
    raised = [a for a in _tick(settings) if a.kind == "budget_threshold"]
    assert [(a.budget_id, a.threshold_pct) for a in raised] == [(mine["budget_id"], 100)]
    spent = api.get(f"/v1/budgets/{mine['budget_id']}", headers=A).json()
    assert Decimal(spent["spend"]["cost_usd"]) == _brute_force(settings, "tenant-1", top, mine)
    assert spent["spend"]["crossed"] == [50, 80, 100]
    assert api.get("/v1/budgets", headers=B).json()["items"] == []

    # the attribute scope, checked: a 422 with the reason
    for bad, reason in (
        ({"attr_key": "User", "attr_value": "u"}, "attribute key"),
        ({"attr_key": "user", "attr_value": "x" * 257}, "256"),
        ({"attr_key": "user"}, "together"),
        ({"attr_key": "user", "attr_value": "u", "source": "chat", "source_id": "c"}, "source_id"),
        ({"attr_key": "user", "attr_value": "u", "hard": True}, "hard"),
    ):
        response = api.post(
            "/v1/budgets", json={"period": "day", "limit_usd": "5", **bad}, headers=A
        )
        assert response.status_code == 422, (bad, response.text)
        assert reason in str(response.json()["detail"]), response.text
    # an update may change the scope: to the other user, whose spend is now its spend
    changed = api.put(
        f"/v1/budgets/{mine['budget_id']}",
        json={"period": "month", "limit_usd": "1000", "attr_key": "user", "attr_value": other},
        headers=A,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["attr_value"] == other
    assert Decimal(changed.json()["spend"]["cost_usd"]) == _brute_force(
        settings, "tenant-1", other, changed.json()
    )


@pytest.mark.sharded
def test_a_user_whose_spend_jumps_raises_one_spike_alert_and_nobody_else_any(
    migrated: Settings, figure: Callable[[str], None]
) -> None:
    settings = migrated.model_copy(update={"api_keys": "key-a:tenant-1,key-b:tenant-2"})
    end = demo_end()
    published = list(generate(SimulationConfig(calls=DEMO_CALLS, days=7, seed=42, end=end)))
    calls = [with_attributes(p.call) for p in published if p.call is not None and not p.duplicate]
    agent_spike = next(p for p in published if p.spike is not None and p.call is not None)
    assert agent_spike.spike is not None and agent_spike.call is not None
    # the jumper: tenant-2's user seen in the most hours (a normal of their own)
    hours: dict[str, set[datetime]] = defaultdict(set)
    customers: dict[str, Counter[str]] = defaultdict(Counter)
    for c in calls:
        if c.tenant_id == "tenant-2" and "user" in c.attributes:
            hours[c.attributes["user"]].add(c.occurred_at.replace(minute=0, second=0))
            customers[c.attributes["user"]][c.attributes["customer"]] += 1
    jumper = max(sorted(hours), key=lambda u: len(hours[u]))
    jump_hour = (end - timedelta(hours=30)).replace(minute=0, second=0, microsecond=0)
    attributes = {"user": jumper, "customer": customers[jumper].most_common(1)[0][0]}
    jump = [
        expensive_call(
            "tenant-2", "chat", f"conv-jump-{n}", jump_hour + timedelta(minutes=4 * n)
        ).model_copy(update={"attributes": {**attributes, "environment": "production"}})
        for n in range(12)
    ]  # twelve new conversations: none has a normal of its own
    client = connect(settings)
    evaluator = Evaluator(settings, ClickHouse(settings))
    since = datetime.now(UTC) - timedelta(minutes=1)
    try:
        write_attributed(client, calls + jump)
        raised = evaluator.tick()
        again = evaluator.tick()
        published_alerts = evaluator.store.unpublished(since)
        # what may explain a value's spike is read from the raw calls: its own entities,
        # and the earlier keys' values sharing its calls, in the hour asked
        own = evaluator.store.entities_with("tenant-2", "user", jumper, [jump_hour])
        shared = evaluator.store.values_with(
            "tenant-2", "customer", attributes["customer"], ["user", "feature"], [jump_hour]
        )
    finally:
        evaluator.close()
        client.close()
    in_hour = [
        c
        for c in calls + jump
        if c.tenant_id == "tenant-2" and jump_hour <= c.occurred_at < jump_hour + timedelta(hours=1)
    ]
    assert own == {
        (jump_hour, c.source.value, c.source_id)
        for c in in_hour
        if c.attributes.get("user") == jumper
    }
    assert {("chat", f"conv-jump-{n}") for n in range(12)} <= {(s, i) for _, s, i in own}
    assert shared == {
        (jump_hour, k, c.attributes[k])
        for c in in_hour
        if c.attributes.get("customer") == attributes["customer"]
        for k in ("user", "feature")
        if k in c.attributes
    }
    assert (jump_hour, "user", jumper) in shared
    started = [a for a in raised if a.kind == "spike_started"]
    start, stop = agent_spike.spike
    agent = agent_spike.call

    def agents(a: Alert) -> bool:
        return a.source_id == agent.source_id and start.replace(minute=0) <= a.window_start < stop

    users = [a for a in started if a.scope == "attribute"]
    right = [a for a in users if (a.attr_key, a.attr_value, a.window_start) == (
        "user", jumper, jump_hour)]  # fmt: skip
    others = [a for a in users if a not in right]
    false = [a for a in started if a not in right and not agents(a)]
    figure(
        f"attribute spike alerts over the 7-day demo ({DEMO_CALLS:,} calls, seed 42, users and"
        f" customers watched, ending {end:%H:%M} UTC): {len(users)} raised, {len(right)} for"
        f" the user whose spend jumps, {len(others)} for anybody else; {len(false)} false"
        " alerts in all"
    )
    for alert in started:
        print(f"  {alert.kind} {alert.window_start:%Y-%m-%d %H:%M} {alert.message}")
    assert len(right) == 1, [a.message for a in started]
    assert others == [] and false == [], [a.message for a in others + false]
    alert = right[0]
    assert alert.tenant_id == "tenant-2" and alert.source == alert.source_id == ""
    assert alert.observed_cost_usd > 3 * alert.baseline_cost_usd
    assert again == []
    # named in the stored row, the topic's and webhooks' payload, and the API's JSON
    wire = next(a.as_json() for a in published_alerts if a.alert_id == alert.alert_id)
    assert (wire["scope"], wire["attr_key"], wire["attr_value"]) == ("attribute", "user", jumper)
    api = TestClient(create_app(settings))
    listed = api.get("/v1/alerts?kind=spike_started", headers=B).json()["items"]
    assert [(a["scope"], a["attr_key"], a["attr_value"], a["name"]) for a in listed] == [
        ("attribute", "user", jumper, f"user={jumper}")
    ]
