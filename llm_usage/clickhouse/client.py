"""One way to open a ClickHouse connection, so every component talks to it alike."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from llm_usage.settings import Settings


def connect(settings: Settings, *, database: str | None = None, **kwargs: Any) -> Client:
    """A clickhouse-connect HTTP client for the configured server.

    ``database=""`` connects without selecting a database (used before it exists).
    """
    return clickhouse_connect.get_client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        secure=settings.clickhouse_secure,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=settings.clickhouse_database if database is None else database,
        **kwargs,
    )
