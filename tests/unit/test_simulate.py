"""The demo traffic model: deterministic shape, realistic mix, manifest counts once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from llm_usage.simulate import Manifest, SimulationConfig, generate

END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _flat_price(event) -> Decimal | None:  # type: ignore[no-untyped-def]
    if event.model.startswith("claude-3-5"):
        return None  # stands in for a model missing from the price book
    return Decimal("0.000001") * event.input_tokens


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
    priced = [c for c in unique if _flat_price(c) is not None]
    assert Decimal(out["cost_usd"]) == sum((_flat_price(c) for c in priced), Decimal(0))
    assert out["unpriced_calls"] == len(unique) - len(priced)
    assert sum(t["calls"] for t in out["by_tenant"].values()) == 1000
    assert sum(t["calls"] for t in out["by_source"].values()) == 1000
    assert out["duplicates_published"] > 0
