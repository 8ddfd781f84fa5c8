"""Price every call exactly from a versioned price book shipped as data, not code.

Prices are decimals per million tokens in ``prices.json``. They are converted once, at load,
into integer pico-dollars (1e-12 USD) per token, so pricing an event is five integer
multiplications and no float ever touches money; ``cost_usd`` is ``Decimal(pico) * 1e-12``,
exactly what ``Decimal(38, 12)`` in ClickHouse stores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DEFAULT_BOOK = Path(__file__).with_name("prices.json")
PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_PICO_PER_MTOK = Decimal(10**6)  # $/MTok -> 1e-12 $/token: x * 1e12 / 1e6
_ZERO = Decimal(0)

_PROVIDER_PATH = re.compile(r"^.*/")  # anthropic/claude-..., openrouter paths
_BEDROCK_PREFIX = re.compile(r"^(?:[a-z]{2,6}\.)?anthropic\.")  # us.anthropic.claude-...
_BEDROCK_SUFFIX = re.compile(r"-v\d+:\d+$")  # ...-20250929-v1:0
_VERTEX_DATE = re.compile(r"@(\d{8})$")  # claude-sonnet-4-5@20250929
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


class PriceBookError(ValueError):
    """The price-book file is malformed; the message names the model and field."""


@dataclass(frozen=True, slots=True)
class Rates:
    """Prices of one tier, per million tokens (as in the file) and in pico-USD per token."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    @property
    def pico(self) -> tuple[int, int, int, int, int]:
        return tuple(int(getattr(self, f) * _PICO_PER_MTOK) for f in PRICE_FIELDS)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """The prices of one model from ``effective_from`` (UTC day) until the next entry."""

    model: str
    provider: str
    effective_from: date
    base: Rates
    long_context: Rates | None = None
    long_context_above: int | None = None

    @property
    def version(self) -> str:
        return self.effective_from.isoformat()


@dataclass(frozen=True, slots=True)
class Quote:
    """Result of pricing one call; ``priced`` is False for models not in the book."""

    model: str
    cost_usd: Decimal
    priced: bool
    version: str
    long_context: bool = False


def normalise_model(raw: str) -> str:
    """Lower-case, trim and strip provider decorations (Bedrock, Vertex, router prefixes)."""
    name = raw.strip().lower()
    name = _PROVIDER_PATH.sub("", name)
    name = _BEDROCK_PREFIX.sub("", name)
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
    if price < 0 or (price * _PICO_PER_MTOK) != (price * _PICO_PER_MTOK).to_integral_value():
        raise PriceBookError(f"{where}: must be >= 0 with at most 6 decimals: {value!r}")
    return price


def _rates(raw: dict[str, Any], where: str) -> Rates:
    missing = [f for f in PRICE_FIELDS if f not in raw]
    if missing:
        raise PriceBookError(f"{where}: missing {', '.join(missing)}")
    return Rates(*(_decimal(raw[f], f"{where}.{f}") for f in PRICE_FIELDS))


class PriceBook:
    """Model prices by effective date, with aliases; loaded once per worker."""

    def __init__(self, data: dict[str, Any], source: str = "<memory>") -> None:
        self.source = source
        self.book_version = str(data.get("book_version", ""))
        self.entries: dict[str, list[PriceEntry]] = {}
        self._names: dict[str, str] = {}  # canonical name or alias -> canonical name
        self._starts: dict[str, list[tuple[datetime, PriceEntry, tuple[int, ...]]]] = {}
        self._long: dict[PriceEntry, tuple[int, tuple[int, ...]]] = {}
        self._resolved: dict[str, str] = {}
        for model, spec in dict(data.get("models", {})).items():
            self._add_model(str(model), spec)
        if not self.entries:
            raise PriceBookError(f"{source}: no models")

    @classmethod
    def load(cls, path: Path = DEFAULT_BOOK) -> PriceBook:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PriceBookError(f"{path}: {exc}") from exc
        return cls(data, source=str(path))

    def _add_model(self, model: str, spec: dict[str, Any]) -> None:
        if normalise_model(model) != model:
            raise PriceBookError(f"{model}: canonical names are normalised (lower case)")
        entries = []
        for i, raw in enumerate(spec.get("prices", [])):
            where = f"{model}.prices[{i}]"
            try:
                effective = date.fromisoformat(raw["effective_from"])
            except (KeyError, TypeError, ValueError) as exc:
                raise PriceBookError(f"{where}: effective_from must be YYYY-MM-DD") from exc
            long_raw = raw.get("long_context")
            long_rates = _rates(long_raw, f"{where}.long_context") if long_raw else None
            above = int(long_raw["above_input_tokens"]) if long_raw else None
            provider = str(spec.get("provider", ""))
            base = _rates(raw, where)
            entries.append(PriceEntry(model, provider, effective, base, long_rates, above))
        if not entries:
            raise PriceBookError(f"{model}: no prices")
        entries.sort(key=lambda e: e.effective_from)
        if len({e.effective_from for e in entries}) != len(entries):
            raise PriceBookError(f"{model}: two entries with the same effective_from")
        self.entries[model] = entries
        self._starts[model] = [(_midnight(e.effective_from), e, e.base.pico) for e in entries]
        for e in entries:
            if e.long_context is not None and e.long_context_above is not None:
                self._long[e] = (e.long_context_above, e.long_context.pico)
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
        for start, entry, _ in reversed(starts):
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
    ) -> Quote:
        """Exact cost of one call of canonical ``model`` made at ``at`` (aware datetime)."""
        starts = self._starts.get(model)
        if starts is None:
            return Quote(model, _ZERO, False, "")
        chosen = starts[0]
        for item in reversed(starts):
            if at >= item[0]:
                chosen = item
                break
        _, entry, pico = chosen
        long_context = False
        tier = self._long.get(entry)
        if (
            tier is not None
            and input_tokens + cache_write_5m + cache_write_1h + cache_read > tier[0]
        ):
            pico, long_context = tier[1], True
        p_in, p_out, p_5m, p_1h, p_read = pico
        total = (
            input_tokens * p_in
            + output_tokens * p_out
            + cache_write_5m * p_5m
            + cache_write_1h * p_1h
            + cache_read * p_read
        )
        return Quote(model, Decimal(total).scaleb(-12), True, entry.version, long_context)

    def models(self) -> list[str]:
        return sorted(self.entries)

    def aliases(self, model: str) -> list[str]:
        return sorted(alias for alias, m in self._names.items() if m == model and alias != model)
