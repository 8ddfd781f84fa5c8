"""Turn accepted events into ``usage_events`` rows: model name, price, source name.

``source_name`` comes from the event, else from the latest name the worker knows
(``names.Names``); model names are normalised through the price book's aliases so that
"claude-sonnet-4-5-20250929" and "us.anthropic.claude-sonnet-4-5-20250929-v1:0" roll up as
one model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from producers.contract import CallEvent
from stream_processor.names import Names
from stream_processor.pricing import PriceBook

COLUMNS = (
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
    "cache_read_input_tokens", "cost_usd", "priced", "price_version", "duration_ms", "status",
    "request_id", "metadata", "schema_version", "kafka_topic", "kafka_partition", "kafka_offset",
    "service_tier", "speed", "inference_geo", "web_search_requests", "web_fetch_requests",
    "thinking_tokens", "tool_cost_usd", "attributes", "cache_read_savings_usd",
    "cache_write_premium_usd",
)  # fmt: skip
# price_tier and token_cost_usd are not sent: ClickHouse computes them (migration 0011).

Row = tuple[Any, ...]


class Enricher:
    """Prices events and fills names; counts calls of unknown models, and batch or fast
    calls of models without such prices (billed at standard prices)."""

    def __init__(self, book: PriceBook, names: Names | None = None) -> None:
        self.book = book
        self.names = names if names is not None else Names(lookback_s=0)
        self.unpriced = 0
        self.tier_unavailable = 0

    def rows(
        self, events: Sequence[CallEvent], topic: str, partition: int, offset: int
    ) -> list[Row]:
        book, names = self.book, self.names
        rows: list[Row] = []
        append = rows.append
        for e in events:
            model = book.resolve(e.model)
            quote = book.quote_event(model, e)
            if not quote.priced:
                self.unpriced += 1
            elif quote.tier_unavailable:
                self.tier_unavailable += 1
            source = e.source.value
            name = e.source_name
            if not name:
                name = names.get((e.tenant_id, source, e.source_id))
            append((
                e.event_id, e.tenant_id, e.occurred_at, source, e.source_id, name, model,
                e.input_tokens, e.output_tokens, e.cache_creation_input_tokens,
                e.cache_creation_5m_input_tokens, e.cache_creation_1h_input_tokens,
                e.cache_read_input_tokens, quote.cost_usd, quote.priced, quote.version,
                e.duration_ms, e.status.value, e.request_id or "",
                json.dumps(e.metadata, separators=(",", ":")) if e.metadata else "{}",
                e.schema_version, topic, partition, offset, e.service_tier or "standard",
                e.speed or "standard", e.inference_geo or "", e.web_search_requests or 0,
                e.web_fetch_requests or 0, e.thinking_tokens or 0, quote.tool_cost_usd,
                e.attributes, quote.cache_read_savings_usd, quote.cache_write_premium_usd,
            ))  # fmt: skip
        return rows
