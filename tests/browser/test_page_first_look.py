"""First look: the link `make run` prints opens the page signed in (the key in the fragment)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llm_usage.runner import page_link
from tests.browser.conftest import EMPTY_KEY, KEY, Api, save_screenshot, wait_ready


@pytest.fixture
def fresh_page(context: Any) -> Iterator[Any]:
    """A page of a browser that has never seen a key; JS errors fail the test."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_the_printed_link_opens_the_page_signed_in_and_clears_the_address_bar(
    fresh_page: Any, api: Api
) -> None:
    page = fresh_page
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    link = page_link(api.base_url, KEY)
    assert link == f"{api.base_url}/#key={KEY}"
    page.goto(link)
    wait_ready(page)
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") == KEY
    assert page.url == f"{api.base_url}/", "the key is gone from the address bar"
    assert page.evaluate("window.location.hash") == ""
    assert not page.locator("#key-dialog").evaluate("d => d.open")
    assert page.locator("#card-calls .value").get_attribute("data-value") == str(api.data.events_7d)
    assert not [url for url in sent if KEY in url], "the key never travels in a URL"
    save_screenshot(page, "first-look-signed-in.png")

    page.reload()  # kept like a key typed into the dialog
    wait_ready(page)
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") == KEY


def test_a_new_link_replaces_the_key_and_keeps_other_fragment_parts(
    fresh_page: Any, api: Api
) -> None:
    page = fresh_page
    page.goto(page_link(api.base_url, KEY))
    wait_ready(page)
    page.goto(f"{api.base_url}/?x=1#key={EMPTY_KEY}&panel=records")
    wait_ready(page)
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") == EMPTY_KEY
    assert page.url == f"{api.base_url}/?x=1#panel=records"
    assert page.locator("#card-calls .value").get_attribute("data-value") == "0"


def test_without_a_key_in_the_link_the_dialog_asks_for_one(fresh_page: Any, api: Api) -> None:
    page = fresh_page
    page.goto(f"{api.base_url}/#key=")
    page.wait_for_selector("#key-dialog[open]")
    assert page.url == f"{api.base_url}/"
    assert page.evaluate("localStorage.getItem('llmUsage.apiKey')") is None
