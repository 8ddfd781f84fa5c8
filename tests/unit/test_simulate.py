"""The demo traffic model: deterministic shape, realistic mix, manifest counts once.

The mix is the pinned SDK's line-up with its billing dimensions (batch, fast mode, web
search, thinking, US-only inference), and the manifest prices it exactly as the worker does.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache

from llm_usage.simulate import (
    MODEL_MIX,
    UNKNOWN_MODEL,
    Manifest,
    Published,
    SimulationConfig,
    book_pricer,
    generate,
    has_fast_mode,
    has_us_inference,
)
from producers.contract import ServiceTier, Speed, UsageEvent
from stream_processor.enrich import COLUMNS, Enricher
from stream_processor.pricing import PriceBook
from stream_processor.pricing.book import price_tier
from stream_processor.pricing.coverage import sdk_models

END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _flat_price(event: UsageEvent) -> Decimal | None:
    if event.model == UNKNOWN_MODEL:
        return None  # the deliberate model missing from the price book
    return Decimal("0.000001") * event.input_tokens


@cache
def _week() -> list[UsageEvent]:
    """A week of unique calls, shared by the tests that only read it."""
    cfg = SimulationConfig(calls=4000, days=7, seed=1, end=END)
    return [p.call for p in generate(cfg) if p.call and not p.duplicate]


def _count(value: int | None) -> int:
    """A count the demo reports (it sets every billing dimension, as the API does)."""
    assert value is not None, "the demo reports every billing dimension"
    return value


def _of(source: str) -> list[UsageEvent]:
    return [c for c in _week() if c.source.value == source]


def test_same_seed_same_traffic_but_fresh_event_ids() -> None:
    cfg = SimulationConfig(calls=500, days=3, seed=7, end=END)
    a = [p.call for p in generate(cfg) if p.call]
    b = [p.call for p in generate(cfg) if p.call]
    strip = {"event_id", "request_id"}
    assert [e.model_dump(exclude=strip) for e in a] == [e.model_dump(exclude=strip) for e in b]
    assert not {e.event_id for e in a} & {e.event_id for e in b}


def test_window_mix_and_duplicates() -> None:
    cfg = SimulationConfig(calls=3000, days=7, seed=1, end=END, duplicate_rate=0.05)
    items = list(generate(cfg))
    calls = [p.call for p in items if p.call and not p.duplicate]
    dups = [p.call for p in items if p.call and p.duplicate]
    assert len(calls) == 3000
    assert len({c.event_id for c in calls}) == 3000
    assert dups and {d.event_id for d in dups} <= {c.event_id for c in calls}
    assert all(END - timedelta(days=7) <= c.occurred_at <= END for c in calls)
    sources = Counter(c.source.value for c in calls)
    assert set(sources) == {"chat", "agent", "memory"}
    assert sources["chat"] > sources["agent"] > sources["memory"]
    assert any(c.cache_read_input_tokens for c in calls)
    assert any(p.rename for p in items)


def test_manifest_counts_each_unique_call_once() -> None:
    cfg = SimulationConfig(calls=1000, days=2, seed=3, end=END, duplicate_rate=0.1)
    manifest = Manifest(price=_flat_price)
    items = list(generate(cfg))
    for item in items:
        manifest.record(item)
    unique = [p.call for p in items if p.call and not p.duplicate]
    out = manifest.as_json()
    assert out["calls"] == 1000
    assert out["input_tokens"] == sum(c.input_tokens for c in unique)
    priced = [price for c in unique if (price := _flat_price(c)) is not None]
    assert Decimal(out["cost_usd"]) == sum(priced, Decimal(0))
    assert out["unpriced_calls"] == len(unique) - len(priced)
    assert sum(t["calls"] for t in out["by_tenant"].values()) == 1000
    assert sum(t["calls"] for t in out["by_source"].values()) == 1000
    assert out["duplicates_published"] > 0


def test_models_are_the_sdk_line_up_and_all_priced_but_the_unknown_one() -> None:
    book = PriceBook.load()
    sdk = set(sdk_models())
    mixed = {model for mix in MODEL_MIX.values() for model, _ in mix}
    used = Counter(c.model for c in _week())
    assert set(used) == mixed
    assert set(used) - {UNKNOWN_MODEL} <= sdk
    assert all(book.can_price(m) for m in used if m != UNKNOWN_MODEL)
    assert not book.can_price(UNKNOWN_MODEL)
    assert 0 < used[UNKNOWN_MODEL] < 0.02 * len(_week())  # a tiny share, but there
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5"} <= set(used)


def test_memory_extraction_is_mostly_batch_and_only_memory_is() -> None:
    memory = _of("memory")
    batch = sum(c.service_tier is ServiceTier.BATCH for c in memory) / len(memory)
    assert 0.55 <= batch <= 0.75
    assert all(c.service_tier is not ServiceTier.BATCH for c in _of("chat") + _of("agent"))
    assert all(c.speed is Speed.STANDARD for c in memory if c.service_tier is ServiceTier.BATCH)


def test_agents_use_fast_mode_where_priced_and_web_search() -> None:
    agents = _of("agent")
    fast = [c for c in agents if c.speed is Speed.FAST]
    assert 0.05 * len(agents) <= len(fast) <= 0.4 * len(agents)
    assert all(has_fast_mode(c.model) for c in _week() if c.speed is Speed.FAST)
    book = PriceBook.load()
    for model in {c.model for c in fast}:
        entry = book.entry(book.resolve(model), END)
        assert entry is not None and "fast" in entry.tiers, model
    searched = [c for c in agents if c.web_search_requests]
    assert 0.1 * len(agents) <= len(searched) <= 0.4 * len(agents)
    assert {c.web_search_requests for c in searched} == {1, 2, 3, 4, 5}
    assert any(c.web_fetch_requests for c in searched)
    assert all(c.web_search_requests for c in _week() if c.web_fetch_requests)


def test_thinking_and_us_only_inference() -> None:
    calls = _week()
    assert all(_count(c.thinking_tokens) <= c.output_tokens for c in calls)
    agents, opus = _of("agent"), [c for c in calls if "opus" in c.model]
    assert sum(_count(c.thinking_tokens) > 0 for c in agents) > 0.4 * len(agents)
    assert sum(_count(c.thinking_tokens) > 0 for c in opus) > 0.5 * len(opus)
    assert not any(c.thinking_tokens for c in _of("memory"))
    us = [c for c in calls if c.inference_geo == "us"]
    assert 0 < len(us) < 0.15 * len(calls)
    assert all(has_us_inference(c.model) for c in us)
    assert {c.inference_geo for c in calls} == {"us", "global"}


def test_book_pricer_is_the_workers_pricing() -> None:
    """The manifest's price of every call is the cost the worker's enricher writes."""
    book = PriceBook.load()
    price = book_pricer(book)
    rows = Enricher(book).rows(_week(), "calls", 0, 0)
    cost, priced = COLUMNS.index("cost_usd"), COLUMNS.index("priced")
    for event, row in zip(_week(), rows, strict=True):
        assert price(event) == (row[cost] if row[priced] else None), event
    # the row's price_tier is computed by ClickHouse from service_tier and speed
    service_tier, speed = COLUMNS.index("service_tier"), COLUMNS.index("speed")
    tiers = Counter(price_tier(row[service_tier], row[speed]) for row in rows)
    assert tiers["batch"] and tiers["fast"] and tiers["standard"]
    assert any(row[COLUMNS.index("tool_cost_usd")] for row in rows)


def _priced_without_tools(key: str, unless: object) -> list[UsageEvent]:
    """Priced calls without web-search fees whose ``key`` is not ``unless``."""
    return [
        c for c in _week()
        if getattr(c, key) != unless and c.model != UNKNOWN_MODEL and not c.web_search_requests
    ]  # fmt: skip


def test_book_pricer_prices_batch_at_half() -> None:
    price = book_pricer(PriceBook.load())
    batch = _priced_without_tools("service_tier", ServiceTier.STANDARD)
    assert batch
    for event in batch:
        standard = price(event.model_copy(update={"service_tier": ServiceTier.STANDARD}))
        assert standard is not None and price(event) == standard / 2


def test_book_pricer_prices_us_only_inference_at_1_1x() -> None:
    price = book_pricer(PriceBook.load())
    us = _priced_without_tools("inference_geo", "global")
    assert us
    for event in us:
        listed = price(event.model_copy(update={"inference_geo": "global"}))
        assert listed is not None and price(event) == listed * Decimal("1.1")


def test_manifest_by_model_uses_the_workers_model_names() -> None:
    book = PriceBook.load()
    manifest = Manifest(price=book_pricer(book), model_of=book.resolve)
    for call in _week():
        manifest.record(Published(call=call))
    out = manifest.as_json()
    assert "claude-haiku-4-5" in out["by_model"]  # the dated snapshot, resolved
    assert "claude-haiku-4-5-20251001" not in out["by_model"]
    assert out["by_model"][UNKNOWN_MODEL]["unpriced_calls"] == out["unpriced_calls"] > 0
    assert sum(m["calls"] for m in out["by_model"].values()) == out["calls"]
    total = sum((Decimal(m["cost_usd"]) for m in out["by_model"].values()), Decimal(0))
    assert total == Decimal(out["cost_usd"])
    searches = sum(_count(c.web_search_requests) for c in _week())
    assert out["web_search_requests"] == searches > 0


def test_every_call_is_attributed_as_an_application_would() -> None:
    calls = _week()
    for call in calls:
        keys = set(call.attributes)
        assert {"customer", "environment"} <= keys
        assert ("user" in keys) is (call.source.value == "chat")
        assert ("feature" in keys) is (call.source.value == "agent")
    per_tenant_users = {
        tenant: Counter(c.attributes["user"] for c in calls if c.tenant_id == tenant and
                        "user" in c.attributes)
        for tenant in {c.tenant_id for c in calls}
    }  # fmt: skip
    for users in per_tenant_users.values():
        assert 100 <= len(users) <= 300  # a few hundred users per tenant
        counts = sorted(users.values(), reverse=True)
        top_tenth = sum(counts[: len(counts) // 10])
        assert top_tenth > 0.4 * sum(counts)  # heavy-tailed: a tenth of users, most calls
    customers = {t: {c.attributes["customer"] for c in calls if c.tenant_id == t} for t in
                 per_tenant_users}  # fmt: skip
    assert all(2 <= len(names) <= 5 for names in customers.values())
    tenants = list(customers.values())
    assert not set.intersection(*tenants)  # no two tenants share a customer
    environments = Counter(c.attributes["environment"] for c in calls)
    assert environments.most_common(1)[0][0] == "production"
    assert environments["production"] > 0.8 * len(calls) and len(environments) > 1
    # one agent serves one feature; a conversation or agent belongs to one customer
    for key in ("feature", "customer"):
        by_entity: dict[str, set[str]] = {}
        for c in calls:
            if key in c.attributes:
                by_entity.setdefault(c.source_id, set()).add(c.attributes[key])
        assert all(len(values) == 1 for values in by_entity.values()), key
    for call in calls:
        UsageEvent.model_validate_json(call.to_json())  # valid on the wire


def test_attributes_leave_the_rest_of_a_seeds_traffic_unchanged() -> None:
    plain = SimulationConfig(calls=300, days=2, seed=5, end=END)
    other_users = SimulationConfig(calls=300, days=2, seed=5, end=END, users_per_tenant=7)
    strip = {"event_id", "request_id", "attributes"}
    a = [p.call.model_dump(exclude=strip) for p in generate(plain) if p.call]
    b = [p.call.model_dump(exclude=strip) for p in generate(other_users) if p.call]
    assert a == b
    users = {p.call.attributes.get("user") for p in generate(other_users) if p.call}
    assert len(users - {None}) <= 3 * 7


def test_manifest_totals_by_attribute_key_and_value() -> None:
    cfg = SimulationConfig(calls=1000, days=2, seed=3, end=END, duplicate_rate=0.1)
    manifest = Manifest(price=_flat_price)
    items = list(generate(cfg))
    for item in items:
        manifest.record(item)
    unique = [p.call for p in items if p.call and not p.duplicate]
    out = manifest.as_json()["by_attribute"]
    assert set(out) == {"customer", "environment", "feature", "user"}
    for key, values in out.items():
        carrying = [c for c in unique if key in c.attributes]
        assert sum(t["calls"] for t in values.values()) == len(carrying)
        for value, totals in values.items():
            calls = [c for c in carrying if c.attributes[key] == value]
            assert totals["calls"] == len(calls)
            priced = [p for c in calls if (p := _flat_price(c)) is not None]
            assert Decimal(totals["cost_usd"]) == sum(priced, Decimal(0))
            assert totals["unpriced_calls"] == len(calls) - len(priced)
    # every call has a customer and an environment: their totals are the whole manifest's
    for key in ("customer", "environment"):
        total = sum((Decimal(t["cost_usd"]) for t in out[key].values()), Decimal(0))
        assert total == Decimal(manifest.as_json()["cost_usd"])


def test_the_terminal_shows_each_keys_costliest_values() -> None:
    from llm_usage.cli import _top_attribute_values

    manifest = Manifest(price=_flat_price)
    for call in _week():
        manifest.record(Published(call=call))
    full = manifest.as_json()["by_attribute"]
    shown = _top_attribute_values(full, 5)
    assert set(shown) == set(full)
    for key, summary in shown.items():
        assert summary["values"] == len(full[key])
        top = summary["top_5_by_cost"]
        costs = sorted((Decimal(t["cost_usd"]) for t in full[key].values()), reverse=True)
        assert [Decimal(t["cost_usd"]) for t in top.values()] == costs[:5]
        assert all(full[key][value] == t for value, t in top.items())
