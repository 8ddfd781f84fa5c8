"""Shared core of the LLM usage pipeline: settings, CLI, local stack and ClickHouse access."""
