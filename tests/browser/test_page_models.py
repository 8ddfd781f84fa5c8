"""Cost by model (with batch / fast / priority badges) and the "cost incomplete" warning.

Its own data (``page_data`` overrides the package's): priced calls at every price tier,
web searches, and calls of two models the price book does not know; a second tenant has
priced calls only, and its Total Cost card must not warn.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.settings import Settings
from tests.browser.conftest import (
    KEY,
    TENANT,
    Api,
    PageData,
    format_tokens,
    format_usd,
    save_screenshot,
    wait_ready,
)
from tests.conftest import unique

PRICED_KEY, PRICED_TENANT = "browser-priced-key", "browser-priced-tenant"
# price_tier and token_cost_usd are MATERIALIZED: ClickHouse computes them, inserts omit them
COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "cost_usd", "tool_cost_usd", "priced", "service_tier", "speed", "web_search_requests",
    "duration_ms", "status", "kafka_topic", "kafka_partition", "kafka_offset",
]  # fmt: skip
# (service_tier, speed) of a call of each price tier
CALL_OF_TIER = {
    "standard": ("standard", "standard"),
    "batch": ("batch", "standard"),
    "fast": ("standard", "fast"),
    "priority": ("priority", "standard"),
}
# (model, price tier, priced, calls, token cost per call, web searches per call)
MIX = [
    ("claude-opus-4-5", "standard", True, 6, "0.4100", 0),
    ("claude-sonnet-4-5", "standard", True, 9, "0.0900", 2),
    ("claude-sonnet-4-5", "batch", True, 12, "0.0450", 0),
    ("claude-opus-4-5", "fast", True, 3, "1.2300", 0),
    ("claude-haiku-4-5", "priority", True, 4, "0.0125", 0),
    ("claude-future-9", "standard", False, 5, "0", 0),
    ("acme-llm-2", "standard", False, 2, "0", 0),
]
UNKNOWN = ["claude-future-9", "acme-llm-2"]  # most unpriced calls first


def _rows(tenant: str, now: datetime, mix: list[tuple[str, str, bool, int, str, int]]) -> list[
    list[object]
]:  # fmt: skip
    rows: list[list[object]] = []
    for model, tier, priced, calls, token_cost, searches in mix:
        for i in range(calls):
            tool = Decimal("0.01") * searches if priced else Decimal(0)
            cost = Decimal(token_cost) + tool  # token_cost_usd = cost_usd - tool_cost_usd
            rows.append([
                uuid.uuid4(), tenant, now - timedelta(hours=1 + 3 * len(rows)), "chat",
                f"conv-{i % 3}", f"Conversation {i % 3}", model, 1_000 + 37 * i, 200 + i,
                0, 500 * (i % 2), cost, tool, priced, *CALL_OF_TIER[tier], searches,
                1_500, "ok", "calls", 0, len(rows),
            ])  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def page_data(base_settings: Settings) -> Iterator[PageData]:
    """This module's database: the tenant of ``KEY`` with the mix above, and a priced one."""
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("browser_models"),
            "api_keys": f"{KEY}:{TENANT},{PRICED_KEY}:{PRICED_TENANT}",
        }
    )
    admin = connect(settings, database="")
    apply_migrations(admin, settings)
    now = datetime.now(UTC)
    rows = _rows(TENANT, now, MIX) + _rows(PRICED_TENANT, now, [m for m in MIX if m[2]])
    client = connect(settings)
    client.insert("usage_events", rows, column_names=COLUMNS)
    client.close()
    mine = [r for r in rows if r[1] == TENANT]
    day = sum(1 for r in mine if now - r[2] < timedelta(hours=24))  # type: ignore[operator]
    try:
        yield PageData(settings=settings, events_24h=day, events_7d=len(mine), events_30d=len(mine))
    finally:
        if not os.environ.get("LLM_USAGE_KEEP_TEST_DATABASES"):
            admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
        admin.close()


def test_cost_incomplete_names_the_unknown_models(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "cards", "by-model")
    summary = api.get("/v1/usage/summary", period="7d")
    assert [m["model"] for m in summary["unpriced_models"]] == UNKNOWN
    warning = page.locator("#card-total-cost .sub")
    assert warning.inner_text() == (
        "cost incomplete: 7 calls of unknown models (claude-future-9, acme-llm-2)"
    )
    assert "warn" in (warning.get_attribute("class") or "")
    title = warning.get_attribute("title") or ""
    assert "claude-future-9: 5 calls" in title and "acme-llm-2: 2 calls" in title


def test_cost_by_model_shows_every_model_and_tier(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page)
    body = api.get("/v1/usage/by-model", period="7d")
    items = body["items"]
    assert {i["price_tier"] for i in items} == {"standard", "batch", "fast", "priority"}
    rows = page.locator("#models-body tr")
    assert rows.count() == len(items) == len(MIX)
    total = Decimal(body["total_cost_usd"])
    for index, item in enumerate(items):
        row = rows.nth(index)
        assert row.get_attribute("data-model") == item["model"]
        assert row.get_attribute("data-tier") == item["price_tier"]
        badge = row.locator(".badge.tier")
        if item["price_tier"] == "standard":
            assert badge.count() == 0, f"{item['model']} standard has no badge"
        else:
            assert badge.inner_text() == item["price_tier"].capitalize()
        assert row.locator(".calls").inner_text() == str(item["calls"])
        assert row.locator(".tokens").inner_text() == format_tokens(item["total_tokens"])
        cost = row.locator(".cost").inner_text()
        if item["priced"]:
            assert cost == format_usd(item["cost_usd"])
            share = Decimal(item["cost_usd"]) / total * 100
            assert row.locator(".pct").inner_text() == f"{share:.1f}%"
        else:
            assert cost == "unpriced"
            assert row.locator("td.share").inner_text() == "\u2013", "no share of an unknown cost"
    first = rows.nth(0)
    assert (first.get_attribute("data-model"), first.get_attribute("data-tier")) == (
        "claude-opus-4-5", "fast"
    ), "most cost first: 3 x $1.23 beats 6 x $0.41"  # fmt: skip
    sonnet = page.locator("#models-body tr[data-model='claude-sonnet-4-5'][data-tier='standard']")
    assert sonnet.locator(".model").inner_text() == f"18 web searches · {format_usd('0.18')}"
    note = page.locator("#models-note")
    assert note.is_visible() and "7 calls of models not in the price book" in note.inner_text()
    assert save_screenshot(page, "usage-page-cost-by-model.png").stat().st_size > 10_000
    panel = save_screenshot(page, "usage-panel-cost-by-model.png", "#by-model")
    assert panel.stat().st_size > 2_000
    cards = save_screenshot(page, "usage-cards-cost-incomplete.png", "#cards")
    assert cards.stat().st_size > 2_000


def test_no_warning_when_every_call_is_priced(context: Any, api: Api) -> None:
    context.add_init_script(f"localStorage.setItem('llmUsage.apiKey', '{PRICED_KEY}')")
    page = context.new_page()
    page.goto("/")
    wait_ready(page, "cards", "by-model")
    assert page.locator("#card-total-cost .sub").inner_text() == ""
    assert page.locator("#models-note").is_hidden()
    assert page.locator("#models-body tr").count() == 5
    assert page.locator("#models-body .cost.unpriced").count() == 0
