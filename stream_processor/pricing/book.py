"""Price every call exactly from a versioned price book shipped as data, not code.

Prices are decimals per million tokens in ``prices.json`` (generated from a maintained price
library by ``llm-usage prices import``; see :mod:`stream_processor.pricing.importer`), with an
optional overrides file of the same schema on top. They are converted once, at load, into
integer pico-dollars (1e-12 USD) per token, one table per price tier and inference geo, so
pricing an event is a dictionary lookup and a handful of integer multiplications; no float
ever touches money. ``cost_usd`` is ``Decimal(pico) * 1e-12``, exactly what
``Decimal(38, 12)`` in ClickHouse stores.

What one call costs (Anthropic's billing rules, as the book encodes them per model entry):

* the tier, a pure function of the call (ClickHouse computes the same ``price_tier``):
  ``batch`` when ``service_tier`` is batch, else ``fast`` when ``speed`` is fast, else
  ``priority`` or ``standard``. A tier is billed at its own prices where the model's entry
  has them (``batch``, ``fast``); priority, and a batch or fast call of a model without
  such prices, are billed at the standard prices (the latter flagged:
  ``Quote.tier_unavailable``);
* long context: when input + cache writes + cache reads of the call exceed the tier's
  ``above_input_tokens``, every token of the call is billed at the long-context prices
  (models with flat pricing across their window have no such rule);
* the inference geo multiplier (US-only inference on recent models) multiplies every token
  price, in every tier;
* server tools: the web-search fee per request, neither batch-discounted nor geo-multiplied.

A quote also says what prompt caching changed for the call, at exactly the rates its cost
used (same tier, geo and long-context prices): ``cache_read_savings_usd`` = cache-read
tokens x (input price - cache-read price), and ``cache_write_premium_usd`` = 5-minute
write tokens x (5m write price - input price) + 1-hour write tokens x (1h write price -
input price).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from producers.contract import CallEvent

DEFAULT_BOOK = Path(__file__).with_name("prices.json")
PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
RATE_SETS = ("batch", "fast")  # tiers an entry can price apart from standard
_PICO_PER_MTOK = Decimal(10**6)  # $/MTok -> 1e-12 $/token: x * 1e12 / 1e6
_PICO_PER_KREQUEST = Decimal(10**9)  # $ per 1,000 requests -> 1e-12 $ per request
_ZERO = Decimal(0)

_PROVIDER_PATH = re.compile(r"^.*/")  # anthropic/claude-..., openrouter paths
_BEDROCK_PREFIX = re.compile(r"^(?:[a-z]{2,6}\.)?anthropic\.")  # us.anthropic.claude-...
_BEDROCK_SUFFIX = re.compile(r"-v\d+:\d+$")  # ...-20250929-v1:0
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")  # after a Bedrock prefix: -v1 or -v1:0
_VERTEX_DATE = re.compile(r"@(\d{8})$")  # claude-sonnet-4-5@20250929
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")

Pico = tuple[int, int, int, int, int]  # per token: input, output, 5m write, 1h write, read


class PriceBookError(ValueError):
    """The price-book file is malformed; the message names the model and field."""


@dataclass(frozen=True, slots=True)
class Rates:
    """Prices of one rate set, per million tokens (as in the file)."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    def pico(self, multiplier: Decimal = Decimal(1), where: str = "") -> Pico:
        values = []
        for name in PRICE_FIELDS:
            exact = getattr(self, name) * _PICO_PER_MTOK * multiplier
            if exact != exact.to_integral_value():
                raise PriceBookError(
                    f"{where}.{name}: x{multiplier} must have at most 6 decimals per MTok "
                    "(a whole number of pico-USD per token)"
                )
            values.append(int(exact))
        return tuple(values)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class TierPrices:
    """One tier's prices: the base rates and, for tiered models, the long-context rates."""

    base: Rates
    long_context: Rates | None = None
    long_context_above: int | None = None


@dataclass(frozen=True, slots=True, eq=False)  # identity: compiled tables are keyed by it
class PriceEntry:
    """The prices of one model from ``effective_from`` (UTC day) until the next entry."""

    model: str
    provider: str
    effective_from: date
    tiers: Mapping[str, TierPrices]
    web_search_per_1k: Decimal | None = None
    geo_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    source: str = ""
    override: bool = False

    @property
    def version(self) -> str:
        """Recorded per row as ``price_version``: which entry priced it."""
        day = self.effective_from.isoformat()
        return f"override:{day}" if self.override else day

    @property
    def base(self) -> Rates:
        return self.tiers["standard"].base


class Quote(NamedTuple):  # a tuple: one is built per call on the worker's hot path
    """Result of pricing one call; ``priced`` is False for models not in the book."""

    model: str
    cost_usd: Decimal
    priced: bool
    version: str
    price_tier: str = "standard"
    token_cost_usd: Decimal = _ZERO
    tool_cost_usd: Decimal = _ZERO
    long_context: bool = False
    tier_unavailable: bool = False  # a batch or fast call of a model without such prices
    # What prompt caching changed, at the call's own rates (tier, geo, long context):
    # cache reads x (input - cache-read price), saved against sending the tokens uncached;
    # cache writes x (write - input price), paid on top. 0 for an unpriced call.
    cache_read_savings_usd: Decimal = _ZERO
    cache_write_premium_usd: Decimal = _ZERO


def price_tier(service_tier: str | None, speed: str | None) -> str:
    """The call's tier (the ``price_tier`` column computes the same in ClickHouse)."""
    if service_tier == "batch":
        return "batch"
    if speed == "fast":
        return "fast"
    return "priority" if service_tier == "priority" else "standard"


# One compiled rate table: (base pico, long-context threshold or -1, long-context pico)
_Table = tuple[Pico, int, Pico]


def normalise_model(raw: str) -> str:
    """Lower-case, trim and strip provider decorations (Bedrock, Vertex, router prefixes)."""
    name = _PROVIDER_PATH.sub("", raw.strip().lower())
    bedrock = _BEDROCK_PREFIX.match(name)
    if bedrock:
        name = _BEDROCK_VERSION.sub("", name[bedrock.end() :])
    else:
        name = _BEDROCK_SUFFIX.sub("", name)
    return _VERTEX_DATE.sub(r"-\1", name)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _decimal(value: Any, where: str) -> Decimal:
    if not isinstance(value, str):
        raise PriceBookError(f"{where}: prices are strings (exact decimals), got {value!r}")
    try:
        price = Decimal(value)
    except InvalidOperation as exc:
        raise PriceBookError(f"{where}: not a decimal: {value!r}") from exc
    if not price.is_finite() or price < 0:
        raise PriceBookError(f"{where}: must be a finite number >= 0: {value!r}")
    return price


def _rates(raw: Mapping[str, Any], where: str) -> Rates:
    missing = [f for f in PRICE_FIELDS if f not in raw]
    if missing:
        raise PriceBookError(f"{where}: missing {', '.join(missing)}")
    return Rates(*(_decimal(raw[f], f"{where}.{f}") for f in PRICE_FIELDS))


def _tier(raw: Mapping[str, Any], where: str) -> TierPrices:
    if not isinstance(raw, Mapping):
        raise PriceBookError(f"{where}: must be an object of prices")
    long_raw = raw.get("long_context")
    if not long_raw:
        return TierPrices(_rates(raw, where))
    above = long_raw.get("above_input_tokens")
    if type(above) is not int or above <= 0:
        raise PriceBookError(f"{where}.long_context: above_input_tokens must be an integer > 0")
    return TierPrices(_rates(raw, where), _rates(long_raw, f"{where}.long_context"), above)


def _entry(model: str, provider: str, raw: Mapping[str, Any], where: str) -> PriceEntry:
    try:
        effective = date.fromisoformat(raw["effective_from"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PriceBookError(f"{where}: effective_from must be YYYY-MM-DD") from exc
    tiers = {"standard": _tier(raw, where)}
    for name in RATE_SETS:
        if raw.get(name):
            tiers[name] = _tier(raw[name], f"{where}.{name}")
    fee = raw.get("web_search_per_1k")
    geo = {
        str(k).lower(): _decimal(v, f"{where}.inference_geo_multipliers.{k}")
        for k, v in dict(raw.get("inference_geo_multipliers") or {}).items()
    }
    return PriceEntry(
        model, provider, effective, tiers,
        _decimal(fee, f"{where}.web_search_per_1k") if fee is not None else None,
        geo, str(raw.get("source", "")), bool(raw.get(_OVERRIDE)),
    )  # fmt: skip


def _compile(entry: PriceEntry, where: str) -> dict[tuple[str, str], _Table]:
    """Rate tables keyed by (tier, geo): geo "" is the list price, others are multiplied."""
    tables: dict[tuple[str, str], _Table] = {}
    for geo, multiplier in [("", Decimal(1)), *entry.geo_multipliers.items()]:
        for tier, prices in entry.tiers.items():
            w = f"{where}.{tier}" + (f"@{geo}" if geo else "")
            base = prices.base.pico(multiplier, w)
            if prices.long_context is not None and prices.long_context_above is not None:
                long = prices.long_context.pico(multiplier, f"{w}.long_context")
                tables[tier, geo] = (base, prices.long_context_above, long)
            else:
                tables[tier, geo] = (base, -1, base)
    return tables


def halved(rates: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's batch rule: 50% of every price of a rate set (long context included)."""
    out: dict[str, Any] = {n: _text(Decimal(rates[n]) / 2) for n in PRICE_FIELDS}
    if rates.get("long_context"):
        long = rates["long_context"]
        out["long_context"] = {
            "above_input_tokens": long["above_input_tokens"],
            **{n: _text(Decimal(long[n]) / 2) for n in PRICE_FIELDS},
        }
    return out


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


_OVERRIDE = "_override"  # marks, in a layered spec, the entries that came from the overrides
_INHERITED = ("fast", "web_search_per_1k", "inference_geo_multipliers")


def layer(book: Mapping[str, Any] | None, override: Mapping[str, Any]) -> dict[str, Any]:
    """A model's spec with the overrides file's entries laid over the book's.

    From the first override date on, the override's prices apply; earlier calls keep the
    book's. An override entry inherits from the book entry in force on its day what it does
    not set itself (fast-mode prices, the web-search fee, the geo multipliers), and an
    Anthropic model without ``batch`` prices gets 50% of the override's. Aliases add up.
    """
    provider = str(override.get("provider") or (book or {}).get("provider", ""))
    entries = sorted(override.get("prices", []), key=lambda e: str(e.get("effective_from")))
    book_entries = sorted((book or {}).get("prices", []), key=lambda e: e["effective_from"])
    first = str(entries[0].get("effective_from")) if entries else ""
    layered = [dict(e) for e in book_entries if e["effective_from"] < first]
    for raw in entries:
        entry = {**raw, _OVERRIDE: True}
        day = str(raw.get("effective_from"))
        in_force = [e for e in book_entries if e["effective_from"] <= day] or book_entries[:1]
        for key in _INHERITED:
            if key not in entry and in_force and key in in_force[-1]:
                entry[key] = in_force[-1][key]
        if "batch" not in entry and provider == "anthropic":
            entry["batch"] = halved(entry)
        layered.append(entry)
    aliases = [*(book or {}).get("aliases", []), *override.get("aliases", [])]
    return {**(book or {}), **override, "provider": provider, "aliases": aliases,
            "prices": layered}  # fmt: skip


class PriceBook:
    """Model prices by effective date, with aliases; loaded once per worker."""

    def __init__(
        self,
        data: Mapping[str, Any],
        source: str = "<memory>",
        overrides: Mapping[str, Any] | None = None,
        overrides_source: str = "",
    ) -> None:
        self.source = source
        self.overrides_source = overrides_source
        self.book_version = str(data.get("book_version", ""))
        self.entries: dict[str, list[PriceEntry]] = {}
        self._names: dict[str, str] = {}  # canonical name or alias -> canonical name
        self._starts: dict[str, list[tuple[datetime, PriceEntry]]] = {}
        self._tables: dict[PriceEntry, dict[tuple[str, str], _Table]] = {}
        self._web_search: dict[PriceEntry, int] = {}
        self._versions: dict[PriceEntry, str] = {}  # entry.version, formatted once per entry
        self._resolved: dict[str, str] = {}
        models = dict(data.get("models", {}))
        for model, spec in dict((overrides or {}).get("models", {})).items():
            models[str(model)] = layer(models.get(str(model)), spec)
        for model, spec in models.items():
            self._add_model(str(model), spec)
        if not self.entries:
            raise PriceBookError(f"{source}: no models")

    @classmethod
    def load(cls, path: Path = DEFAULT_BOOK, overrides: Path | None = None) -> PriceBook:
        """The book at ``path`` with the overrides file (same schema) on top, if given."""
        extra = _read(overrides) if overrides is not None else None
        return cls(_read(path), str(path), extra, str(overrides or ""))

    def _add_model(self, model: str, spec: Mapping[str, Any]) -> None:
        if normalise_model(model) != model:
            raise PriceBookError(f"{model}: canonical names are normalised (lower case)")
        provider = str(spec.get("provider", ""))
        entries = [
            _entry(model, provider, raw, f"{model}.prices[{i}]")
            for i, raw in enumerate(spec.get("prices", []))
        ]
        if not entries:
            raise PriceBookError(f"{model}: no prices")
        entries.sort(key=lambda e: e.effective_from)
        if len({e.effective_from for e in entries}) != len(entries):
            raise PriceBookError(f"{model}: two entries with the same effective_from")
        self.entries[model] = entries
        self._starts[model] = [(_midnight(e.effective_from), e) for e in entries]
        for e in entries:
            self._tables[e] = _compile(e, f"{model}.{e.version}")
            self._versions[e] = e.version
            if e.web_search_per_1k is not None:
                fee = e.web_search_per_1k * _PICO_PER_KREQUEST
                if fee != fee.to_integral_value():
                    raise PriceBookError(f"{model}.{e.version}: web_search_per_1k too precise")
                self._web_search[e] = int(fee)
        for name in [model, *spec.get("aliases", [])]:
            key = normalise_model(str(name))
            if self._names.get(key, model) != model:
                raise PriceBookError(f"alias {name!r} points at two models")
            self._names[key] = model

    def resolve(self, raw_model: str) -> str:
        """Canonical model name for ``raw_model`` (dated, aliased or decorated names)."""
        cached = self._resolved.get(raw_model)
        if cached is not None:
            return cached
        name = normalise_model(raw_model)
        canonical = self._names.get(name) or self._names.get(_DATE_SUFFIX.sub("", name)) or name
        if len(self._resolved) > 100_000:  # garbage model names must not grow memory forever
            self._resolved.clear()
        self._resolved[raw_model] = canonical
        return canonical

    def entry(self, model: str, at: datetime) -> PriceEntry | None:
        """The entry in force at ``at`` for a canonical model; the first one before it."""
        starts = self._starts.get(model)
        if starts is None:
            return None
        for start, entry in reversed(starts):
            if at >= start:
                return entry
        return starts[0][1]

    def quote(
        self,
        model: str,
        at: datetime,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
        cache_read: int = 0,
        *,
        service_tier: str | None = None,
        speed: str | None = None,
        inference_geo: str | None = None,
        web_search_requests: int = 0,
    ) -> Quote:
        """Exact cost of one call of canonical ``model`` made at ``at`` (aware datetime)."""
        tier = price_tier(service_tier, speed)
        entry = self.entry(model, at)
        if entry is None:
            return Quote(model, _ZERO, False, "", tier)
        tables = self._tables[entry]
        key = tier if tier in entry.tiers else "standard"
        unavailable = key != tier and tier != "priority"
        geo = inference_geo.lower() if inference_geo else ""
        if geo not in entry.geo_multipliers:
            geo = ""
        base, above, long = tables[key, geo]
        long_context = 0 <= above < input_tokens + cache_write_5m + cache_write_1h + cache_read
        p_in, p_out, p_5m, p_1h, p_read = long if long_context else base
        tokens = (
            input_tokens * p_in
            + output_tokens * p_out
            + cache_write_5m * p_5m
            + cache_write_1h * p_1h
            + cache_read * p_read
        )
        tools = web_search_requests * self._web_search.get(entry, 0) if web_search_requests else 0
        token_cost = Decimal(tokens).scaleb(-12)
        tool_cost = Decimal(tools).scaleb(-12) if tools else _ZERO
        cost = token_cost + tool_cost if tools else token_cost
        version = self._versions[entry]
        saved = Decimal(cache_read * (p_in - p_read)).scaleb(-12) if cache_read else _ZERO
        premium = (
            Decimal(cache_write_5m * (p_5m - p_in) + cache_write_1h * (p_1h - p_in)).scaleb(-12)
            if cache_write_5m or cache_write_1h
            else _ZERO
        )
        return Quote(
            model, cost, True, version, tier, token_cost, tool_cost, long_context, unavailable,
            saved, premium,
        )  # fmt: skip

    def quote_event(self, model: str, event: CallEvent) -> Quote:
        """:meth:`quote` of a contract event, whose model resolved to ``model``."""
        return self.quote(
            model, event.occurred_at, event.input_tokens, event.output_tokens,
            event.cache_creation_5m_input_tokens, event.cache_creation_1h_input_tokens,
            event.cache_read_input_tokens, service_tier=event.service_tier, speed=event.speed,
            inference_geo=event.inference_geo, web_search_requests=event.web_search_requests or 0,
        )  # fmt: skip

    def models(self) -> list[str]:
        return sorted(self.entries)

    def aliases(self, model: str) -> list[str]:
        return sorted(alias for alias, m in self._names.items() if m == model and alias != model)

    def can_price(self, raw_model: str) -> bool:
        return self.resolve(raw_model) in self.entries

    def rate_sets(self, model: str, at: datetime | None = None) -> frozenset[str]:
        """The tiers a model prices apart from standard (``batch``, ``fast``), at ``at``."""
        entry = self.entry(model, at or datetime.now(UTC))
        return frozenset(entry.tiers) - {"standard"} if entry else frozenset()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PriceBookError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceBookError(f"{path}: expected a JSON object with 'models'")
    return data
