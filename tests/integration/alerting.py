"""Helpers of the alert tests: settings that react fast, and row counts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from llm_usage.simulate import WRITE_COLUMNS, book_pricer
from producers.contract import UsageEvent, uuid7
from stream_processor.pricing import PriceBook
from tests.conftest import unique


def fast_settings(settings: Settings, **overrides: object) -> Settings:
    """A test's settings with its own alert topics, a worker that joins fast, and an
    alerter that looks every second (``settings`` gives the test its own calls topics and
    worker consumer group: tests/conftest.py)."""
    values: dict[str, object] = {
        "processor_web_port": free_port(),
        "processor_rebalance_timeout_s": 3.0,
        "processor_session_timeout_s": 6.0,
        "topic_alerts": unique("alerts"),
        "topic_budget_status": unique("budget-status"),
        "alert_interval_s": 1.0,
        "alert_webhook_backoff_s": 0.5,
        **overrides,
    }
    return settings.model_copy(update=values)


# Rollups with one row-count of ``calls`` per call (the attribute rollups count a call once
# per attribute, so they are not among them).
PER_CALL_ROLLUPS = (
    "usage_hourly",
    "usage_daily",
    "usage_api_15m",
    "usage_api_daily",
    "usage_api_models_15m",
    "usage_api_models_daily",
    "usage_api_models_1m",
    "usage_entities_15m",
)


def stored_calls(settings: Settings) -> int:
    """Calls visible in the raw table *and* in every rollup: the least of their counts. An
    insert's views commit one after the other, after the raw table, so the raw count alone
    runs ahead of what the API (which reads the rollups) can see."""
    sums = ", ".join(f"(SELECT sum(calls) FROM {table})" for table in PER_CALL_ROLLUPS)
    client = connect(settings)
    try:
        return int(client.command(f"SELECT least((SELECT count() FROM usage_events), {sums})"))
    finally:
        client.close()


def expensive_call(tenant: str, source: str, source_id: str, at: datetime) -> UsageEvent:
    """One call of an entity running amok: a huge uncached prompt (about $0.48)."""
    return UsageEvent(
        event_id=uuid7(),
        tenant_id=tenant,
        occurred_at=at,
        source=source,
        source_id=source_id,
        model="claude-sonnet-4-5",
        input_tokens=150_000,
        output_tokens=2_000,
        duration_ms=9_000,
    )


def demo_end() -> datetime:
    """Where the alert tests end simulate's week: the latest 17:54 UTC.

    The week depends on its end's time of day (diurnal traffic, agent schedules): ending at
    17:54 puts the injected spike at 13:30, in working hours, half of it in each clock
    hour, each half a spike of its own, and gives the same data every day. At night the
    spike is a few dollars, and at some minutes it stays under the $2 floor (a CI run
    ending at 02:40 missed it; `llm-usage bench alerts` measures how often).
    """
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    end = now.replace(hour=17, minute=54)
    return end if end <= now else end - timedelta(days=1)


CUSTOMERS = ("acme", "globex", "initech")


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def with_attributes(call: UsageEvent) -> UsageEvent:
    """``call``, given attributes like the demo's when it has none (simulate gives its calls
    their own): a chat's ``user`` (a few hundred, heavy-tailed), every call's ``customer``
    (three per tenant), an agent's ``feature``; a pure function of the tenant and entity,
    so a duplicate gets the same ones."""
    if call.attributes:
        return call
    h = _hash(call.tenant_id, call.source.value, call.source_id)
    attributes = {"customer": CUSTOMERS[h % 3], "environment": "production"}
    if call.source.value == "chat":
        u = (h >> 8) % 1_000_000 / 1_000_000
        attributes["user"] = f"user-{int(300 * u**3):03d}"  # low numbers far more often
    elif call.source.value == "agent":
        attributes["feature"] = ("digest", "triage", "research")[(h >> 8) % 3]
    return call.model_copy(update={"attributes": attributes})


def write_attributed(client: Any, events: Iterable[UsageEvent]) -> int:
    """:func:`llm_usage.simulate.write_calls` with the calls' attributes (straight into
    ``usage_events``; the rollups fill as in production), priced with the shipped book."""
    price = book_pricer(PriceBook.load())
    rows = []
    for event in events:
        cost = price(event)
        rows.append([
            event.event_id, event.tenant_id, event.occurred_at, event.source.value,
            event.source_id, event.source_name or "", event.model, event.input_tokens,
            event.output_tokens, cost or 0, cost is not None, event.duration_ms,
            event.status.value, event.attributes,
        ])  # fmt: skip
    if rows:
        client.insert("usage_events", rows, column_names=[*WRITE_COLUMNS, "attributes"])
    return len(rows)
