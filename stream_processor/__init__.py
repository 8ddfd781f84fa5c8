"""Faust worker: validate, dedupe, price, enrich and sink LLM usage events to ClickHouse."""
