"""Attribution on the page: the Group by selector (source, model, each attribute key) driving
the donut and the breakdown table, a click on a group filtering the whole page (removable
chips), the CSV exports, and a call's attributes in the records table.

The calls are conftest's generated calls, each with attributes: chat calls have a ``user``
(agent and memory calls have none: the "(none)" group), every call a ``customer`` (one with a
comma and quotes, for the CSV), agent calls a ``feature``.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.settings import Settings
from tests.browser.conftest import (
    COLUMNS,
    EMPTY_KEY,
    KEY,
    TENANT,
    Api,
    PageData,
    _rows,
    format_usd,
    save_screenshot,
    wait_ready,
)
from tests.conftest import unique

USERS = ["u-ana", "u-bo", "u-chen", "u-dee"]
CUSTOMERS = ["acme", 'Globex, "Inc"']
FEATURES = {"agent-digest": "digest", "agent-triage": "triage", "agent-zebra": "watch"}
INSERTED: dict[str, dict[str, str]] = {}  # event id -> attributes, as inserted
# the API's file names: llm-usage-records-<from>-<to>.csv, llm-usage-breakdown-<by>-<from>-<to>.csv
FILE_NAME = re.compile(r"llm-usage-(records|breakdown-[a-z0-9_.]+)-\d{8}T\d{6}Z-\d{8}T\d{6}Z\.csv")


def _attributes(row: list[object], rng: random.Random) -> dict[str, str]:
    source, source_id = row[3], str(row[4])
    attributes = {"customer": rng.choice(CUSTOMERS)}
    if source == "chat":
        # heavy-tailed: the first user makes most of the calls
        attributes["user"] = rng.choices(USERS, weights=[8, 4, 2, 1])[0]
    if source == "agent":
        attributes["feature"] = FEATURES[source_id]
    return attributes


@pytest.fixture(scope="module")
def page_data(base_settings: Settings) -> Iterator[PageData]:
    """conftest's calls of the test tenant, with attributes (overrides conftest's page_data)."""
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("browser_attr"),
            "api_keys": f"{KEY}:{TENANT},{EMPTY_KEY}:nobody-home",
        }
    )
    client = connect(settings, database="")
    apply_migrations(client, settings)
    rows, (n24, n7, n30) = _rows(datetime.now(UTC))
    rng = random.Random(20261207)
    with_attributes = []
    for row in rows:
        attributes = _attributes(row, rng)
        INSERTED[str(row[0])] = attributes
        with_attributes.append([*row, attributes])
    data_client = connect(settings)
    data_client.insert("usage_events", with_attributes, column_names=[*COLUMNS, "attributes"])
    data_client.close()
    try:
        yield PageData(settings=settings, events_24h=n24, events_7d=n7, events_30d=n30)
    finally:
        if not os.environ.get("LLM_USAGE_KEEP_TEST_DATABASES"):
            client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
        client.close()


# --- helpers ----------------------------------------------------------------------------


def _group_by(page: Any, by: str) -> None:
    """Choose ``by`` in the Group by selector (once the window's keys are listed)."""
    page.wait_for_selector(f"#group-by option[value='{by}']", state="attached")
    page.select_option("#group-by", by)
    page.wait_for_selector(f"#source-chart[data-by='{by}']", state="attached")
    wait_ready(page, "by-source")


def _table(page: Any) -> list[dict[str, str]]:
    """The breakdown table's rows: kind, key, shown name, calls, cost, share."""
    result: list[dict[str, str]] = page.eval_on_selector_all(
        "#breakdown-body tr",
        """rows => rows.map(r => ({
            kind: r.dataset.kind, key: r.dataset.key ?? null,
            name: r.querySelector('.group-key').innerText.trim(),
            calls: r.querySelector('.calls').innerText, cost: r.querySelector('.cost').innerText,
            share: r.querySelector('.share').innerText.trim(),
        }))""",
    )
    return result


def _cards(page: Any) -> dict[str, str]:
    """The raw values behind the five cards (data-value: the API's exact figures)."""
    result: dict[str, str] = page.eval_on_selector_all(
        "#cards .card",
        "cards => Object.fromEntries(cards.map("
        "c => [c.id, c.querySelector('.value').dataset.value]))",
    )
    return result


def _expected_cards(api: Api, **params: Any) -> dict[str, str]:
    s = api.get("/v1/usage/summary", **params)
    return {
        "card-total-cost": s["total_cost_usd"],
        "card-input-tokens": str(s["input_tokens"]),
        "card-output-tokens": str(s["output_tokens"]),
        "card-calls": str(s["calls"]),
        "card-avg-cost": s["avg_cost_per_call_usd"],
    }


def _wait_cards(page: Any, expected: dict[str, str]) -> None:
    """Wait for the cards to show ``expected`` (a reload after a filter change has landed)."""
    page.wait_for_function(
        "calls => document.querySelector('#card-calls .value').dataset.value === calls"
        " && document.querySelector('#cards').dataset.state === 'ready'",
        arg=expected["card-calls"],
    )
    wait_ready(page)


def _chips(page: Any) -> list[tuple[str, str, str]]:
    chips: list[list[str]] = page.eval_on_selector_all(
        "#filter-chips .chip",
        "cs => cs.map(c => [c.dataset.filter, c.dataset.value,"
        " c.querySelector('.chip-text').innerText])",
    )
    return [(name, value, text) for name, value, text in chips]


def _records_ids(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#records-body tr", "rows => rows.map(r => r.dataset.eventId)"
    )
    return ids


def _api_record_ids(api: Api, **params: Any) -> list[str]:
    body = api.get("/v1/usage/records", page_size=20, **params)
    return [item["event_id"] for item in body["items"]]


def _read_csv(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


# --- tests ------------------------------------------------------------------------------


def test_group_by_lists_the_attribute_keys_of_the_window(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page)
    page.wait_for_selector("#group-by option[value='attr.user']", state="attached")
    options = page.eval_on_selector_all("#group-by option", "os => os.map(o => o.value)")
    keys = [k["key"] for k in api.get("/v1/usage/attributes", period="7d")["keys"]]
    assert sorted(keys) == ["customer", "feature", "user"]
    assert options == ["source", "model", *(f"attr.{k}" for k in keys)]
    # by source (the default): the donut keeps its three sources, the table the API's groups
    assert page.input_value("#group-by") == "source"
    groups = api.get("/v1/usage/breakdown", period="7d", by="source")["groups"]
    assert [(r["key"], r["cost"]) for r in _table(page)] == [
        (g["key"], format_usd(g["cost_usd"])) for g in groups
    ]


def test_group_by_user_shows_the_api_groups(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page)
    _group_by(page, "attr.user")
    body = api.get("/v1/usage/breakdown", period="7d", by="attr.user")
    groups = body["groups"]
    assert {g["key"] for g in groups} == {*USERS, None}  # agent and memory calls: no user
    rows = _table(page)
    assert [(r["kind"], r["key"]) for r in rows] == [
        ("none" if g["key"] is None else "group", g["key"]) for g in groups
    ]
    for row, group in zip(rows, groups, strict=True):
        assert row["name"] == (group["key"] or "(none)")
        assert row["calls"] == f"{group['calls']:,}"
        assert row["cost"] == format_usd(group["cost_usd"])
        assert row["share"] == f"{group['share'] * 100:.1f}%"
    assert body["other"] is None and "Other" not in [r["name"] for r in rows]
    chart = page.evaluate(
        "(() => { const c = Chart.getChart('source-chart');"
        " return {labels: c.data.labels, data: c.data.datasets[0].data}; })()"
    )
    assert chart["labels"] == [g["key"] or "(none)" for g in groups]
    assert chart["data"] == pytest.approx([float(g["cost_usd"]) for g in groups])
    assert page.locator("#breakdown-key-head").inner_text() == "user"
    assert not page.locator("#source-legend").is_visible()  # the table is the legend
    # "(none)" cannot filter (the API has no "attribute absent" filter); the users can
    assert page.locator("#breakdown-body tr[data-kind=none] .group-link").count() == 0
    assert page.locator("#breakdown-body tr[data-kind=group] .group-link").count() == len(USERS)
    save_screenshot(page, "usage-page-group-by-user.png", "#by-source")

    # the choice is kept by the browser, like the period
    page.reload()
    page.wait_for_selector("#source-chart[data-by='attr.user']", state="attached")
    assert page.input_value("#group-by") == "attr.user"


def test_a_click_on_a_group_filters_the_whole_page_and_the_chip_removes_it(
    page: Any, api: Api
) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/usage/" in r.url else None)
    page.goto("/")
    wait_ready(page)
    unfiltered = _expected_cards(api, period="7d")
    assert _cards(page) == unfiltered
    assert not page.locator("#filter-bar").is_visible()

    _group_by(page, "attr.user")
    requests.clear()
    page.click("#breakdown-body tr[data-key='u-bo'] .group-link")
    by_user = _expected_cards(api, period="7d", **{"attr.user": "u-bo"})
    _wait_cards(page, by_user)
    assert _cards(page) == by_user
    assert _chips(page) == [("attr.user", "u-bo", "user: u-bo")]
    assert page.locator("#filter-bar").is_visible()
    # every usage panel asked with the filter
    asked = {urlsplit(u).path.rsplit("/", 1)[-1]: parse_qs(urlsplit(u).query) for u in requests}
    for endpoint in ("summary", "timeseries", "breakdown", "by-model", "top", "records"):
        assert asked[endpoint].get("attr.user") == ["u-bo"], endpoint
    assert _records_ids(page) == _api_record_ids(api, period="7d", **{"attr.user": "u-bo"})
    assert [(r["key"], r["cost"]) for r in _table(page)] == [
        (g["key"], format_usd(g["cost_usd"]))
        for g in api.get(
            "/v1/usage/breakdown", period="7d", by="attr.user", **{"attr.user": "u-bo"}
        )["groups"]
    ]

    # a second key: two chips, ANDed
    _group_by(page, "attr.customer")
    page.click("#breakdown-body tr[data-key='acme'] .group-link")
    both = {"attr.user": "u-bo", "attr.customer": "acme"}
    _wait_cards(page, _expected_cards(api, period="7d", **both))
    assert _chips(page) == [
        ("attr.user", "u-bo", "user: u-bo"),
        ("attr.customer", "acme", "customer: acme"),
    ]
    assert _records_ids(page) == _api_record_ids(api, period="7d", **both)
    save_screenshot(page, "usage-page-filter-chips.png")

    # the filters survive a period change
    page.click("#period-switch [data-period='30d']")
    expected_30d = _expected_cards(api, period="30d", **both)
    _wait_cards(page, expected_30d)
    assert _cards(page) == expected_30d
    assert len(_chips(page)) == 2

    # removing one chip refreshes everything with the other one
    page.click("#filter-chips .chip[data-filter='attr.user'] .chip-remove")
    only_customer = _expected_cards(api, period="30d", **{"attr.customer": "acme"})
    _wait_cards(page, only_customer)
    assert _cards(page) == only_customer
    assert _chips(page) == [("attr.customer", "acme", "customer: acme")]
    assert _records_ids(page) == _api_record_ids(api, period="30d", **{"attr.customer": "acme"})

    # and removing the last one restores the unfiltered page
    page.click("#filter-chips .chip-remove")
    everything = _expected_cards(api, period="30d")
    _wait_cards(page, everything)
    assert _cards(page) == everything
    assert _chips(page) == [] and not page.locator("#filter-bar").is_visible()


def test_a_source_group_sets_the_source_filter_and_models_do_not_filter(
    page: Any, api: Api
) -> None:
    page.goto("/")
    wait_ready(page)
    page.click("#breakdown-body tr[data-key='agent'] .group-link")
    by_agent = _expected_cards(api, period="7d", source="agent")
    _wait_cards(page, by_agent)
    assert _chips(page) == [("source", "agent", "Source: Agent")]
    # the records table's own source filter follows (and is locked while the chip is on)
    assert page.input_value("#source-filter") == "agent"
    assert page.is_disabled("#source-filter")
    assert _records_ids(page) == _api_record_ids(api, period="7d", source="agent")

    # models: no model filter in the API, so the rows are not clickable
    _group_by(page, "model")
    assert page.locator("#breakdown-body .group-link").count() == 0
    assert "no model filter" in page.locator("#breakdown-note").inner_text()

    page.click("#filter-chips .chip-remove")
    _wait_cards(page, _expected_cards(api, period="7d"))
    assert page.input_value("#source-filter") == "" and not page.is_disabled("#source-filter")

    # a donut slice filters too
    _group_by(page, "source")
    x, y = page.evaluate(
        "(() => { const p = Chart.getChart('source-chart').getDatasetMeta(0).data[2]"
        ".tooltipPosition(); return [p.x, p.y]; })()"
    )  # the third slice: Memory
    page.click("#source-chart", position={"x": x, "y": y})
    _wait_cards(page, _expected_cards(api, period="7d", source="memory"))
    assert _chips(page) == [("source", "memory", "Source: Memory")]


def test_an_export_that_fails_says_why(page: Any, api: Api) -> None:
    page.route(
        "**/v1/usage/records.csv*",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body='{"detail": "ClickHouse unavailable"}'
        ),
    )
    page.goto("/")
    wait_ready(page, "records")
    page.click("#export-records")
    error = page.locator(".export-error[data-for='export-records']")
    error.wait_for()
    assert error.inner_text() == "The export failed (HTTP 503): ClickHouse unavailable"
    assert page.inner_text("#export-records") == "Export CSV"
    assert not page.is_disabled("#export-records")


def test_records_show_a_calls_attributes(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "records")
    items = api.get("/v1/usage/records", period="7d", page_size=20)["items"]
    # the JSON records carry each call's attributes, as stored
    assert [item["attributes"] for item in items] == [INSERTED[i["event_id"]] for i in items]
    first = items[0]
    row = page.locator(f"#records-body tr[data-event-id='{first['event_id']}']")
    toggle = row.locator(".attr-toggle")
    count = len(first["attributes"])
    assert toggle.inner_text() == f"{count} attribute{'s' if count > 1 else ''}"
    assert toggle.get_attribute("title") == " · ".join(
        f"{k}={v}" for k, v in sorted(first["attributes"].items())
    )
    assert not row.locator(".attr-list").is_visible()
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    shown = row.locator(".attr-list").evaluate(
        "dl => Object.fromEntries([...dl.querySelectorAll('dt')].map("
        "dt => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert shown == first["attributes"]
    save_screenshot(page, "usage-page-record-attributes.png", "#records")

    # a value filters the whole page too
    row.locator(".attr-value[data-key='customer']").click()
    customer = first["attributes"]["customer"]
    _wait_cards(page, _expected_cards(api, period="7d", **{"attr.customer": customer}))
    assert _chips(page) == [("attr.customer", customer, f"customer: {customer}")]


def test_export_buttons_download_the_filtered_csv(page: Any, api: Api, tmp_path: Path) -> None:
    page.goto("/")
    wait_ready(page)
    page.click("#period-switch [data-period='30d']")
    _wait_cards(page, _expected_cards(api, period="30d"))
    _group_by(page, "attr.user")
    page.click("#breakdown-body tr[data-key='u-ana'] .group-link")
    filters = {"attr.user": "u-ana"}
    _wait_cards(page, _expected_cards(api, period="30d", **filters))
    # the records' own filters apply too: the export is what the table lists, every page of it
    page.select_option("#source-filter", "chat")
    wait_ready(page, "records")

    with page.expect_download() as info:
        page.click("#export-records")
    download = info.value
    assert FILE_NAME.fullmatch(download.suggested_filename), download.suggested_filename
    assert download.suggested_filename.startswith("llm-usage-records-")
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    rows = _read_csv(path)
    expected = api.get("/v1/usage/records", period="30d", source="chat", page_size=100, **filters)
    assert 20 < expected["total"] <= 100, "more than one page of the table, one page of the API"
    assert [r["event_id"] for r in rows] == [i["event_id"] for i in expected["items"]]
    assert all(r["source"] == "chat" for r in rows)
    summary = api.get("/v1/usage/summary", period="30d", source="chat", **filters)
    assert sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)) == Decimal(
        summary["total_cost_usd"]
    )
    assert {r["attributes"] for r in rows} >= {'{"customer":"acme","user":"u-ana"}'}
    assert page.get_attribute("#export-records", "data-downloaded") == download.suggested_filename
    assert page.inner_text("#export-records") == "Export CSV"

    # the breakdown's export: by customer, with the page's filter
    _group_by(page, "attr.customer")
    with page.expect_download() as info:
        page.click("#export-breakdown")
    download = info.value
    assert download.suggested_filename.startswith("llm-usage-breakdown-")
    assert FILE_NAME.fullmatch(download.suggested_filename)
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    rows = _read_csv(path)
    groups = api.get("/v1/usage/breakdown", period="30d", by="attr.customer", limit=1000, **filters)
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in rows if r["kind"] == "group"] == [
        (g["key"], str(g["calls"]), g["cost_usd"]) for g in groups["groups"] if g["key"] is not None
    ]
    assert {r["key"] for r in rows} == set(CUSTOMERS)  # the comma and quotes survive the CSV
    assert all(r["by"] == "attr.customer" for r in rows)
    save_screenshot(page, "usage-page-export.png")
