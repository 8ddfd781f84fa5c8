"""The price book: a versioned data file (``prices.json``) and exact cost arithmetic."""

from stream_processor.pricing.book import (
    DEFAULT_BOOK,
    PriceBook,
    PriceBookError,
    PriceEntry,
    Quote,
    Rates,
    normalise_model,
)

__all__ = [
    "DEFAULT_BOOK",
    "PriceBook",
    "PriceBookError",
    "PriceEntry",
    "Quote",
    "Rates",
    "normalise_model",
]
