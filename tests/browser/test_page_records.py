"""The records table: newest first, source filter, debounced search, 20 rows a page."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.browser.conftest import Api, format_usd, wait_ready

DASH = "\u2013"  # en dash, as in the pager's "21-40 of 107 calls"


def _rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#records-body tr", "rows => rows.map(r => r.dataset.eventId)")


def _records_search(url: str) -> str | None:
    """The search= of a records request, None for other requests."""
    if "/v1/usage/records" not in url:
        return None
    return parse_qs(urlsplit(url).query).get("search", [""])[0]


def _api_ids(api: Api, **params: Any) -> list[str]:
    body = api.get("/v1/usage/records", period="7d", page_size=20, **params)
    return [str(item["event_id"]) for item in body["items"]]


def test_first_page_lists_the_newest_calls_with_every_column(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "records")
    body = api.get("/v1/usage/records", period="7d", page=1, page_size=20)
    assert body["total"] == api.data.events_7d
    assert _rows(page) == [str(item["event_id"]) for item in body["items"]]
    assert len(_rows(page)) == 20

    first, row = body["items"][0], page.locator("#records-body tr").first
    badge = row.locator(".badge")
    assert (
        badge.inner_text()
        == {"chat": "Chat", "agent": "Agent", "memory": "Memory"}[first["source"]]
    )
    assert first["source"] in (badge.get_attribute("class") or "")
    assert row.locator(".name .title").inner_text() == first["name"]
    assert row.locator(".input").inner_text() == f"{int(first['input_tokens']):,}"
    assert row.locator(".output").inner_text() == f"{int(first['output_tokens']):,}"
    assert row.locator(".cost").inner_text() == format_usd(first["cost_usd"])
    assert re.fullmatch(r"\d+ ms|\d+\.\d s|\d+m \d+s", row.locator(".duration").inner_text())
    assert re.fullmatch(
        r"just now|\d+ min ago|\d+ hours? ago|\d+ days? ago", row.locator(".time").inner_text()
    )
    # colour-coded: the three badges differ in colour
    colours = page.evaluate(
        "['chat','agent','memory'].map(s => { const b = document.createElement('span');"
        " b.className = 'badge ' + s; document.body.append(b);"
        " const c = getComputedStyle(b).color; b.remove(); return c; })"
    )
    assert len(set(colours)) == 3
    assert page.locator("#pager").is_visible()
    assert page.locator("#pager-info").inner_text() == f"1{DASH}20 of {api.data.events_7d} calls"


def test_source_filter_changes_the_rows(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "records")
    before = _rows(page)
    page.select_option("#source-filter", "agent")
    wait_ready(page, "records")
    after = _rows(page)
    assert after != before
    assert after == _api_ids(api, source="agent")
    sources = page.eval_on_selector_all(
        "#records-body tr", "rows => rows.map(r => r.dataset.source)"
    )
    assert set(sources) == {"agent"}
    assert set(page.locator("#records-body .badge").all_inner_texts()) == {"Agent"}

    page.select_option("#source-filter", "memory")
    wait_ready(page, "records")
    assert _rows(page) == _api_ids(api, source="memory")


def test_search_updates_as_the_user_types_debounced(page: Any, api: Api) -> None:
    searches: list[str] = []

    def on_request(request: Any) -> None:
        search = _records_search(request.url)
        if search is not None:
            searches.append(search)

    page.on("request", on_request)
    page.goto("/")
    wait_ready(page, "records")
    searches.clear()
    with page.expect_response(lambda r: _records_search(r.url) == "zEBr"):
        page.locator("#search").press_sequentially("zEBr", delay=40)
    wait_ready(page, "records")
    assert searches == ["zEBr"], "one request once typing pauses, not one per key"
    expected = _api_ids(api, search="zEBr")
    assert expected and _rows(page) == expected
    names = page.locator("#records-body .name .title").all_inner_texts()
    assert names and all("zebr" in n.lower() for n in names)

    # search and source filter combine
    page.select_option("#source-filter", "agent")
    wait_ready(page, "records")
    assert _rows(page) == _api_ids(api, search="zEBr", source="agent")
    assert set(page.locator("#records-body .name .title").all_inner_texts()) == {"Zebra watcher"}

    # a search matching nothing says so
    page.fill("#search", "no such name at all")
    page.wait_for_selector("#records[data-state=empty]")
    assert "No calls match" in page.locator("#records .state-message").inner_text()


def test_page_two_shows_the_next_20_rows(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "records")
    first = _rows(page)
    page.click("#pager-buttons button[data-page='2'][aria-label='Page 2']")
    wait_ready(page, "records")
    second = _rows(page)
    assert len(second) == 20 and not set(first) & set(second)
    assert second == _api_ids(api, page=2)
    assert page.get_attribute("#pager-buttons [aria-current=page]", "data-page") == "2"
    assert page.locator("#pager-info").inner_text() == f"21{DASH}40 of {api.data.events_7d} calls"

    page.click("#pager-buttons button[aria-label='Next page']")
    wait_ready(page, "records")
    assert _rows(page) == _api_ids(api, page=3)

    # the last page holds the remainder, and Next is disabled there
    last = -(-api.data.events_7d // 20)
    page.click(f"#pager-buttons button[aria-label='Page {last}']")
    wait_ready(page, "records")
    assert len(_rows(page)) == api.data.events_7d - 20 * (last - 1)
    assert page.locator("#pager-buttons button[aria-label='Next page']").is_disabled()


def test_names_are_shown_as_text_never_as_markup(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "records")
    with page.expect_response(lambda r: _records_search(r.url) == "<img src=x"):
        page.fill("#search", "<img src=x")
    wait_ready(page, "records")
    names = set(page.locator("#records-body .name .title").all_inner_texts())
    assert names == {'<img src=x onerror="window.pwned=1"> & "quotes"'}
    assert _rows(page) == _api_ids(api, search="<img src=x")
    assert page.locator("#records-body img").count() == 0
    assert page.evaluate("window.pwned") is None
