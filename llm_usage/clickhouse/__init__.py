"""ClickHouse access shared by the worker, the API and the CLI: client and migrations."""

from llm_usage.clickhouse.client import connect
from llm_usage.clickhouse.migrations import (
    apply_migrations,
    drop_database,
    migrate,
    pending_migrations,
)

__all__ = ["apply_migrations", "connect", "drop_database", "migrate", "pending_migrations"]
