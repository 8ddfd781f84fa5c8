"""The 24h / 7d / 30d switch, remembered across reloads."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Api, wait_ready


def _pressed(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#period-switch button[aria-pressed=true]", "bs => bs.map(b => b.dataset.period)"
    )


def test_chosen_period_survives_a_reload(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page)
    assert _pressed(page) == ["7d"]
    assert page.locator("#card-calls .value").get_attribute("data-value") == str(api.data.events_7d)

    page.click("#period-switch [data-period='30d']")
    wait_ready(page)
    assert _pressed(page) == ["30d"]
    assert page.locator("#card-calls .value").get_attribute("data-value") == str(
        api.data.events_30d
    )

    page.reload()
    wait_ready(page)
    assert _pressed(page) == ["30d"], "the choice survives the reload"
    assert page.locator("#card-calls .value").get_attribute("data-value") == str(
        api.data.events_30d
    )
    records = api.get("/v1/usage/records", period="30d", page_size=20)
    assert page.locator("#pager-info").inner_text().endswith(f"of {records['total']} calls")

    page.click("#period-switch [data-period='24h']")
    wait_ready(page)
    page.goto("/")  # a new visit, not only a reload
    wait_ready(page)
    assert _pressed(page) == ["24h"]
    assert page.locator("#card-calls .value").get_attribute("data-value") == str(
        api.data.events_24h
    )
