"""Prompt-cache savings end to end: producers -> Kafka -> worker -> ClickHouse -> API.

Calls of every kind that changes a call's rates (batch, fast, priority, US-only inference,
long context, an unknown model) with cache reads and 5-minute and 1-hour cache writes are
published; the summary's ``cache_read_savings_usd`` / ``cache_write_premium_usd`` and the
by-model items' must equal the quotes computed in Python for the published calls, and
brute-force sums over ``usage_events`` for several windows (edges inside slots and minutes)
and filters (source, name search, one and two ``attr.`` filters).
"""

from __future__ import annotations

import asyncio
import random
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
from stream_processor.pricing import PriceBook
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import publish, worker_settings
from tests.integration.test_reprice import all_stored

pytestmark = pytest.mark.integration

SAVINGS = ("cache_read_savings_usd", "cache_write_premium_usd")
MODELS = ["claude-sonnet-4-5", "claude-haiku-5-5", "claude-opus-5-5", "claude-opus-4-8",
          "claude-sonnet-5-5", "ft:claude-custom-1"]  # fmt: skip
NAMES = {"chat": ["Weekly digest", "Alpha report", "beta sync"],
         "agent": ["Digest agent", "Triage"], "memory": ["Memory alpha"]}  # fmt: skip


def make_events(now: datetime, count: int, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    events = []
    for i in range(count):
        source = ("chat", "agent", "memory")[i % 3]
        index = rng.randrange(len(NAMES[source]))
        long = rng.random() < 0.15  # above both books' long-context thresholds
        attributes = {}
        if rng.random() < 0.7:
            attributes["user"] = f"u-{rng.randrange(4)}"
        if rng.random() < 0.5:
            attributes["customer"] = rng.choice(["initech", "globex"])
        events.append(UsageEvent(
            tenant_id="acme", source=source, source_id=f"{source}-{index}",
            source_name=NAMES[source][index],
            occurred_at=now - timedelta(milliseconds=rng.randrange(3 * 86_400_000)),
            model=MODELS[i % len(MODELS)],
            input_tokens=rng.randrange(150_000, 300_000) if long else rng.randrange(10, 5000),
            output_tokens=rng.randrange(10, 800),
            cache_read_input_tokens=rng.choice([0, rng.randrange(1, 60_000)]),
            cache_creation_5m_input_tokens=rng.choice([0, rng.randrange(1, 8000)]),
            cache_creation_1h_input_tokens=rng.choice([0, 0, rng.randrange(1, 4000)]),
            service_tier=rng.choice([None, None, "batch", "priority"]),
            speed=rng.choice([None, None, None, "fast"]),
            inference_geo=rng.choice([None, None, "us", "global"]),
            attributes=attributes,
        ))  # fmt: skip
    return events


def quoted(events: list[UsageEvent], book: PriceBook) -> dict[str, tuple[Decimal, Decimal]]:
    """Per model: (cache-read savings, cache-write premium) of the calls, as quoted."""
    out: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for event in events:
        model = book.resolve(event.model)
        quote = book.quote_event(model, event)
        out[model][0] += quote.cache_read_savings_usd
        out[model][1] += quote.cache_write_premium_usd
    return {m: (v[0], v[1]) for m, v in out.items()}


def brute_force(
    client: Any, start: datetime, end: datetime, params: dict[str, str]
) -> dict[str, tuple[Decimal, Decimal]]:
    """Per model, straight from usage_events (names never change here: a name search is a
    match on the stored name)."""
    where = [
        "tenant_id = 'acme'",
        "occurred_at >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')",
        "occurred_at < fromUnixTimestamp64Milli({b:Int64}, 'UTC')",
    ]
    bound: dict[str, Any] = {"a": _ms(start), "b": _ms(end)}
    for i, (name, value) in enumerate(params.items()):
        bound[f"v{i}"] = value
        if name == "source":
            where.append(f"source = {{v{i}:String}}")
        elif name == "search":
            where.append(f"positionCaseInsensitiveUTF8(source_name, {{v{i}:String}}) > 0")
        else:
            bound[f"k{i}"] = name.removeprefix("attr.")
            where.append(f"attributes[{{k{i}:String}}] = {{v{i}:String}}")
    rows = client.query(
        f"SELECT model, sum({SAVINGS[0]}), sum({SAVINGS[1]}) FROM usage_events"
        f" WHERE {' AND '.join(where)} GROUP BY model",
        parameters=bound,
    ).result_rows
    return {str(m): (Decimal(s), Decimal(p)) for m, s, p in rows}


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def api_figures(http: TestClient, params: dict[str, str]) -> tuple[Any, ...]:
    summary = http.get("/v1/usage/summary", params=params)
    assert summary.status_code == 200, summary.text
    by_model = http.get("/v1/usage/by-model", params=params)
    assert by_model.status_code == 200, by_model.text
    body = by_model.json()
    per_model = {m["model"]: tuple(Decimal(m[f]) for f in SAVINGS) for m in body["models"]}
    per_item: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for item in body["items"]:
        for i, name in enumerate(SAVINGS):
            per_item[item["model"]][i] += Decimal(item[name])
    assert {m: tuple(v) for m, v in per_item.items()} == per_model, "tiers add up to models"
    for name in SAVINGS:  # exact decimal strings at the storage scale
        assert summary.json()[name].count(".") == 1
        assert len(summary.json()[name].split(".")[1]) == 12
    return tuple(Decimal(summary.json()[f]) for f in SAVINGS), per_model


def test_cache_savings_equal_the_quotes_and_brute_force(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    settings = worker_settings(migrated)
    worker = worker_factory(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(now, 900, seed=11)
    asyncio.run(publish(settings, events))
    worker.wait_assigned()
    client = connect(settings)
    try:
        wait_for(lambda: all_stored(client, len(events)), 90, "all rows")
        want = quoted(events, PriceBook.load())
        assert sum(v[0] for v in want.values()) > 0 and sum(v[1] for v in want.values()) > 0
        assert want["ft:claude-custom-1"] == (0, 0), "unpriced calls save nothing"
        app = create_app(settings.model_copy(update={"api_keys": "k:acme"}))
        with TestClient(app, headers={"Authorization": "Bearer k"}) as http:
            everything = {"from": (now - timedelta(days=4)).isoformat(), "to": now.isoformat()}
            totals, per_model = api_figures(http, everything)
            assert per_model == want, "by model: the quotes of the published calls"
            assert totals == tuple(sum((v[i] for v in want.values()), Decimal(0)) for i in (0, 1))

            windows = [
                (now - timedelta(days=4), now),
                (now - timedelta(days=2, minutes=7) + timedelta(milliseconds=3),
                 now - timedelta(hours=13) + timedelta(seconds=41, milliseconds=1)),
                (now - timedelta(hours=20, minutes=3), now - timedelta(minutes=50)),
            ]  # fmt: skip
            filters: list[dict[str, str]] = [
                {},
                {"source": "agent"},
                {"search": "digest"},
                {"attr.user": "u-1"},
                {"attr.customer": "globex", "source": "chat"},
                {"attr.user": "u-2", "attr.customer": "initech"},
                {"attr.user": "u-3", "search": "alpha"},
            ]
            for start, end in windows:
                for extra in filters:
                    params = {"from": start.isoformat(), "to": end.isoformat(), **extra}
                    totals, per_model = api_figures(http, params)
                    oracle = brute_force(client, start, end, extra)
                    assert per_model == oracle, params
                    assert totals == tuple(
                        sum((v[i] for v in oracle.values()), Decimal(0)) for i in (0, 1)
                    ), params
    finally:
        client.close()
