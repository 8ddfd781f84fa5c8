"""One call per billing dimension, priced against Anthropic's published figures.

Each test names where its figure comes from. Prices are per million tokens (MTok) unless
the test says otherwise; the book holds them as generated from genai-prices 0.2.3 plus
``supplement.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_usage.cli import app
from stream_processor.pricing import PriceBook, PriceBookError
from stream_processor.pricing import coverage as coverage_module
from stream_processor.pricing.coverage import sdk_models, unpriced_models

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
PRICING = "https://platform.claude.com/docs/en/about-claude/pricing"


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


def test_batch_is_half_of_every_standard_price(book: PriceBook) -> None:
    # platform.claude.com/docs/en/build-with-claude/batch-processing#pricing:
    # Claude Sonnet 4.5 batch input $1.50 / output $7.50 (standard $3 / $15); prompt-caching
    # multipliers stack with the batch discount: 5m write $1.875, read $0.15.
    q = book.quote("claude-sonnet-4-5", NOW, input_tokens=100_000, output_tokens=10_000,
                   cache_write_5m=40_000, cache_read=50_000, service_tier="batch")  # fmt: skip
    assert q.cost_usd == Decimal("0.15") + Decimal("0.075") + Decimal("0.075") + Decimal("0.0075")
    assert q.price_tier == "batch" and q.priced and not q.long_context


def test_fast_mode_has_its_own_prices_and_cache_multipliers_apply_on_top(book: PriceBook) -> None:
    # PRICING#fast-mode-pricing: Claude Opus 4.8 fast mode $10 input / $50 output, prompt
    # caching multipliers on top (5m write 1.25x = $12.50, read 0.1x = $1).
    q = book.quote("claude-opus-4-8", NOW, input_tokens=100_000, output_tokens=10_000,
                   cache_write_5m=8_000, cache_read=50_000, speed="fast")  # fmt: skip
    assert q.cost_usd == Decimal("1.0") + Decimal("0.5") + Decimal("0.1") + Decimal("0.05")
    assert q.price_tier == "fast" and not q.tier_unavailable
    normal = book.quote("claude-opus-4-8", NOW, input_tokens=100_000, output_tokens=10_000)
    assert normal.cost_usd == Decimal("0.75")  # $5 / $25: fast mode is 2x here


def test_fast_on_a_model_without_fast_mode_is_billed_at_standard_and_flagged(
    book: PriceBook,
) -> None:
    # Claude Sonnet 5.5 has no fast-mode row in PRICING#fast-mode-pricing: $2 / $10 apply.
    # The tier stays what the call asked for (a pure function of the call).
    q = book.quote("claude-sonnet-5-5", NOW, input_tokens=1_000_000, speed="fast")
    assert (q.cost_usd, q.price_tier, q.tier_unavailable) == (Decimal(2), "fast", True)


def test_combinations_stack_as_the_rules_say(book: PriceBook) -> None:
    # batch + long context: Sonnet 4.5 batch above 200K is half of $6 / $22.50
    q = book.quote("claude-sonnet-4-5", NOW, input_tokens=250_000, output_tokens=1_000,
                   service_tier="batch")  # fmt: skip
    assert (q.cost_usd, q.long_context) == (Decimal("0.76125"), True)
    # US geo + long context: Haiku 5.5 above 100K ($0.50) x 1.1
    q = book.quote("claude-haiku-5-5", NOW, input_tokens=200_000, inference_geo="US")
    assert q.cost_usd == Decimal("0.11") and q.long_context  # geo names are case-blind
    # fast + US geo: Opus 5.5 fast $8 x 1.1
    q = book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000, speed="fast",
                   inference_geo="us")  # fmt: skip
    assert (q.cost_usd, q.price_tier) == (Decimal("8.8"), "fast")
    # batch wins over fast (genai-prices resolves variants in that order)
    q = book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000, speed="fast",
                   service_tier="batch")  # fmt: skip
    assert (q.cost_usd, q.price_tier) == (Decimal(2), "batch")
    # priority + fast: the fast prices
    q = book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000, speed="fast",
                   service_tier="priority")  # fmt: skip
    assert (q.cost_usd, q.price_tier) == (Decimal(8), "fast")
    # batch on a model whose entry has no batch prices: standard prices, flagged
    q = book.quote("gemini-2.0-flash", NOW, input_tokens=1_000_000, service_tier="batch")
    assert (q.price_tier, q.tier_unavailable) == ("batch", True)
    assert q.cost_usd == book.quote("gemini-2.0-flash", NOW, input_tokens=1_000_000).cost_usd


def test_us_only_inference_multiplies_every_token_price_by_1_1(book: PriceBook) -> None:
    # platform.claude.com/docs/en/manage-claude/data-residency: inference_geo "us" costs
    # 1.1x on models released after 2026-02-01; Claude Opus 5.5 is $4 / $20, read $0.20.
    q = book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000, output_tokens=100_000,
                   cache_read=1_000_000, inference_geo="us")  # fmt: skip
    assert q.cost_usd == Decimal("4.4") + Decimal("2.2") + Decimal("0.22")
    assert book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000,
                      inference_geo="global").cost_usd == Decimal(4)  # fmt: skip
    # Claude Opus 4.5 (November 2025) predates the premium: list price
    assert book.quote("claude-opus-4-5", NOW, input_tokens=1_000_000,
                      inference_geo="us").cost_usd == Decimal(5)  # fmt: skip
    # the multiplier stacks with the batch discount: $2 x 1.1
    batch_us = book.quote("claude-opus-5-5", NOW, input_tokens=1_000_000,
                          service_tier="batch", inference_geo="us")  # fmt: skip
    assert batch_us.cost_usd == Decimal("2.2")


def test_web_search_is_10_dollars_per_1000_searches_and_kept_apart(book: PriceBook) -> None:
    # PRICING#web-search-tool: $10 per 1,000 searches, plus standard token costs; no batch
    # rate is published (genai-prices keeps it at standard) and the geo premium is for tokens.
    q = book.quote("claude-sonnet-5", NOW, input_tokens=10_000, web_search_requests=3,
                   service_tier="batch", inference_geo="us")  # fmt: skip
    assert q.tool_cost_usd == Decimal("0.03")
    assert q.token_cost_usd == Decimal("0.011")  # 10k at the batch $1 x 1.1
    assert q.cost_usd == q.token_cost_usd + q.tool_cost_usd


def test_long_context_on_a_tiered_model_reprices_every_token(book: PriceBook) -> None:
    # PRICING#long-context-pricing: Claude Haiku 5.5 bills every token of a request whose
    # prompt exceeds 100,000 tokens at 5x ($0.10 -> $0.50 input, $0.50 -> $2.50 output).
    at_limit = book.quote("claude-haiku-5-5", NOW, input_tokens=60_000, cache_read=40_000)
    assert not at_limit.long_context  # exactly 100k input (cached included) is the base tier
    assert at_limit.cost_usd == Decimal("0.006") + Decimal("0.0004")
    over = book.quote("claude-haiku-5-5", NOW, input_tokens=60_001, cache_read=40_000,
                      output_tokens=1_000)  # fmt: skip
    assert over.long_context
    assert over.cost_usd == Decimal("0.0300005") + Decimal("0.002") + Decimal("0.0025")
    # Claude Sonnet 4.5 above 200K: $6 / $22.50
    sonnet = book.quote("claude-sonnet-4-5", NOW, input_tokens=250_000, output_tokens=1_000)
    assert sonnet.long_context and sonnet.cost_usd == Decimal("1.5225")


def test_long_context_on_a_flat_model_keeps_the_base_price(book: PriceBook) -> None:
    # PRICING#long-context-pricing: Claude Opus 5 bills a 900k-token request at the same
    # per-token rate as a 9k-token one ($5 input).
    q = book.quote("claude-opus-5", NOW, input_tokens=900_000)
    assert q.cost_usd == Decimal("4.5") and not q.long_context


def test_opus_4_6_lost_its_long_context_tier_on_2026_03_13(book: PriceBook) -> None:
    # genai-prices 0.2.3: Opus 4.6 had a 200K tier ($10 input) until 1M context went flat.
    before = book.quote("claude-opus-4-6", datetime(2026, 3, 12, tzinfo=UTC),
                        input_tokens=300_000)  # fmt: skip
    after = book.quote("claude-opus-4-6", datetime(2026, 3, 13, tzinfo=UTC), input_tokens=300_000)
    assert (before.cost_usd, before.long_context) == (Decimal(3), True)
    assert (after.cost_usd, after.version) == (Decimal("1.5"), "2026-03-13")


def test_five_minute_and_one_hour_cache_writes_have_their_own_prices(book: PriceBook) -> None:
    # PRICING#model-pricing: Claude Opus 4.7: 5m cache writes $6.25, 1h cache writes $10.
    five = book.quote("claude-opus-4-7", NOW, cache_write_5m=1_000_000)
    hour = book.quote("claude-opus-4-7", NOW, cache_write_1h=1_000_000)
    assert (five.cost_usd, hour.cost_usd) == (Decimal("6.25"), Decimal(10))


def test_priority_tier_is_billed_at_list_price_and_reported_as_its_tier(book: PriceBook) -> None:
    q = book.quote("claude-sonnet-5-5", NOW, input_tokens=1_000_000, service_tier="priority")
    assert (q.cost_usd, q.price_tier) == (Decimal(2), "priority")


def test_limited_availability_models_are_priced_like_their_twins(book: PriceBook) -> None:
    # PRICING#model-pricing lists Claude Mythos 5 / 5.1 at the prices of Fable 5 / 5.1.
    for mythos, fable in (("claude-mythos-5", "claude-fable-5"),
                          ("claude-mythos-5-1", "claude-fable-5-1")):  # fmt: skip
        usage = {"input_tokens": 1000, "output_tokens": 100, "cache_read": 5000}
        assert book.quote(mythos, NOW, **usage).cost_usd == book.quote(fable, NOW, **usage).cost_usd
    assert book.quote("claude-fable-5-1", NOW, cache_read=1_000_000).cost_usd == Decimal("0.25")


def test_every_model_the_pinned_sdk_names_is_priced_with_dated_bedrock_and_vertex_names(
    book: PriceBook,
) -> None:
    names = sdk_models()
    assert len(names) == 22 and unpriced_models(book, names) == []
    for name in ("claude-opus-5-5-20261001", "us.anthropic.claude-opus-5-5-v1:0",
                 "anthropic.claude-opus-4-6-v1", "global.anthropic.claude-sonnet-4-6",
                 "claude-sonnet-4-6@20260217", "anthropic/claude-haiku-5-5"):  # fmt: skip
        assert book.can_price(name), name


def test_prices_check_fails_when_the_sdk_names_a_model_the_book_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["prices", "check"])
    assert ok.exit_code == 0, ok.output
    assert "all 22 models" in ok.output
    monkeypatch.setattr(coverage_module, "sdk_models", lambda: [*sdk_models(), "claude-zeta-9"])
    failed = runner.invoke(app, ["prices", "check"])
    assert failed.exit_code == 1
    assert "unpriced: claude-zeta-9" in failed.output


def test_the_shipped_book_is_exactly_what_the_importer_generates() -> None:
    """prices.json is generated from the pinned library, never edited by hand."""
    result = CliRunner().invoke(app, ["prices", "import", "--check"])
    assert result.exit_code == 0, result.output
    assert "up to date with genai-prices 0.2.3" in result.output


def _overrides(tmp_path: Path) -> Path:
    entry = {"effective_from": "2026-06-01", "input": "2.4", "output": "12",
             "cache_write_5m": "3", "cache_write_1h": "4.8", "cache_read": "0.24"}  # fmt: skip
    data = {
        "models": {
            "claude-sonnet-5": {"provider": "anthropic", "prices": [entry]},  # 20% discount
            "ft-claude-support-1": {"provider": "private", "aliases": ["ft:support-1"],
                                    "prices": [{**entry, "effective_from": "2026-01-01"}]},
        }
    }  # fmt: skip
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(data))
    return path


def test_overrides_are_laid_over_the_book_and_add_private_models(tmp_path: Path) -> None:
    book = PriceBook.load(overrides=_overrides(tmp_path))
    # from 2026-06-01 the negotiated prices ($2.40 instead of $2); batch is 50% of them
    # (Anthropic's rule), the geo multiplier and the web-search fee come from the book
    q = book.quote("claude-sonnet-5", NOW, input_tokens=1_000_000, service_tier="batch",
                   inference_geo="us", web_search_requests=100)  # fmt: skip
    assert (q.token_cost_usd, q.tool_cost_usd) == (Decimal("1.32"), Decimal(1))
    assert (q.version, q.price_tier) == ("override:2026-06-01", "batch")
    # earlier calls keep the book's prices, and the book's aliases still resolve
    before = book.quote("claude-sonnet-5", datetime(2026, 5, 31, tzinfo=UTC),
                        input_tokens=1_000_000)  # fmt: skip
    assert (before.cost_usd, before.version) == (Decimal(2), "2023-01-01")
    assert book.resolve("claude-sonnet-5.0") == "claude-sonnet-5"
    # a private model, by its alias
    assert book.resolve("ft:support-1") == "ft-claude-support-1"
    assert book.quote("ft-claude-support-1", NOW, output_tokens=1_000_000).cost_usd == 12


def test_prices_lists_overrides_from_the_setting(tmp_path: Path) -> None:
    env = {"LLM_USAGE_PRICE_OVERRIDES": str(_overrides(tmp_path)), "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["prices", "--model", "sonnet-5"], env=env)
    assert result.exit_code == 0, result.output
    assert "(override)" in result.output and "override:2026-06-01" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {"x": {"prices": [{"effective_from": "2026-01-01"}]}}}')
    failed = CliRunner().invoke(app, ["prices"], env={"LLM_USAGE_PRICE_OVERRIDES": str(bad)})
    assert failed.exit_code == 1 and "missing input" in failed.output


def test_a_multiplier_that_leaves_a_fraction_of_a_pico_dollar_is_rejected() -> None:
    data = {"models": {"m": {"prices": [{
        "effective_from": "2026-01-01", "input": "0.000001", "output": "1",
        "cache_write_5m": "1", "cache_write_1h": "1", "cache_read": "1",
        "inference_geo_multipliers": {"us": "1.1"},
    }]}}}  # fmt: skip
    with pytest.raises(PriceBookError, match="at most 6 decimals"):
        PriceBook(data)


SNAPSHOT = Path(__file__).with_name("data") / "prices-2025-11-24.json"


def test_every_name_the_previous_book_priced_costs_the_same_on_its_dates(book: PriceBook) -> None:
    """The hand-kept book of 2025-11-24 (the last one before the import): v1 events of the
    models it knew are priced as before, on every one of its dates."""
    old = PriceBook(json.loads(SNAPSHOT.read_text()))
    usages = [{"input_tokens": 1_000_000}, {"output_tokens": 1_000_000},
              {"cache_write_5m": 1_000_000}, {"cache_write_1h": 1_000_000},
              {"cache_read": 1_000_000}, {"input_tokens": 250_000}]  # fmt: skip
    checked = 0
    for model in old.models():
        for name in [model, *old.aliases(model)]:
            assert book.can_price(name), name
            for entry in old.entries[model]:
                day = datetime(entry.effective_from.year, entry.effective_from.month,
                               entry.effective_from.day, 12, tzinfo=UTC)  # fmt: skip
                for usage in usages:
                    was = old.quote(old.resolve(name), day, **usage).cost_usd
                    assert book.quote(book.resolve(name), day, **usage).cost_usd == was, name
                    checked += 1
    assert checked == 396  # 66 names x their dates x 6 usages: none skipped
