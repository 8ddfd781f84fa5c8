"""Helpers of the alert tests: settings that react fast, and row counts."""

from __future__ import annotations

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from tests.conftest import unique


def fast_settings(settings: Settings, **overrides: object) -> Settings:
    """A test's settings with its own alert topics, a worker that joins fast, and an
    alerter that looks every second."""
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
