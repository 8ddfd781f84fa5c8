"""Helpers of the alert tests: settings that react fast, and row counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from producers.contract import UsageEvent, uuid7
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


def raw_count(settings: Settings) -> int:
    client = connect(settings)
    try:
        return int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
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
