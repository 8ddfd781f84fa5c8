"""Generate ``prices.json`` from the pinned price library instead of typing prices by hand.

Source: `genai-prices <https://github.com/pydantic/genai-prices>`_ (the pydantic team's
price data: dated price changes, long-context tiers, batch and fast-mode variants and the
web-search fee, shipped as Python data in the wheel). We read that data only; its
auto-update, which fetches from the internet, is never called. ``supplement.json`` adds what
the library does not model (limited-availability models, the inference-geo multiplier), each
with its source. ``llm-usage prices import`` writes the result as a reviewable diff.

How the library's model becomes our dated entries: every date on which a conditional price
or a price variant starts is a breakpoint; at each one we ask the library for the standard,
batch (``processing: batch``) and fast (``speed: fast``) prices in force. Where the library
has no batch variant for a date (it records batch prices from 2026-10-14 only), Anthropic's
rule applies: batch is 50% of every standard price. Missing cache prices follow the
provider's rules (Anthropic: 5-minute writes 1.25x, 1-hour writes 2x, reads 0.1x of input).

Only Anthropic's models are imported. The book's entries of other providers (OpenAI,
Google) are carried over as they are: the library's current data would rewrite their
earlier dated prices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

from stream_processor.pricing.book import (
    DEFAULT_BOOK,
    PRICE_FIELDS,
    PriceBook,
    _text,
    halved,
    normalise_model,
)

SUPPLEMENT = Path(__file__).with_name("supplement.json")
LIBRARY = "genai-prices"
EARLIEST = date(2023, 1, 1)  # the contract's earliest call time: "since the start"
# Our canonical names where they predate the library's ids (keeps stored history joined up).
_CANONICAL = {"claude-opus-4-0": "claude-opus-4", "claude-sonnet-4-0": "claude-sonnet-4"}
# library price key -> our field
_KEYS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_write_mtok": "cache_write_5m",
    "cache_write_1h_mtok": "cache_write_1h",
    "cache_read_mtok": "cache_read",
}
# Anthropic's cache multipliers of the input price, for entries the library leaves blank.
_CACHE_RULE = {"cache_write_5m": Decimal("1.25"), "cache_write_1h": Decimal(2),
               "cache_read": Decimal("0.1")}  # fmt: skip
_PARTIAL_DATE = re.compile(r"-\d{3,7}$")  # a library prefix pattern such as claude-sonnet-4-2025


class ImportProblem(ValueError):
    """The library holds a price shape the book cannot represent; names the model."""


def library_version() -> str:
    return metadata.version(LIBRARY)


def _tiered(price: Any) -> tuple[Decimal, int | None, Decimal | None]:
    """(base, threshold, long price) of a library price: flat or one cliff tier."""
    from genai_prices.types import TieredPrices

    if isinstance(price, TieredPrices):
        if len(price.tiers) != 1:
            raise ImportProblem(f"{len(price.tiers)} tiers (the book has one long-context tier)")
        return price.base, price.tiers[0].start, price.tiers[0].price
    return price, None, None


def _rate_set(prices: Any, provider: str, where: str) -> dict[str, Any]:
    """One tier in the book's schema from a library ``ModelPrice``."""
    base: dict[str, Decimal] = {}
    long: dict[str, Decimal] = {}
    thresholds: set[int] = set()
    for key, name in _KEYS.items():
        value = getattr(prices, key, None)
        if value is None:
            continue
        flat, above, high = _tiered(value)
        base[name] = flat
        if above is not None and high is not None:
            thresholds.add(above)
            long[name] = high
    if "input" not in base or "output" not in base:
        raise ImportProblem(f"{where}: no input/output price")
    for name in PRICE_FIELDS:
        if name not in base:  # provider rule for missing cache prices
            factor = _CACHE_RULE[name] if provider == "anthropic" else Decimal(1)
            base[name] = base["input"] * factor
            if long:
                long[name] = long["input"] * factor
    if len(thresholds) > 1:
        raise ImportProblem(f"{where}: prices tiered at different thresholds {thresholds}")
    out: dict[str, Any] = {name: _text(base[name]) for name in PRICE_FIELDS}
    if long:
        for name in PRICE_FIELDS:
            long.setdefault(name, base[name])  # a flat key inside a tiered model
        out["long_context"] = {
            "above_input_tokens": thresholds.pop(),
            **{name: _text(long[name]) for name in PRICE_FIELDS},
        }
    return out


def _breakpoints(model: Any, first: date) -> list[date]:
    days = {first}
    conditional = model.prices if isinstance(model.prices, list) else []
    for item in [*conditional, *(model.price_variants or [])]:
        start = getattr(item.constraint, "start_date", None)
        if isinstance(start, date) and start > first:
            days.add(start)
    return sorted(days)


def _variant_active(model: Any, when: Mapping[str, str], at: datetime) -> bool:
    return any(
        dict(v.when) == dict(when) and (v.constraint is None or v.constraint.active(at))
        for v in model.price_variants or []
    )


def _entries(model: Any, provider: str, first: date, name: str) -> list[dict[str, Any]]:
    version = library_version()
    entries: list[dict[str, Any]] = []
    for day in _breakpoints(model, first):
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)
        where = f"{name} at {day}"
        standard = model.get_prices(at)
        entry: dict[str, Any] = {"effective_from": day.isoformat()}
        entry.update(_rate_set(standard, provider, where))
        notes = [f"{LIBRARY} {version}: {provider} {model.id}"]
        if _variant_active(model, {"processing": "batch"}, at):
            entry["batch"] = _rate_set(model.get_prices(at, {"processing": "batch"}),
                                       provider, f"{where} batch")  # fmt: skip
        elif provider == "anthropic":
            entry["batch"] = halved(entry)
            notes.append("batch derived: 50% of every standard price (Anthropic's batch rule)")
        if _variant_active(model, {"speed": "fast"}, at):
            entry["fast"] = _rate_set(model.get_prices(at, {"speed": "fast"}),
                                      provider, f"{where} fast")  # fmt: skip
        fee = getattr(standard, "web_searches_kcount", None)
        if fee is not None:
            entry["web_search_per_1k"] = _text(fee)
        entry["source"] = "; ".join(notes)
        if entries and _same_prices(entries[-1], entry):
            continue
        entries.append(entry)
    return entries


def _same_prices(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    skip = {"effective_from", "source"}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }


def _literal_names(clause: Any) -> Iterable[str]:
    """Names a library match clause spells out (equals / starts_with / contains)."""
    for attr in ("equals", "starts_with", "contains"):
        value = getattr(clause, attr, None)
        if isinstance(value, str):
            yield value.rstrip("@")
    for attr in ("or_", "and_"):
        for inner in getattr(clause, attr, None) or []:
            yield from _literal_names(inner)


def build_book(previous: Mapping[str, Any], supplement: Mapping[str, Any]) -> dict[str, Any]:
    """The new book: library data, supplement on top, earlier names and aliases kept."""
    from genai_prices import data

    providers = {p.id: p for p in data.providers}
    old_models: Mapping[str, Any] = previous.get("models", {})
    models: dict[str, Any] = {}
    for model in providers["anthropic"].models:
        old = next((n for n in old_models if model.is_match(n)), None)
        name = old or _CANONICAL.get(model.id) or model.id.removesuffix("-latest")
        first = _first_date(old_models.get(old or name))
        library = {a for a in _literal_names(model.match) if not _PARTIAL_DATE.search(a)}
        aliases = library | set(old_models.get(old or name, {}).get("aliases", []))
        models[name] = {"provider": "anthropic", "aliases": aliases,
                        "prices": _entries(model, "anthropic", first, name)}  # fmt: skip
    for old, spec in old_models.items():  # other providers: kept as they are (see above)
        if spec.get("provider") != "anthropic":
            models[old] = {**spec, "aliases": set(spec.get("aliases", []))}
    for name, ref in dict(supplement.get("same_as", {})).items():
        twin = models[ref["model"]]
        prices = [{**e, "source": f"{e['source']}; {ref['source']}"} for e in twin["prices"]]
        models[name] = {"provider": twin["provider"], "aliases": set(), "prices": prices}
    for name, spec in dict(supplement.get("models", {})).items():
        models[name] = {**spec, "aliases": set(spec.get("aliases", []))}
    geo = supplement.get("inference_geo_multipliers") or {}
    for name in geo.get("models", []):
        for entry in models[name]["prices"]:
            entry["inference_geo_multipliers"] = dict(geo["multipliers"])
            entry["source"] = f"{entry['source']}; geo: {geo['source']}"
    _tidy_aliases(models)
    return {
        "book_version": f"{LIBRARY} {library_version()}",
        "currency": "USD",
        "unit": "per million tokens",
        "generated_by": "llm-usage prices import (stream_processor/pricing/importer.py)",
        "notes": _NOTES,
        "models": {name: models[name] for name in sorted(models)},
    }


def _first_date(spec: Mapping[str, Any] | None) -> date:
    prices = (spec or {}).get("prices") or []
    return min((date.fromisoformat(p["effective_from"]) for p in prices), default=EARLIEST)


def _tidy_aliases(models: dict[str, Any]) -> None:
    """Normalised, sorted aliases; an alias two models claim goes to neither but its own."""
    claimed: dict[str, list[str]] = {}
    for name, spec in models.items():
        for alias in {normalise_model(a) for a in spec["aliases"]} - {name}:
            claimed.setdefault(alias, []).append(name)
    for spec in models.values():
        spec["aliases"] = []
    for alias, owners in sorted(claimed.items()):
        if len(owners) == 1 and alias not in models:
            models[owners[0]]["aliases"].append(alias)


_NOTES = [
    "Generated: do not edit by hand. Change supplement.json or your overrides file "
    "(LLM_USAGE_PRICE_OVERRIDES) and run `llm-usage prices import`.",
    "Prices are USD per million tokens, as strings so they stay exact decimals; "
    "web_search_per_1k is USD per 1,000 web searches.",
    "An event is priced with the latest entry whose effective_from (UTC day) is on or before "
    "its occurred_at; calls before the first entry use the first entry.",
    "cache_write_5m / cache_write_1h: prompt-cache writes with the 5-minute / 1-hour TTL; "
    "cache_read: cache hits.",
    "long_context: when input + cache writes + cache reads of ONE call exceed "
    "above_input_tokens, every token of that call is billed at the long_context prices. "
    "Models without it are flat across their context window.",
    "batch: prices with service_tier=batch. fast: prices with speed=fast (models without it "
    "bill fast-mode calls at the standard prices). inference_geo_multipliers: multiplier of "
    "every token price for that usage.inference_geo (not of the web-search fee).",
    "Token fields follow the Anthropic usage semantics: input_tokens excludes cached tokens.",
]


def render(book: Mapping[str, Any]) -> str:
    """Stable JSON text (one field per line), so a regenerated book diffs cleanly."""
    return json.dumps(book, indent=2, ensure_ascii=False) + "\n"


def regenerate(target: Path = DEFAULT_BOOK, supplement: Path = SUPPLEMENT) -> tuple[str, str]:
    """(old text, new text) of the book file; the new text is validated by loading it."""
    old_text = target.read_text() if target.exists() else "{}"
    new = build_book(json.loads(old_text), json.loads(supplement.read_text()))
    PriceBook(new, source="<import>")  # raises PriceBookError if anything is malformed
    return old_text, render(new)
