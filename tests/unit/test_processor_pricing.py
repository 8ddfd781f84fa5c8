"""The price book: exact decimals, cache tokens, long-context tiers, versions, aliases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from stream_processor.pricing import DEFAULT_BOOK, PriceBook, PriceBookError, normalise_model

NOW = datetime(2025, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


def test_input_output_and_both_cache_write_ttls_and_cache_reads(book: PriceBook) -> None:
    quote = book.quote("claude-sonnet-4-5", NOW, input_tokens=1000, output_tokens=200,
                       cache_write_5m=300, cache_write_1h=100, cache_read=500)  # fmt: skip
    # 1000*3 + 200*15 + 300*3.75 + 100*6 + 500*0.30 = 7875 USD-per-million units
    assert quote.cost_usd == Decimal("0.007875")
    assert quote.priced and quote.version == "2025-09-29" and not quote.long_context


def test_cost_is_exact_for_every_token_count(book: PriceBook) -> None:
    quote = book.quote("claude-haiku-4-5", NOW, input_tokens=1, output_tokens=3, cache_read=7)
    assert quote.cost_usd == Decimal("0.0000167")  # 1*1 + 3*5 + 7*0.10 = 16.7 micro-USD
    assert quote.cost_usd.as_tuple().exponent == -12  # Decimal(38, 12) as stored
    total = sum(
        (book.quote("claude-3-5-haiku", NOW, input_tokens=n).cost_usd for n in range(1, 1001)),
        Decimal(0),
    )
    assert total == Decimal("0.40040")  # 500500 tokens at $0.80/MTok, no float drift


def test_long_context_tier_counts_cached_input_and_reprices_everything(book: PriceBook) -> None:
    at_limit = book.quote("claude-sonnet-4", NOW, input_tokens=150_000, cache_read=50_000)
    assert not at_limit.long_context  # exactly 200k is still the base tier
    assert at_limit.cost_usd == Decimal("0.465")  # 150000*3 + 50000*0.30
    over = book.quote("claude-sonnet-4", NOW, input_tokens=150_000, cache_read=60_000,
                      output_tokens=1000)  # fmt: skip
    assert over.long_context
    assert over.cost_usd == Decimal("0.9585")  # 150000*6 + 60000*0.60 + 1000*22.50
    opus = book.quote("claude-opus-4-5", NOW, input_tokens=300_000)
    assert not opus.long_context and opus.cost_usd == Decimal("1.5")  # no tier: base price


def test_versions_by_effective_date(book: PriceBook) -> None:
    before = book.quote("o3", datetime(2025, 6, 9, 23, 59, tzinfo=UTC), input_tokens=1_000_000)
    after = book.quote("o3", datetime(2025, 6, 10, tzinfo=UTC), input_tokens=1_000_000)
    assert (before.cost_usd, before.version) == (Decimal(10), "2025-04-16")
    assert (after.cost_usd, after.version) == (Decimal(2), "2025-06-10")
    early = book.quote("o3", datetime(2025, 1, 1, tzinfo=UTC), input_tokens=1_000_000)
    assert early.version == "2025-04-16", "calls before the first entry use the first entry"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("  Claude-Sonnet-4-5  ", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
        ("anthropic/claude-opus-4-5", "claude-opus-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20991231", "claude-sonnet-4-5"),  # a future dated snapshot
        ("Mystery-Model-9", "mystery-model-9"),  # unknown: normalised, kept
    ],
)
def test_aliases_and_normalisation(book: PriceBook, raw: str, canonical: str) -> None:
    assert book.resolve(raw) == canonical


def test_unknown_model_is_unpriced_not_free(book: PriceBook) -> None:
    quote = book.quote(book.resolve("mystery-model-9"), NOW, input_tokens=10, output_tokens=10)
    assert quote == quote.__class__("mystery-model-9", Decimal(0), False, "")


def test_book_covers_current_claude_and_other_providers(book: PriceBook) -> None:
    models = set(book.models())
    assert {"claude-opus-4-5", "claude-opus-4-1", "claude-sonnet-4-5", "claude-sonnet-4",
            "claude-haiku-4-5", "claude-3-5-haiku", "claude-3-7-sonnet"} <= models  # fmt: skip
    assert {"gpt-4o", "gpt-4.1", "gpt-5", "gemini-2.5-pro"} <= models
    for model in models:
        entry = book.entries[model][-1]
        assert entry.base.output >= entry.base.input > 0, model


def _book(**model: object) -> dict[str, object]:
    prices = {"effective_from": "2025-01-01", "input": "1", "output": "2",
              "cache_write_5m": "1.25", "cache_write_1h": "2", "cache_read": "0.1"}  # fmt: skip
    return {"models": {"m": {"prices": [{**prices, **model}]}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_book(input=1), "prices are strings"),
        (_book(input="0.0000001"), "at most 6 decimals"),
        (_book(input="-1"), ">= 0"),
        (_book(effective_from="yesterday"), "YYYY-MM-DD"),
        (
            {"models": {"m": {"prices": [{"effective_from": "2025-01-01", "input": "1"}]}}},
            "missing",
        ),
        ({"models": {}}, "no models"),
    ],
)
def test_malformed_books_are_rejected(data: dict[str, object], message: str) -> None:
    with pytest.raises(PriceBookError, match=message):
        PriceBook(data)


def test_shipped_file_is_valid_json_with_string_prices() -> None:
    data = json.loads(DEFAULT_BOOK.read_text())
    assert data["book_version"]
    assert normalise_model("X/Claude-Opus-4-5") == "claude-opus-4-5"
