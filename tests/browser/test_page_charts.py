"""Cost over time (daily / hourly, in the browser's zone), the donut by source, top consumers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import Api, format_tokens, format_usd, save_screenshot, wait_ready


def _chart_points(page: Any) -> int:
    return int(page.evaluate("Chart.getChart('cost-chart').data.labels.length"))


def test_toggle_changes_the_number_of_chart_points(page: Any, api: Api) -> None:
    requests: list[str] = []
    page.on(
        "request", lambda r: requests.append(r.url) if "/v1/usage/timeseries" in r.url else None
    )
    page.goto("/")
    wait_ready(page)
    page.click("#period-switch [data-period='24h']")
    wait_ready(page, "timeseries")
    # 24h opens hourly; the zone sent is the browser's own (the context's, 45-min offset)
    zone = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert zone in ("Asia/Kathmandu", "Asia/Katmandu")
    query = parse_qs(urlsplit(requests[-1]).query)
    assert query["granularity"] == ["hour"] and query["tz"] == [zone]
    hourly = api.get("/v1/usage/timeseries", period="24h", granularity="hour", tz=zone)["points"]
    assert _chart_points(page) == len(hourly) >= 24
    assert page.get_attribute("#granularity-switch [data-granularity=hour]", "aria-pressed") == (
        "true"
    )

    page.click("#granularity-switch [data-granularity=day]")
    wait_ready(page, "timeseries")
    daily = api.get("/v1/usage/timeseries", period="24h", granularity="day", tz=zone)["points"]
    assert _chart_points(page) == len(daily) in (1, 2)
    assert parse_qs(urlsplit(requests[-1]).query)["granularity"] == ["day"]

    # the chart's values are the API's buckets, and the buckets add up to the summary
    values = page.evaluate("Chart.getChart('cost-chart').data.datasets[0].data")
    assert values == pytest.approx([float(p["cost_usd"]) for p in daily])
    summary = api.get("/v1/usage/summary", period="24h")
    total = sum((Decimal(p["cost_usd"]) for p in daily), Decimal(0))
    assert total == Decimal(summary["total_cost_usd"])
    # labels are the buckets' starts in the viewer's zone
    labels = page.evaluate("Chart.getChart('cost-chart').data.labels")
    assert all(isinstance(label, str) and label for label in labels)

    page.click("#period-switch [data-period='30d']")
    wait_ready(page, "timeseries")
    daily30 = api.get("/v1/usage/timeseries", period="30d", granularity="day", tz=zone)["points"]
    assert _chart_points(page) == len(daily30) in (30, 31)
    page.click("#granularity-switch [data-granularity=hour]")
    wait_ready(page, "timeseries")
    hourly30 = api.get("/v1/usage/timeseries", period="30d", granularity="hour", tz=zone)
    assert _chart_points(page) == len(hourly30["points"]) in (720, 721)
    save_screenshot(page, "usage-page-30d-hourly.png")


def test_donut_splits_cost_by_source(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "by-source")
    sources = {s["source"]: s for s in api.get("/v1/usage/by-source", period="7d")["sources"]}
    chart = page.evaluate(
        "(() => { const c = Chart.getChart('source-chart');"
        " return {labels: c.data.labels, data: c.data.datasets[0].data, type: c.config.type}; })()"
    )
    assert chart["type"] == "doughnut"
    assert chart["labels"] == ["Chat", "Agent", "Memory"]
    expected = [float(sources[s]["cost_usd"]) for s in ("chat", "agent", "memory")]
    assert chart["data"] == pytest.approx(expected)
    for source in ("chat", "agent", "memory"):
        amount = page.locator(f"#source-legend li[data-source={source}] .amount").inner_text()
        assert amount == format_usd(sources[source]["cost_usd"])


def test_top_consumers_by_cost_and_by_tokens(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "top")

    def shown() -> list[tuple[str, str, str]]:
        return page.eval_on_selector_all(
            "#top-list li",
            "items => items.map(li => [li.dataset.source, li.dataset.sourceId,"
            " li.querySelector('.metric').textContent])",
        )

    by_cost = api.get("/v1/usage/top", period="7d", by="cost", limit=10)["items"]
    assert by_cost, "the generated data has consumers"
    assert shown() == [[i["source"], i["source_id"], format_usd(i["cost_usd"])] for i in by_cost]

    page.click("#top-switch [data-by=tokens]")
    wait_ready(page, "top")
    by_tokens = api.get("/v1/usage/top", period="7d", by="tokens", limit=10)["items"]
    assert shown() == [
        [i["source"], i["source_id"], format_tokens(i["total_tokens"])] for i in by_tokens
    ]
    assert [i["source_id"] for i in by_tokens] != [i["source_id"] for i in by_cost] or len(
        by_cost
    ) == len(by_tokens)


def test_a_top_consumer_opens_its_calls(page: Any, api: Api) -> None:
    page.goto("/")
    wait_ready(page, "top", "records")
    first = api.get("/v1/usage/top", period="7d", by="cost", limit=10)["items"][0]
    page.locator("#top-list li").first.locator(".name button").click()
    wait_ready(page, "records")
    assert page.input_value("#source-filter") == first["source"]
    assert page.input_value("#search") == first["name"]
    sources = page.eval_on_selector_all(
        "#records-body tr", "rows => rows.map(r => r.dataset.source)"
    )
    names = page.locator("#records-body .name .title").all_inner_texts()
    assert set(sources) == {first["source"]} and set(names) == {first["name"]}
