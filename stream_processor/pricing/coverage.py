"""Which models the installed Anthropic SDK names that the price book cannot price.

An SDK upgrade that adds models then fails ``llm-usage prices check`` (and CI, which runs
it) until the book prices them, instead of their calls quietly landing as unpriced.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable

from stream_processor.pricing.book import PriceBook


def sdk_models() -> list[str]:
    """The literal model names of ``anthropic.types.Model`` (the SDK's current line-up)."""
    from anthropic.types import Model

    names: list[str] = []
    for arg in typing.get_args(Model):
        names.extend(a for a in typing.get_args(arg) if isinstance(a, str))
    return names


def unpriced_models(book: PriceBook, names: Iterable[str] | None = None) -> list[str]:
    """The names (default: the SDK's) that resolve to no model of ``book``."""
    return [n for n in (sdk_models() if names is None else names) if not book.can_price(n)]
