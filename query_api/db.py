"""The API's one ClickHouse connection: created lazily, shared by all request threads.

Lazily, so the API starts (and ``/readyz`` explains why it is not ready) while ClickHouse is
down; without a session id, so concurrent requests may share one HTTP connection pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings

log = logging.getLogger(__name__)


# What the API reads (migrations 0001-0015); readiness fails until every one exists.
API_TABLES = (
    "usage_events",
    "usage_api_15m",
    "usage_api_daily",
    "usage_api_models_15m",
    "usage_api_models_daily",
    "usage_api_models_1m",
    "usage_hourly",
    "usage_daily",
    "usage_entities_15m",
    "source_names",
    "ingest_activity",
    "reprice_runs",
)


class Unavailable(RuntimeError):
    """ClickHouse cannot answer (down, unreachable, or failing); the API answers 503."""


class ClickHouse:
    """Runs parameterised queries; every driver error becomes :class:`Unavailable`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._lock = threading.Lock()

    def _connect(self) -> Client:
        with self._lock:
            if self._client is None:
                timeout = self._settings.api_query_timeout_s
                self._client = connect(
                    self._settings,
                    autogenerate_session_id=False,
                    connect_timeout=min(timeout, 5),
                    send_receive_timeout=timeout + 5,
                    query_retries=1,  # reads are idempotent: survive one stale connection
                )
            return self._client

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Result rows of ``sql`` with server-side bound ``{name:Type}`` parameters."""
        try:
            client = self._connect()
            result = client.query(
                sql,
                parameters=dict(parameters),
                settings={"max_execution_time": self._settings.api_query_timeout_s},
            )
            return result.result_rows
        except (OperationalError, OSError) as exc:  # connection refused, timeout, ...
            self.reset()
            raise Unavailable(
                f"ClickHouse at {self._settings.clickhouse_url} is unreachable: {_first_line(exc)}"
            ) from exc
        except ClickHouseError as exc:  # the server answered with an error
            log.error("ClickHouse query failed: %s", exc)
            raise Unavailable(f"ClickHouse query failed: {_first_line(exc)}") from exc

    def command(self, sql: str, parameters: Mapping[str, Any]) -> None:
        """Run a statement that returns nothing (an INSERT ... SELECT with bound parameters)."""
        try:
            self._connect().command(sql, parameters=dict(parameters))
        except (OperationalError, OSError) as exc:
            self.reset()
            raise Unavailable(
                f"ClickHouse at {self._settings.clickhouse_url} is unreachable: {_first_line(exc)}"
            ) from exc
        except ClickHouseError as exc:
            log.error("ClickHouse statement failed: %s", exc)
            raise Unavailable(f"ClickHouse statement failed: {_first_line(exc)}") from exc

    def check(self) -> str | None:
        """None when ClickHouse answers and the API's tables exist, else why not."""
        try:
            found = self.rows(
                "SELECT count() FROM system.tables WHERE database = currentDatabase()"
                " AND name IN {tables:Array(String)}",
                {"tables": list(API_TABLES)},
            )
        except Unavailable as exc:
            return str(exc)
        if int(found[0][0]) != len(API_TABLES):
            return (
                f"database {self._settings.clickhouse_database} lacks the API's tables;"
                " run `llm-usage migrate`"
            )
        return None

    def reset(self) -> None:
        """Drop the client so the next query reconnects (after ClickHouse comes back)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken pool must never mask the real error
                log.debug("closing the ClickHouse client failed", exc_info=True)


_REASONS = (
    "Connection refused",
    "timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "Connection reset",
    "Authentication failed",
)


def _first_line(exc: BaseException) -> str:
    """A short, readable reason: a known network cause, else the error's first line."""
    text = str(exc).strip()
    for reason in _REASONS:
        if reason.lower() in text.lower():
            return reason.lower()
    return text.splitlines()[0][:300] if text else type(exc).__name__
