"""What prompt caching saved and cost on top, per call, at the call's own rates.

``cache_read_savings_usd`` = cache reads x (input price - cache-read price);
``cache_write_premium_usd`` = 5m writes x (5m write - input price) + 1h writes x (1h write -
input price); both with the tier, geo and long-context prices the cost used. The figures
below are worked out by hand from the prices in ``BOOK`` (per million tokens).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from stream_processor.pricing import PriceBook

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
_RATES = {"input": "3", "output": "15", "cache_write_5m": "3.75", "cache_write_1h": "6",
          "cache_read": "0.3"}  # fmt: skip
_LONG = {"above_input_tokens": 200_000, "input": "6", "output": "22.5",
         "cache_write_5m": "7.5", "cache_write_1h": "12", "cache_read": "0.6"}  # fmt: skip
_BATCH = {"input": "1.5", "output": "7.5", "cache_write_5m": "1.875", "cache_write_1h": "3",
          "cache_read": "0.15"}  # fmt: skip
BOOK = {
    "models": {
        "m-test": {
            "provider": "anthropic",
            "prices": [
                {
                    "effective_from": "2026-01-01",
                    **_RATES,
                    "long_context": _LONG,
                    "batch": _BATCH,
                    "inference_geo_multipliers": {"us": "1.1"},
                }
            ],
        }
    }
}


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook(BOOK)


def test_standard_tier(book: PriceBook) -> None:
    q = book.quote("m-test", NOW, input_tokens=1_000, cache_write_5m=10_000,
                   cache_write_1h=2_000, cache_read=100_000)  # fmt: skip
    assert not q.long_context
    # 100k reads x ($3 - $0.30) = $0.27
    assert q.cache_read_savings_usd == Decimal("0.27")
    # 10k x ($3.75 - $3) + 2k x ($6 - $3) = $0.0075 + $0.006
    assert q.cache_write_premium_usd == Decimal("0.0135")


def test_batch_tier_with_the_us_geo_multiplier(book: PriceBook) -> None:
    q = book.quote("m-test", NOW, input_tokens=1_000, cache_write_5m=10_000,
                   cache_write_1h=2_000, cache_read=100_000, service_tier="batch",
                   inference_geo="us")  # fmt: skip
    assert q.price_tier == "batch"
    # batch x 1.1: input $1.65, read $0.165, 5m $2.0625, 1h $3.30
    assert q.cache_read_savings_usd == Decimal("0.1485")  # 100k x $1.485
    assert q.cache_write_premium_usd == Decimal("0.007425")  # 10k x $0.4125 + 2k x $1.65


def test_long_context_uses_the_long_context_prices(book: PriceBook) -> None:
    q = book.quote("m-test", NOW, input_tokens=150_000, cache_write_5m=10_000, cache_read=60_000)
    assert q.long_context  # 220k > 200k
    assert q.cache_read_savings_usd == Decimal("0.324")  # 60k x ($6 - $0.60)
    assert q.cache_write_premium_usd == Decimal("0.015")  # 10k x ($7.50 - $6)


def test_no_cache_tokens_and_unpriced_calls_read_zero(book: PriceBook) -> None:
    q = book.quote("m-test", NOW, input_tokens=1_000, output_tokens=500)
    assert (q.cache_read_savings_usd, q.cache_write_premium_usd) == (0, 0)
    unknown = book.quote("no-such-model", NOW, input_tokens=1_000, cache_read=5_000,
                         cache_write_5m=5_000)  # fmt: skip
    assert not unknown.priced
    assert (unknown.cache_read_savings_usd, unknown.cache_write_premium_usd) == (0, 0)


def test_exact_at_twelve_places(book: PriceBook) -> None:
    q = book.quote("m-test", NOW, cache_read=1, cache_write_1h=1, inference_geo="us")
    assert q.cache_read_savings_usd == Decimal("0.00000297")  # 1 x ($3.30 - $0.33) / 1e6
    assert q.cache_write_premium_usd == Decimal("0.0000033")  # 1 x ($6.60 - $3.30) / 1e6
    assert q.cache_read_savings_usd.as_tuple().exponent >= -12


def test_shipped_book_batch_figures() -> None:
    # Claude Sonnet 4.5 batch: input $1.50, 5m write $1.875, read $0.15 (see
    # test_processor_pricing_dimensions.test_batch_is_half_of_every_standard_price)
    q = PriceBook.load().quote("claude-sonnet-4-5", NOW, input_tokens=100_000,
                               output_tokens=10_000, cache_write_5m=40_000, cache_read=50_000,
                               service_tier="batch")  # fmt: skip
    assert q.cache_read_savings_usd == Decimal("0.0675")  # 50k x $1.35
    assert q.cache_write_premium_usd == Decimal("0.015")  # 40k x $0.375


@pytest.mark.parametrize(
    "options",
    [{}, {"service_tier": "batch"}, {"speed": "fast"}, {"inference_geo": "us"},
     {"service_tier": "batch", "inference_geo": "us"}],
)  # fmt: skip
@pytest.mark.parametrize("input_tokens", [1_000, 150_000])
def test_cost_plus_savings_minus_premium_is_the_cost_without_caching(
    options: dict[str, str], input_tokens: int
) -> None:
    """Every model of the shipped book: the same call with its cached tokens sent as plain
    input costs exactly cost + savings - premium (long context included: the rule counts
    cached tokens too, so both calls are on the same side of it)."""
    book = PriceBook.load()
    for model in book.models():
        q = book.quote(model, NOW, input_tokens, 2_000, 30_000, 7_000, 90_000, **options)
        plain = book.quote(model, NOW, input_tokens + 127_000, 2_000, **options)
        assert plain.long_context == q.long_context
        assert plain.cost_usd == q.cost_usd + q.cache_read_savings_usd - q.cache_write_premium_usd
