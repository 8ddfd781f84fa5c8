"""Summary cards, the API key flow, and the loading / empty / error states."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.browser.conftest import (
    EMPTY_KEY,
    KEY,
    PANELS,
    Api,
    format_tokens,
    format_usd,
    save_screenshot,
    wait_ready,
)

CARDS = {
    "card-total-cost": "total_cost_usd",
    "card-input-tokens": "input_tokens",
    "card-output-tokens": "output_tokens",
    "card-calls": "calls",
    "card-avg-cost": "avg_cost_per_call_usd",
}


def _card(page: Any, card_id: str) -> tuple[str, str]:
    value = page.locator(f"#{card_id} .value")
    return value.inner_text(), value.get_attribute("data-value") or ""


def _expect_cards(page: Any, summary: dict[str, Any]) -> None:
    for card_id, field in CARDS.items():
        text, raw = _card(page, card_id)
        assert raw == str(summary[field]), f"{card_id} holds {raw}, the API said {summary[field]}"
        if field.endswith("_usd"):
            expected = format_usd(summary[field])
        elif field == "calls":
            expected = f"{int(summary[field]):,}"
        else:
            expected = format_tokens(summary[field])
        assert text == expected, f"{card_id} shows {text!r}, expected {expected!r}"


def test_cards_show_the_numbers_the_api_returns(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page)
    # the default window is 7 days
    summary = api.get("/v1/usage/summary", period="7d")
    assert int(summary["calls"]) == api.data.events_7d
    _expect_cards(page, summary)
    assert int(summary["input_tokens"]) >= 1000, "data big enough to show the compact format"
    assert page.locator("#card-input-tokens .value").inner_text()[-1] in "KMB"

    page.click("#period-switch [data-period='24h']")
    wait_ready(page, "cards")
    summary = api.get("/v1/usage/summary", period="24h")
    assert int(summary["calls"]) == api.data.events_24h
    _expect_cards(page, summary)

    wait_ready(page)
    assert save_screenshot(page, "usage-page-24h.png").stat().st_size > 10_000


def _expect_cache_savings(page: Any, summary: dict[str, Any]) -> None:
    """The line under the Total Cost card: the summary's prompt-cache figures, formatted
    like the card (hidden when both are 0)."""
    line = page.locator("#card-total-cost .cache-savings")
    saved, premium = summary["cache_read_savings_usd"], summary["cache_write_premium_usd"]
    assert line.get_attribute("data-saved") == saved
    assert line.get_attribute("data-premium") == premium
    if Decimal(saved) == 0 and Decimal(premium) == 0:
        assert line.is_hidden()
        return
    expected = f"Prompt cache saved {format_usd(saved)}"
    if Decimal(premium) != 0:
        expected += f" (writes cost {format_usd(premium)} more)"
    assert line.is_visible()
    assert line.inner_text() == expected
    assert saved in (line.get_attribute("title") or ""), "the exact figure on hover"


def test_the_total_cost_card_shows_what_prompt_caching_saved(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "cards")
    summary = api.get("/v1/usage/summary", period="7d")
    assert (
        Decimal(summary["cache_read_savings_usd"]) > 0 < Decimal(summary["cache_write_premium_usd"])
    ), "the generated calls read and write the cache"
    _expect_cache_savings(page, summary)
    save_screenshot(page, "usage-page-cache-savings.png", "#card-total-cost")

    page.click("#period-switch [data-period='24h']")
    wait_ready(page, "cards")
    _expect_cache_savings(page, api.get("/v1/usage/summary", period="24h"))


def test_the_cache_savings_line_is_hidden_without_savings(context: Any, api: Api) -> None:
    context.add_init_script(f"localStorage.setItem('llmUsage.apiKey', '{EMPTY_KEY}')")
    page = context.new_page()
    page.goto("/")
    page.wait_for_selector("#cards[data-state=empty]")
    summary = api.get("/v1/usage/summary", key=EMPTY_KEY, period="7d")
    assert summary["cache_read_savings_usd"] == summary["cache_write_premium_usd"]
    _expect_cache_savings(page, summary)


def test_api_key_is_asked_once_and_a_bad_key_can_be_replaced(context: Any, api: Api) -> None:
    page = context.new_page()
    page.goto("/")
    dialog = page.locator("#key-dialog")
    assert dialog.is_visible(), "a first visit asks for the key"
    page.fill("#key-input", "not-a-real-key")
    page.click("#key-form button[type=submit]")
    error = page.locator("#key-error")
    error.wait_for(state="visible")
    assert "rejected" in error.inner_text() and "401" in error.inner_text()
    assert dialog.is_visible(), "the user can enter another key right away"
    save_screenshot(page, "usage-page-bad-key.png")
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") is None, "bad key not kept"

    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    wait_ready(page)
    assert not dialog.is_visible()
    assert _card(page, "card-calls")[1] == str(api.data.events_7d)

    page.reload()
    wait_ready(page)
    assert not dialog.is_visible(), "the key is kept in the browser"
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") == KEY


def test_empty_period_says_so(context: Any, api: Api) -> None:
    context.add_init_script(f"localStorage.setItem('llmUsage.apiKey', '{EMPTY_KEY}')")
    page = context.new_page()
    page.goto("/")
    for panel in PANELS:
        page.wait_for_selector(f"#{panel}[data-state=empty]")
        message = page.locator(f"#{panel} .state-message")
        assert message.inner_text() == "No usage in this period", panel
    assert _card(page, "card-calls") == ("0", "0")
    save_screenshot(page, "usage-page-empty.png")
    assert page.locator("#records-body tr").count() == 0
    assert page.locator("#pager").is_hidden()


def test_api_failure_shows_an_error_and_retry_recovers(page: Any, api: Api) -> None:
    def fail(route: Any) -> None:
        route.fulfill(status=500, content_type="application/json", body='{"detail":"boom"}')

    page.route("**/v1/usage/summary?*", fail)
    page.goto("/")
    page.wait_for_selector("#cards[data-state=error]")
    message = page.locator("#cards .state-message")
    assert "HTTP 500" in message.inner_text() and "boom" in message.inner_text()
    wait_ready(page, "timeseries", "by-source", "top", "records")  # the rest still works
    save_screenshot(page, "usage-page-api-error.png")

    page.unroute("**/v1/usage/summary?*")
    message.locator("button", has_text="Retry").click()
    wait_ready(page, "cards")
    assert _card(page, "card-calls")[1] == str(api.data.events_7d)


def test_loading_state_is_shown_while_waiting(page: Any, api: Api) -> None:
    held: list[Any] = []
    page.route("**/v1/usage/records?*", lambda route: held.append(route))
    page.goto("/")
    page.wait_for_selector("#records[data-state=loading][aria-busy=true]")
    assert held, "the records request is being held"
    for route in held:
        route.continue_()
    page.unroute("**/v1/usage/records?*")
    wait_ready(page, "records")
