"""``instrument(..., budget_guard=...)``: a used-up hard budget refuses the call before it
is sent; a stale or missing status lets it through (fail open) and says why."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llm_usage.settings import Settings
from producers.budget_guard import BudgetExceeded, BudgetGuard
from producers.instrument import instrument
from tests.unit.test_producers_instrument import ASK, AsyncSink, Sink, async_client, sync_client

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
AGENT_BUDGET = {
    "budget_id": "b1",
    "name": "digest",
    "source": "agent",
    "source_id": "agent-7",
    "until": "2026-12-04T00:00:00+00:00",
}


def guard(age_s: float = 10.0, exhausted: list[dict[str, Any]] | None = None) -> BudgetGuard:
    g = BudgetGuard(Settings(budget_status_max_age_s=300), clock=NOW.timestamp)  # type: ignore[call-arg]
    as_of = (NOW - timedelta(seconds=age_s)).isoformat()
    g.update({"tenant_id": "t1", "as_of": as_of, "exhausted": exhausted or [AGENT_BUDGET]})
    return g


def test_a_used_up_entity_budget_refuses_that_entity_only() -> None:
    g = guard()
    with pytest.raises(BudgetExceeded, match="digest"):
        g.check("t1", "agent", "agent-7")
    g.check("t1", "agent", "agent-8")  # another agent
    g.check("t1", "chat", "agent-7")  # another source with the same id
    g.check("t2", "agent", "agent-7")  # another tenant (no status: fail open)


def test_tenant_and_source_budgets_cover_every_call_they_name() -> None:
    tenant_wide = guard(exhausted=[{"budget_id": "b2", "source": "", "source_id": ""}])
    with pytest.raises(BudgetExceeded):
        tenant_wide.check("t1", "memory", "conv-1")
    chat_only = guard(exhausted=[{"budget_id": "b3", "source": "chat", "source_id": ""}])
    with pytest.raises(BudgetExceeded):
        chat_only.check("t1", "chat", "conv-1")
    chat_only.check("t1", "agent", "agent-1")


def test_a_stale_status_fails_open_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    g = guard(age_s=301)
    with caplog.at_level(logging.WARNING, logger="producers.budget_guard"):
        g.check("t1", "agent", "agent-7")  # no raise
    assert "fail open" in caplog.text and "301 s old" in caplog.text


def test_an_older_status_never_replaces_a_newer_one() -> None:
    g = guard(age_s=10)
    g.update(
        {"tenant_id": "t1", "as_of": (NOW - timedelta(minutes=5)).isoformat(), "exhausted": []}
    )
    with pytest.raises(BudgetExceeded):
        g.check("t1", "agent", "agent-7")
    g.update({"tenant_id": "t1", "as_of": NOW.isoformat(), "exhausted": []})
    g.check("t1", "agent", "agent-7")


def test_instrumented_clients_raise_before_sending_and_publish_nothing() -> None:
    seen: list[str] = []
    sink = Sink()
    client = instrument(
        sync_client(seen=seen),
        sink,
        tenant_id="t1",
        source="agent",
        source_id="agent-7",
        budget_guard=guard(),
    )
    with pytest.raises(BudgetExceeded):
        client.messages.create(**ASK)
    assert seen == [] and sink.events == []
    other = client.with_options(timeout=5)  # copies keep the guard
    with pytest.raises(BudgetExceeded):
        other.messages.create(**ASK)

    async_sink = AsyncSink()
    aclient = instrument(
        async_client(seen=seen),
        async_sink,
        tenant_id="t1",
        source="agent",
        source_id="agent-8",
        budget_guard=guard(),
    )
    asyncio.run(aclient.messages.create(**ASK))  # another agent: sent and published
    assert seen == ["POST /v1/messages"] and len(async_sink.events) == 1


def test_budget_guard_true_needs_a_publisher_with_settings() -> None:
    with pytest.raises(TypeError, match="BudgetGuard"):
        instrument(sync_client(), Sink(), tenant_id="t1", source="chat", budget_guard=True)
