"""The API's one ClickHouse connection: created lazily, shared by all request threads.

Lazily, so the API starts (and ``/readyz`` explains why it is not ready) while ClickHouse is
down; without a session id, so concurrent requests may share one HTTP connection pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
from urllib3.exceptions import HTTPError

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


# What :meth:`ClickHouse.stream` holds at a time (one read from ClickHouse's response).
STREAM_CHUNK_BYTES = 256 * 1024


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

    def stream(
        self,
        sql: str,
        parameters: Mapping[str, Any],
        *,
        settings: Mapping[str, Any] | None = None,
        chunk_bytes: int = STREAM_CHUNK_BYTES,
    ) -> Generator[bytes, None, None]:
        """The bytes of ``sql``'s result in its own ``FORMAT``, chunk by chunk as ClickHouse
        sends them: at most about ``chunk_bytes`` are held at a time, whatever the size.

        The query starts here, before this returns: when ClickHouse is unreachable or the
        query fails before its first chunk, :class:`Unavailable` is raised here (a 503, as
        for every other query). A failure later on raises :class:`Unavailable` from the
        iterator, and nothing of ClickHouse's error text is yielded: a response that has
        already begun must then be cut short, never completed (see ``query_api.exports``).
        Closing the iterator (or dropping it) closes the connection, which cancels the query.
        """
        try:
            response = self._connect().raw_stream(
                sql,
                parameters=dict(parameters),
                settings={
                    "max_execution_time": self._settings.api_query_timeout_s,
                    **(settings or {}),
                },
            )
        except (OperationalError, OSError) as exc:
            self.reset()
            raise Unavailable(
                f"ClickHouse at {self._settings.clickhouse_url} is unreachable: {_first_line(exc)}"
            ) from exc
        except ClickHouseError as exc:
            log.error("ClickHouse query failed: %s", exc)
            raise Unavailable(f"ClickHouse query failed: {_first_line(exc)}") from exc
        chunks = _checked_chunks(response, chunk_bytes)
        try:
            first = next(chunks, b"")
        except BaseException:
            chunks.close()
            raise
        return _prepend(first, chunks)

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


def _checked_chunks(response: Any, chunk_bytes: int) -> Generator[bytes, None, None]:
    """A streamed ClickHouse response's body; :class:`Unavailable` at the first sign of an
    error, with nothing of the error yielded.

    A query that fails after its first bytes were sent (HTTP 200 is out by then) makes
    ClickHouse write ``\\r\\n__exception__\\r\\n<tag>`` and the message into the body, where
    <tag> is the response's ``X-ClickHouse-Exception-Tag``, then break the connection. So
    the last ``len(marker) - 1`` bytes of every chunk are held back until the next chunk
    shows that no marker starts in them.
    """
    tag = response.headers.get("X-ClickHouse-Exception-Tag")
    # Servers without the tag (older versions) only break the connection: caught below.
    marker = b"__exception__\r\n" + tag.encode() if tag else b""
    keep = len(marker) - 1 if marker else 0
    held = b""
    chunks = iter(response.stream(chunk_bytes))
    try:
        for chunk in chunks:
            data = held + chunk
            found = data.find(marker) if marker else -1
            if found >= 0:
                message = _error_text(data[found + len(marker) :], chunks)
                log.error("ClickHouse query failed while streaming: %s", message)
                raise Unavailable(f"ClickHouse query failed: {_first_line(Exception(message))}")
            if len(data) > keep:
                yield data[:-keep] if keep else data
                held = data[-keep:] if keep else b""
            else:
                held = data
        if held:
            yield held
    except (HTTPError, OSError) as exc:  # the connection broke (or ClickHouse broke it)
        log.error("ClickHouse stream broke: %s", exc)
        raise Unavailable(f"ClickHouse stream broke: {_first_line(exc)}") from exc
    finally:
        response.close()
        response.release_conn()


def _error_text(start: bytes, rest: Iterator[bytes], limit: int = 16 * 1024) -> str:
    """The message after an exception marker: ``start`` and what follows, up to ``limit``
    bytes (ClickHouse breaks the connection after it)."""
    text = start
    try:
        for more in rest:
            text += more
            if len(text) >= limit:
                break
    except (HTTPError, OSError):
        pass
    return text[:limit].decode("utf-8", "replace").strip()


def _prepend(first: bytes, rest: Generator[bytes, None, None]) -> Generator[bytes, None, None]:
    """``first`` (if any), then ``rest``; closing this closes ``rest``."""
    try:
        if first:
            yield first
        yield from rest
    finally:
        rest.close()


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
