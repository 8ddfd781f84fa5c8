"""The Budgets panel, the budget bars in Top consumers, the Alerts list and the alert
markers on the cost chart, against budgets and alerts stored in the real ClickHouse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from llm_usage.clickhouse import connect
from query_api.keys import ClientRows
from stream_processor.alerts.budgets import Budget, Period, period_window
from stream_processor.alerts.store import Alert, AlertStore
from tests.browser.conftest import TENANT, Api, save_screenshot, wait_ready

NOW = datetime.now(UTC)
SPIKE_HOUR = (NOW - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
# A day budget's alert of three days ago: in the default 7-day window whatever the date
# (a month's alert, whose window starts on the 1st, left it from the 8th of a month on).
BUDGET_DAY = period_window(Period.DAY, "UTC", NOW - timedelta(days=3))


def _budget(budget_id: str, name: str, source: str, source_id: str, limit: str) -> Budget:
    return Budget(
        tenant_id=TENANT,
        budget_id=budget_id,
        name=name,
        source=source,
        source_id=source_id,
        period=Period.MONTH,
        time_zone="UTC",
        limit_usd=Decimal(limit),
        thresholds=(50, 80, 100),
        hard=False,
        created_at=NOW,
        updated_at=NOW,
    )


def _alert(alert_id: str, kind: str, start: datetime, message: str, **kw: Any) -> Alert:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "alert_id": alert_id,
        "kind": kind,
        "scope": "entity",
        "source": "agent",
        "source_id": "agent-digest",
        "source_name": "Daily digest",
        "budget_id": "",
        "threshold_pct": 0,
        "window_start": start,
        "window_end": start + timedelta(hours=1),
        "observed_cost_usd": Decimal("4.2"),
        "observed_calls": 40,
        "baseline_cost_usd": Decimal("0.3"),
        "baseline_calls": 3.0,
        "message": message,
        "raised_at": start + timedelta(minutes=2),
        **kw,
    }
    return Alert(**values)


@pytest.fixture(scope="module")
def alerting(api: Api) -> Iterator[Api]:
    client = connect(api.data.settings)
    store = AlertStore(ClientRows(client))
    store.put_budget(_budget("b-tenant", "Workspace", "", "", "1000"))
    store.put_budget(_budget("b-digest", "Digest cap", "agent", "agent-digest", "0.05"))
    store.insert_alerts(
        [
            _alert(
                "a-spike",
                "spike_started",
                SPIKE_HOUR,
                "cost spike: Daily digest (agent) spent $4.20 in 40 calls",
            ),
            _alert(
                "a-budget",
                "budget_threshold",
                BUDGET_DAY[0],
                "budget 'Digest cap': 100% reached",
                window_end=BUDGET_DAY[1],  # a budget alert's window is its period
                budget_id="b-digest",
                threshold_pct=100,
                raised_at=BUDGET_DAY[0] + timedelta(hours=20),
            ),
        ]
    )
    yield api
    client.close()


def test_budgets_panel_top_bars_alert_list_and_chart_markers(page: Any, alerting: Api) -> None:
    page.goto("/")
    wait_ready(page, "cards", "timeseries", "top", "budgets", "alerts")
    budgets = alerting.get("/v1/budgets")["items"]
    rows = page.locator("#budget-list li")
    assert rows.count() == len(budgets) == 2
    digest = page.locator("#budget-list li[data-budget-id=b-digest]")
    assert "Digest cap" in digest.inner_text()
    spent = next(b for b in budgets if b["budget_id"] == "b-digest")["spend"]
    assert float(digest.locator(".meter").get_attribute("aria-valuenow")) == spent["percent"]
    assert "over" in (digest.locator(".meter").get_attribute("class") or "")  # > 100 %

    # the budgeted agent carries its bar in Top consumers; the others do not
    bar = page.locator("#top-list li[data-source-id=agent-digest] .budget-bar")
    assert bar.count() == 1 and "Budget:" in bar.inner_text()
    assert page.locator("#top-list .budget-bar").count() == 1

    alerts = page.locator("#alert-list li")
    assert alerts.count() == 2
    assert page.locator("#alert-list li[data-kind=spike_started]").inner_text().startswith("Spike")

    # the default 7d chart (daily) marks the days of both alerts; 24h opens hourly and
    # marks the bar of the spike's hour in the viewer's zone (the budget alert of three
    # days ago is older than the window)
    assert len((page.get_attribute("#cost-chart", "data-alert-buckets") or "").split(",")) == 2
    save_screenshot(page, "alerts-and-budgets.png")
    page.click("#period-switch [data-period='24h']")
    wait_ready(page, "timeseries", "alerts")
    zone = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    points = alerting.get("/v1/usage/timeseries", period="24h", granularity="hour", tz=zone)
    starts = [datetime.fromisoformat(p["bucket_start"]) for p in points["points"]]
    expected = max(i for i, s in enumerate(starts) if s <= SPIKE_HOUR)
    marked = page.get_attribute("#cost-chart", "data-alert-buckets")
    assert marked == str(expected), (marked, expected)
    colour = page.evaluate(
        f"Chart.getChart('cost-chart').data.datasets[0].backgroundColor[{expected}]"
    )
    assert colour == "#d92d20"
    save_screenshot(page, "alerts-24h-hourly.png")
    save_screenshot(page, "alerts-panel.png", "#alerts")
    save_screenshot(page, "budgets-panel.png", "#budgets")


def test_no_budgets_or_alerts_is_said_plainly(page: Any, api: Api, context: Any) -> None:
    from tests.browser.conftest import EMPTY_KEY

    context.add_init_script(f"localStorage.setItem('llmUsage.apiKey', '{EMPTY_KEY}')")
    page.goto("/")
    wait_ready(page, "budgets", "alerts")
    assert "No budgets yet" in page.inner_text("#budgets")
    assert "No alerts" in page.inner_text("#alerts")
