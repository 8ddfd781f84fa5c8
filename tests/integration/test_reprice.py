"""``llm-usage reprice``: stored calls repriced exactly, raw rows and every rollup.

Calls of a model the book does not know are stored unpriced; the model (and a discount on
a known one) is then added through the overrides file, and the reprice must make the raw
rows, both rollups, the API's compact rollups, the summary and the cost-by-model breakdown
equal to the same calls priced with the new book from the start. Also after a SIGKILL in
the middle of a run (at each step, and inside a statement) and while a worker keeps
ingesting calls of that model. The prompt-cache figures (migration 0019) are repriced like
the cost: calls stored with savings 0 (as before 0019) are filled, raw and every rollup.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.children import settings_env
from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from producers.contract import UsageEvent
from query_api.app import create_app
from stream_processor.enrich import Enricher
from stream_processor.harness import WorkerProcess
from stream_processor.pricing import PriceBook
from stream_processor.reprice import Repricer, Selection, runner
from stream_processor.sink import ClickHouseWriter, dedup_token
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import publish, worker_settings

pytestmark = pytest.mark.integration

UNKNOWN = "ft:claude-custom-1"
OVERRIDES = {
    "models": {
        # a private model, named as the unpriced list shows it
        UNKNOWN: {"provider": "private", "prices": [{
            "effective_from": "2026-01-01", "input": "1.5", "output": "6",
            "cache_write_5m": "1.875", "cache_write_1h": "3", "cache_read": "0.15"}]},
        # a negotiated 10% discount on a known model, agreed after the fact
        "claude-sonnet-5-5": {"provider": "anthropic", "prices": [{
            "effective_from": "2023-01-01", "input": "1.8", "output": "9",
            "cache_write_5m": "2.25", "cache_write_1h": "3.6", "cache_read": "0.09"}]},
    }
}  # fmt: skip
ROLLUPS = (
    "usage_hourly",
    "usage_daily",
    "usage_api_15m",
    "usage_api_daily",
    "usage_api_models_15m",
    "usage_api_models_daily",
    "usage_api_models_1m",
    "usage_entities_15m",
)
# Rollups by attribute key and value: a call counts once per attribute it carries.
ATTRIBUTE_ROLLUPS = ("usage_attributes_15m", "usage_attributes_daily")
# Rollups with the prompt-cache figures (migration 0019): every one per-model questions read.
SAVINGS = ("cache_read_savings_usd", "cache_write_premium_usd")
SAVINGS_ROLLUPS = tuple(t for t in ROLLUPS if t not in ("usage_api_15m", "usage_api_daily"))


def make_events(count: int, now: datetime, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    models = [UNKNOWN, "claude-sonnet-5-5", "claude-opus-5-5", "claude-haiku-5-5"]
    events = []
    for i in range(count):
        model = models[i % len(models)]
        events.append(UsageEvent(
            tenant_id="acme", source=("chat", "agent", "memory")[i % 3],
            source_id=f"s-{rng.randrange(12)}",
            occurred_at=now - timedelta(minutes=rng.randrange(3 * 24 * 60)),
            model=model, input_tokens=rng.randrange(50, 5000),
            output_tokens=rng.randrange(10, 800), cache_read_input_tokens=rng.randrange(0, 9000),
            cache_creation_5m_input_tokens=rng.randrange(0, 3000),
            cache_creation_1h_input_tokens=rng.choice([0, 0, rng.randrange(1, 2000)]),
            service_tier="batch" if rng.random() < 0.3 else None,
            web_search_requests=rng.randrange(3) if model == "claude-opus-5-5" else None,
            attributes=_attributes(rng),
        ))  # fmt: skip
    return events


def _attributes(rng: random.Random) -> dict[str, str]:
    """None, one or two attributes: the rollups must count a call once per attribute."""
    attributes = {}
    if rng.random() < 0.7:
        attributes["user"] = f"u-{rng.randrange(5)}"
    if rng.random() < 0.5:
        attributes["customer"] = rng.choice(["initech", "globex"])
    return attributes


def all_stored(client: Any, calls: int) -> bool:
    """Every call in the raw table and in every rollup (a view's part commits after the raw
    table's, so the raw count alone can run ahead)."""
    counts = [int(client.command("SELECT count() FROM usage_events"))]
    counts += [int(client.command(f"SELECT sum(calls) FROM {t}")) for t in ROLLUPS]
    pairs = int(client.command("SELECT sum(length(attributes)) FROM usage_events"))
    by_attribute = [int(client.command(f"SELECT sum(calls) FROM {t}")) for t in ATTRIBUTE_ROLLUPS]
    return counts == [calls] * len(counts) and by_attribute == [pairs] * len(by_attribute)


def write_overrides(path: Path) -> PriceBook:
    path.write_text(json.dumps(OVERRIDES))
    return PriceBook.load(overrides=path)


def store_directly(settings: Settings, events: list[UsageEvent], book: PriceBook) -> None:
    """The worker's own enrich -> insert path, without a worker (fast fixtures)."""
    rows = Enricher(book).rows(events, "calls", 0, 0)
    ClickHouseWriter(settings).insert(rows, dedup_token("reprice-test", "calls", 0, 0, 0))


def expected(events: list[UsageEvent], book: PriceBook) -> dict[str, Any]:
    """What every table and the API must say: the calls priced with ``book``."""
    per_model: dict[str, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    per_attribute: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    # prompt-cache figures per model and per attribute value and model: (saved, premium)
    saved_model: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    saved_attribute: dict[tuple[str, str, str], list[Decimal]] = defaultdict(
        lambda: [Decimal(0), Decimal(0)]
    )
    per_event = {}
    for event in events:
        model = book.resolve(event.model)
        quote = book.quote_event(model, event)
        figures = (quote.cache_read_savings_usd, quote.cache_write_premium_usd)
        per_event[str(event.event_id)] = (quote.cost_usd, quote.priced, quote.version, *figures)
        items = [per_model[model]]
        items += [per_attribute[(k, v, model)] for k, v in event.attributes.items()]
        for item in items:
            item[0] += 1
            item[1] += 0 if quote.priced else 1
            item[2] += quote.cost_usd
        sums = [saved_model[model]]
        sums += [saved_attribute[(k, v, model)] for k, v in event.attributes.items()]
        for pair in sums:
            pair[0] += figures[0]
            pair[1] += figures[1]
    return {
        "events": per_event,
        "models": {m: tuple(v) for m, v in per_model.items()},
        "attributes": {a: tuple(v) for a, v in per_attribute.items()},
        "savings": {m: tuple(v) for m, v in saved_model.items()},
        "attribute_savings": {a: tuple(v) for a, v in saved_attribute.items()},
    }


def stored(settings: Settings) -> dict[str, Any]:
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT toString(event_id), cost_usd, priced, price_version, token_cost_usd"
            " + tool_cost_usd, cache_read_savings_usd, cache_write_premium_usd FROM usage_events"
        ).result_rows
        for r in rows:
            assert r[1] == r[4], "token + tool cost = cost on every row"
        tables = {}
        for table in ROLLUPS:
            by = "model" if table not in ("usage_api_15m", "usage_api_daily") else "'all'"
            tables[table] = {
                str(m): (int(c), int(u), Decimal(cost))
                for m, c, u, cost in client.query(
                    f"SELECT {by} AS m, sum(calls), sum(unpriced_calls), sum(cost_usd)"
                    f" FROM {table} GROUP BY m"
                ).result_rows
            }
        for table in ATTRIBUTE_ROLLUPS:
            tables[table] = {
                (str(k), str(v), str(m)): (int(c), int(u), Decimal(cost))
                for k, v, m, c, u, cost in client.query(
                    "SELECT attr_key, attr_value, model, sum(calls), sum(unpriced_calls),"
                    f" sum(cost_usd) FROM {table} GROUP BY attr_key, attr_value, model"
                ).result_rows
            }
        savings = {}
        for table in (*SAVINGS_ROLLUPS, *ATTRIBUTE_ROLLUPS):
            keys = "attr_key, attr_value, model" if table in ATTRIBUTE_ROLLUPS else "model"
            savings[table] = {
                (tuple(str(k) for k in r[:-2]) if len(r) > 3 else str(r[0])): (r[-2], r[-1])
                for r in client.query(
                    f"SELECT {keys}, sum({SAVINGS[0]}), sum({SAVINGS[1]}) FROM {table}"
                    f" GROUP BY {keys}"
                ).result_rows
            }
    finally:
        client.close()
    return {
        "events": {r[0]: (r[1], r[2], r[3], r[5], r[6]) for r in rows},
        "tables": tables,
        "savings": savings,
    }


def assert_exact(settings: Settings, want: dict[str, Any]) -> None:
    got = stored(settings)
    assert got["events"] == want["events"]
    everything = (sum(v[0] for v in want["models"].values()),
                  sum(v[1] for v in want["models"].values()),
                  sum((v[2] for v in want["models"].values()), Decimal(0)))  # fmt: skip
    for table, groups in got["tables"].items():
        if table in ("usage_api_15m", "usage_api_daily"):
            assert groups == {"all": everything}, table
        elif table in ATTRIBUTE_ROLLUPS:
            assert groups == want["attributes"], table
        else:
            assert groups == want["models"], table
    for table, figures in got["savings"].items():
        key = "attribute_savings" if table in ATTRIBUTE_ROLLUPS else "savings"
        assert figures == want[key], f"{table}: cache savings"
    saved = [sum((v[i] for v in want["savings"].values()), Decimal(0)) for i in (0, 1)]
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=4)).isoformat(), "to": now.isoformat()}
    app = create_app(settings.model_copy(update={"api_keys": "k:acme"}))
    with TestClient(app, headers={"Authorization": "Bearer k"}) as http:
        summary = http.get("/v1/usage/summary", params=window).json()
        assert summary["calls"] == everything[0]
        assert Decimal(summary["total_cost_usd"]) == everything[2]
        unpriced = {m: v[1] for m, v in want["models"].items() if v[1]}
        assert {u["model"]: u["calls"] for u in summary["unpriced_models"]} == unpriced
        assert summary["cost_incomplete"] is bool(unpriced)
        assert [Decimal(summary[name]) for name in SAVINGS] == saved
        models = http.get("/v1/usage/by-model", params=window).json()["models"]
        got_models = {m["model"]: (m["calls"], m["unpriced_calls"], Decimal(m["cost_usd"]))
                      for m in models}  # fmt: skip
        assert got_models == want["models"]
        got_savings = {m["model"]: tuple(Decimal(m[name]) for name in SAVINGS) for m in models}
        assert got_savings == want["savings"]
        for key in ("user", "customer"):
            _assert_breakdown(http, window, key, want, everything)


def _assert_breakdown(
    http: TestClient,
    window: dict[str, str],
    key: str,
    want: dict[str, Any],
    everything: tuple[int, int, Decimal],
) -> None:
    """The API's breakdown by ``key``: each value's calls and cost, the calls without it."""
    per_value: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for (k, value, _), (calls, _, cost) in want["attributes"].items():
        if k == key:
            per_value[value][0] += calls
            per_value[value][1] += cost
    params = {**window, "by": f"attr.{key}", "limit": 1000}
    body = http.get("/v1/usage/breakdown", params=params).json()
    got = {g["key"]: (g["calls"], Decimal(g["cost_usd"])) for g in body["groups"]}
    missing = (
        everything[0] - sum(v[0] for v in per_value.values()),
        everything[2] - sum((v[1] for v in per_value.values()), Decimal(0)),
    )
    assert got == {**{v: tuple(t) for v, t in per_value.items()}, None: missing}, key


def repriced_at(settings: Settings) -> str | None:
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=4)).isoformat(), "to": now.isoformat()}
    app = create_app(settings.model_copy(update={"api_keys": "k:acme"}))
    with TestClient(app, headers={"Authorization": "Bearer k"}) as http:
        value: str | None = http.get("/v1/usage/summary", params=window).json()["repriced_at"]
    return value


def test_a_newly_priced_model_and_a_discount_reprice_history_exactly(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "STAGE_PAGE", 37)  # many pages, ties on occurred_at included
    overrides = tmp_path / "overrides.json"
    overrides.write_text('{"models": {}}')
    settings = worker_settings(migrated, price_overrides=overrides)
    worker = worker_factory(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(400, now, seed=1)
    asyncio.run(publish(settings, events))
    worker.wait_assigned()
    client = connect(settings)
    try:
        wait_for(lambda: all_stored(client, len(events)), 90, "all rows")
    finally:
        client.close()
    assert_exact(settings, expected(events, PriceBook.load()))  # stored unpriced at first
    assert stored(settings)["tables"]["usage_hourly"][UNKNOWN][1] == 100

    # an API process that caches settled hours at once, alive across the reprice
    window = {"from": (now - timedelta(days=4)).isoformat(), "to": now.isoformat()}
    cached_app = create_app(
        settings.model_copy(update={"api_keys": "k:acme", "api_cache_settle_s": 0.0})
    )
    cached = TestClient(cached_app, headers={"Authorization": "Bearer k"})
    for _ in range(2):
        before = cached.get("/v1/usage/summary", params=window).json()
    assert 'llm_usage_api_cache_lookups_total{result="hit"} 1.0' in cached.get("/metrics").text

    book = write_overrides(overrides)
    client = connect(settings)
    try:
        repricer = Repricer(client, settings.clickhouse_database, book)
        dry = repricer.dry_run(Selection())
        assert dry[UNKNOWN].changed == 100 and dry[UNKNOWN].old_cost == 0
        assert dry["claude-haiku-5-5"].changed == 0
        assert_exact(settings, expected(events, PriceBook.load()))  # a dry run changes nothing
        assert repriced_at(settings) is None
        result = repricer.run(Selection())
        assert result.changed == 200  # the unknown model's calls and the discounted ones
        assert_exact(settings, expected(events, book))
        after = cached.get("/v1/usage/summary", params=window).json()
        want = sum((v[2] for v in expected(events, book)["models"].values()), Decimal(0))
        assert Decimal(after["total_cost_usd"]) == want != Decimal(before["total_cost_usd"])
        assert after["unpriced_models"] == [], "the cached hours were read again"
        when = repriced_at(settings)
        assert when is not None
        assert abs(datetime.fromisoformat(when) - datetime.now(UTC)) < timedelta(minutes=2)
        again = repricer.run(Selection())
        assert again.changed == 0, "a second run changes nothing"
    finally:
        client.close()
    assert_exact(settings, expected(events, book))


def test_a_reprice_fills_the_cache_savings_of_calls_stored_before_migration_0019(
    migrated: Settings,
) -> None:
    """Calls stored with savings 0 (the columns' default for rows written before 0019, and
    what the rollup rows written before it read) are filled by a reprice with the same book:
    their cost does not change, their savings do, raw and every rollup, exactly."""
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(600, now, seed=5)
    book = PriceBook.load()
    rows = Enricher(book).rows(events, "calls", 0, 0)
    width = len(SAVINGS)
    old_rows = [(*row[:-width], Decimal(0), Decimal(0)) for row in rows]  # as before 0019
    ClickHouseWriter(migrated).insert(old_rows, dedup_token("pre-0019", "calls", 0, 0, 0))
    before = stored(migrated)
    assert all(v[3:] == (0, 0) for v in before["events"].values())
    assert all(
        figures == (0, 0) for table in before["savings"].values() for figures in table.values()
    )
    want = expected(events, book)
    with_savings = sum(1 for v in want["events"].values() if v[3] or v[4])
    assert with_savings > 300, "most calls read or write the cache"
    client = connect(migrated)
    try:
        repricer = Repricer(client, migrated.clickhouse_database, book)
        dry = repricer.dry_run(Selection())
        assert sum(m.changed for m in dry.values()) == with_savings
        assert all(m.old_cost == m.new_cost for m in dry.values()), "costs stay as they were"
        result = repricer.run(Selection())
        assert result.changed == with_savings and result.old_cost == result.new_cost
        assert_exact(migrated, want)
        assert repricer.run(Selection()).changed == 0, "a second run changes nothing"
    finally:
        client.close()
    assert_exact(migrated, want)


def _kill_at(settings: Settings, overrides: Path, step: str | None) -> int:
    """Run a reprice in a child process and SIGKILL it at ``step``; with ``None``, in the
    middle of a statement: as soon as the run is in the ledger (it then stages, or already
    writes rollup deltas; the whole run takes 10 s or more, catching up included)."""
    script = (
        "import os, signal, sys\n"
        "from llm_usage.clickhouse import connect\n"
        "from llm_usage.settings import get_settings\n"
        "from stream_processor.pricing import PriceBook\n"
        "from stream_processor.reprice import Repricer, Selection\n"
        "s = get_settings()\n"
        "step = sys.argv[1]\n"
        "def on_step(name):\n"
        "    if name == step:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "book = PriceBook.load(overrides=s.price_overrides)\n"
        "Repricer(connect(s), s.clickhouse_database, book, on_step=on_step).run(Selection())\n"
    )
    env = {**os.environ, **settings_env(settings.model_copy(update={"price_overrides": overrides}))}
    child = subprocess.Popen([sys.executable, "-c", script, step or "-"], env=env)
    if step is None:
        client = connect(settings)
        planned = "SELECT count() FROM reprice_runs WHERE step = 'planned'"
        try:
            wait_for(
                lambda: child.poll() is not None or int(client.command(planned)) > 0,
                60,
                "the reprice run to start",
            )
        finally:
            client.close()
        child.send_signal(signal.SIGKILL)
    return child.wait(60)


@pytest.mark.parametrize("step", ["staged", "delta:usage_api_daily", "delta:usage_hourly",
                                  "raw", None])  # fmt: skip
def test_a_reprice_killed_at_any_step_and_run_again_ends_exact(
    migrated: Settings, tmp_path: Path, step: str | None
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_events(3000, now, seed=2)
    store_directly(migrated, events, PriceBook.load())
    overrides = tmp_path / "overrides.json"
    book = write_overrides(overrides)
    code = _kill_at(migrated, overrides, step)
    assert code == -signal.SIGKILL, "the run was killed in the middle"
    client = connect(migrated)
    try:
        result = Repricer(client, migrated.clickhouse_database, book).run(Selection())
        if step is not None:
            assert result.resumed, "the interrupted run is completed first"
    finally:
        client.close()
    assert_exact(migrated, expected(events, book))


def test_reprice_while_a_worker_ingests_calls_of_that_model(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess], tmp_path: Path
) -> None:
    overrides = tmp_path / "overrides.json"
    overrides.write_text('{"models": {}}')
    settings = worker_settings(migrated, price_overrides=overrides)
    worker = worker_factory(settings)
    now = datetime.now(UTC).replace(microsecond=0)
    first = make_events(1200, now, seed=3)
    asyncio.run(publish(settings, first))
    worker.wait_assigned()
    client = connect(settings)
    wait_for(lambda: all_stored(client, len(first)), 90, "the first calls")
    book = write_overrides(overrides)  # the worker reloads it within seconds
    # more calls of that model keep arriving during the run, late ones into the window too
    later = make_events(1200, now, seed=4)

    async def keep_publishing() -> None:
        for i in range(0, len(later), 100):
            await publish(settings, later[i : i + 100])
            await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(keep_publishing(),))
    thread.start()
    try:
        result = Repricer(client, settings.clickhouse_database, book).run(Selection())
    finally:
        thread.join(120)
    assert result.passes >= 2, "calls ingested during the run were looked at again"
    total = len(first) + len(later)
    wait_for(lambda: all_stored(client, total), 90, "every call")
    assert_exact(settings, expected([*first, *later], book))  # nothing left at old prices
    again = Repricer(client, settings.clickhouse_database, book).run(Selection())
    client.close()
    assert again.changed == 0
    assert worker.metrics()["llm_usage_processor_price_book_reloads_total"] >= 1
