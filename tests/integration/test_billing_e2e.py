"""Every billing dimension end to end: producers -> Kafka -> worker -> ClickHouse -> API.

v1 and v2 events mixed, one template per dimension, each with its cost worked out by hand
from Anthropic's published prices (the same figures as tests/unit/
test_processor_pricing_dimensions.py). Every record, both rollups, the per-model API rollups,
the summary and the cost-by-model breakdown must come out exactly.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from producers.contract import UsageEvent
from query_api.app import create_app
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.alerting import stored_calls
from tests.integration.test_processor_e2e import publish, worker_settings

pytestmark = pytest.mark.integration

D = Decimal
UNKNOWN = "ft:claude-custom-1"


# (fields of the event, price tier, token cost, tool cost): costs in USD, by hand
TEMPLATES: list[tuple[dict[str, Any], str, Decimal, Decimal]] = [
    # v1 event, priced as before: 1000 x $3 + 200 x $15 per MTok
    ({"schema_version": 1, "model": "claude-sonnet-4-5", "input_tokens": 1000,
      "output_tokens": 200}, "standard", D("0.006"), D(0)),
    # batch (memory extraction): Haiku 5.5 batch $0.05 / $0.25, cache read $0.005
    ({"model": "claude-haiku-5-5", "service_tier": "batch", "input_tokens": 10_000,
      "output_tokens": 2_000, "cache_read_input_tokens": 20_000}, "batch", D("0.0011"), D(0)),
    # fast mode: Opus 4.8 fast $10 / $50
    ({"model": "claude-opus-4-8", "speed": "fast", "input_tokens": 1000,
      "output_tokens": 1000}, "fast", D("0.06"), D(0)),
    # US-only inference: Opus 5.5 $4 / $20 x 1.1
    ({"model": "claude-opus-5-5", "inference_geo": "us", "input_tokens": 1000,
      "output_tokens": 100}, "standard", D("0.0066"), D(0)),
    # web search $10 per 1,000 (fetches are free): Sonnet 5 $2 / $10 for the tokens
    ({"model": "claude-sonnet-5", "web_search_requests": 2, "web_fetch_requests": 3,
      "input_tokens": 5000, "output_tokens": 500}, "standard", D("0.015"), D("0.02")),
    # long context on a tiered model: Haiku 5.5 above 100K input, $0.50 / $2.50
    ({"model": "claude-haiku-5-5", "input_tokens": 150_000, "output_tokens": 1000},
     "standard", D("0.0775"), D(0)),
    # long context on a flat model: Opus 5 at $5 across 1M
    ({"model": "claude-opus-5", "input_tokens": 500_000}, "standard", D("2.5"), D(0)),
    # 5-minute vs 1-hour cache writes: Opus 4.7 $6.25 / $10
    ({"model": "claude-opus-4-7", "cache_creation_5m_input_tokens": 1000,
      "cache_creation_1h_input_tokens": 1000}, "standard", D("0.01625"), D(0)),
    # thinking tokens are part of output: Sonnet 5.5 $2 / $10
    ({"model": "claude-sonnet-5-5", "input_tokens": 100, "output_tokens": 1000,
      "thinking_tokens": 600}, "standard", D("0.0102"), D(0)),
    # fast mode on a model without it: the fast tier at standard prices, counted in a metric
    ({"model": "claude-sonnet-5-5", "speed": "fast", "input_tokens": 1000},
     "fast", D("0.002"), D(0)),
    # priority tier: list price, its own tier
    ({"model": "claude-sonnet-5-5-20261001", "service_tier": "priority", "input_tokens": 1000},
     "priority", D("0.002"), D(0)),
    # a model nobody prices: kept, counted unpriced, never $0 silently
    ({"model": UNKNOWN, "input_tokens": 100, "output_tokens": 10}, "standard", D(0), D(0)),
    # ... and its batch calls still have their tier (a function of the call)
    ({"model": UNKNOWN, "service_tier": "batch", "input_tokens": 100}, "batch", D(0), D(0)),
]  # fmt: skip
COPIES = 4
UNPRICED = COPIES * sum(fields["model"] == UNKNOWN for fields, *_ in TEMPLATES)


def make_events(now: datetime) -> list[tuple[UsageEvent, int]]:
    events = []
    for copy in range(COPIES):
        for index, (fields, *_) in enumerate(TEMPLATES):
            source = ("chat", "agent", "memory")[(index + copy) % 3]
            event = UsageEvent(
                tenant_id="acme", source=source, source_id=f"{source}-{index % 4}",
                occurred_at=now - timedelta(hours=2 + copy * 5, minutes=index),
                **fields,
            )  # fmt: skip
            events.append((event, index))
    return events


def canonical(event: UsageEvent) -> str:
    return "claude-sonnet-5-5" if event.model.startswith("claude-sonnet-5-5") else event.model


def expected_by_model_and_tier(
    events: list[tuple[UsageEvent, int]],
) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
    """(model, price tier) -> (calls, cost, of which tools), from the hand-worked costs."""
    out: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, D(0), D(0)])
    for event, index in events:
        _, tier, tokens, tools = TEMPLATES[index]
        item = out[canonical(event), tier]
        item[0] += 1
        item[1] += tokens + tools
        item[2] += tools
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def test_every_billing_dimension_end_to_end(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(migrated)
    worker = worker_factory(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(now)
    asyncio.run(publish(settings, [e for e, _ in events]))
    worker.wait_assigned()

    client = connect(settings)
    try:
        # every rollup too: a view's rows commit after the raw table's
        wait_for(lambda: stored_calls(settings) >= len(events), 90, "all rows, rollups included")
        rows = client.query(
            "SELECT toString(event_id), cost_usd, token_cost_usd, tool_cost_usd, price_tier,"
            " priced, schema_version, service_tier, speed, inference_geo, web_search_requests,"
            " web_fetch_requests, thinking_tokens, model FROM usage_events"
        ).result_rows
        assert len(rows) == len(events)
        by_id = {r[0]: r[1:] for r in rows}
        for event, index in events:
            fields, tier, tokens, tools = TEMPLATES[index]
            got = by_id[str(event.event_id)]
            assert got[:6] == (tokens + tools, tokens, tools, tier, fields["model"] != UNKNOWN,
                               fields.get("schema_version", 2)), fields  # fmt: skip
            assert got[6:12] == (
                fields.get("service_tier", "standard"), fields.get("speed", "standard"),
                fields.get("inference_geo", ""), fields.get("web_search_requests", 0),
                fields.get("web_fetch_requests", 0), fields.get("thinking_tokens", 0),
            )  # fmt: skip
            assert got[12] == canonical(event)

        expected_tiers = expected_by_model_and_tier(events)
        for table in ("usage_hourly", "usage_daily", "usage_api_models_15m",
                      "usage_api_models_daily"):  # fmt: skip
            rolled = client.query(
                f"SELECT model, price_tier, sum(calls), sum(cost_usd), sum(tool_cost_usd)"
                f" FROM {table} GROUP BY model, price_tier"
            ).result_rows
            assert {(m, t): (c, cost, tool) for m, t, c, cost, tool in rolled} == expected_tiers
        for table in ("usage_hourly", "usage_daily"):
            sums = client.query(
                f"SELECT sum(token_cost_usd), sum(web_search_requests), sum(web_fetch_requests),"
                f" sum(thinking_tokens), sum(unpriced_calls) FROM {table}"
            ).result_rows[0]
            assert sums == (
                sum((TEMPLATES[i][2] for _, i in events), D(0)),
                sum(TEMPLATES[i][0].get("web_search_requests", 0) for _, i in events),
                sum(TEMPLATES[i][0].get("web_fetch_requests", 0) for _, i in events),
                sum(TEMPLATES[i][0].get("thinking_tokens", 0) for _, i in events),
                UNPRICED,
            ), table
    finally:
        client.close()

    total = sum((TEMPLATES[i][2] + TEMPLATES[i][3] for _, i in events), D(0))
    window = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
    app = create_app(settings.model_copy(update={"api_keys": "k:acme"}))
    with TestClient(app, headers={"Authorization": "Bearer k"}) as http:
        summary = http.get("/v1/usage/summary", params=window)
        assert summary.status_code == 200, summary.text
        body = summary.json()
        assert D(str(body["total_cost_usd"])) == total
        assert body["cost_incomplete"] is True
        assert body["unpriced_models"] == [{"model": UNKNOWN, "calls": UNPRICED}]
        # prompt caching, by hand: the Haiku 5.5 batch reads save 20k x ($0.05 - $0.005);
        # the Opus 4.7 writes cost 1k x ($6.25 - $5) + 1k x ($10 - $5) on top ($5 input)
        assert D(body["cache_read_savings_usd"]) == COPIES * D("0.0009")
        assert D(body["cache_write_premium_usd"]) == COPIES * D("0.00625")
        by_model = http.get("/v1/usage/by-model", params=window)
        assert by_model.status_code == 200, by_model.text
        got = {
            (r["model"], r["price_tier"]): (r["calls"], D(str(r["cost_usd"])),
                                            D(str(r["tool_cost_usd"])))
            for r in by_model.json()["items"]
        }  # fmt: skip
        assert got == expected_tiers

    metrics = worker.metrics()
    assert metrics["llm_usage_processor_events_tier_unavailable_total"] == COPIES
    assert "llm_usage_processor_events_fast_unavailable_total" not in metrics
    assert metrics["llm_usage_processor_events_unpriced_total"] == UNPRICED
