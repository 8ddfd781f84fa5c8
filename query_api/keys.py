"""API keys with a tenant and scopes, stored hashed in ClickHouse (``api_keys``).

A key looks like ``llmu_<key_id>_<secret>``: ``key_id`` is public (it names the key in
``llm-usage keys list`` and finds its row), the secret is 192 random bits of which only a
SHA-256 is stored. A slow password hash buys nothing for a secret that cannot be guessed,
and would cost every request. Keys of ``LLM_USAGE_API_KEYS`` (local use) have every scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from llm_usage.settings import Settings

PREFIX = "llmu_"
_KEY = re.compile(r"^llmu_([0-9a-f]{16})_([A-Za-z0-9_-]{32})$")


class Scope(StrEnum):
    """What a key may do: ``read`` the dashboard API, ``ingest`` events, ``admin`` keys."""

    READ = "read"
    INGEST = "ingest"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret."""

    key_id: str
    tenant_id: str
    scopes: frozenset[Scope]
    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant the key decides, and what the key may do."""

    tenant_id: str
    scopes: frozenset[Scope]
    key_id: str  # "env" for a key of LLM_USAGE_API_KEYS


def parse_scopes(values: Sequence[str]) -> frozenset[Scope]:
    """``["read", "ingest"]`` (or ``["read,ingest"]``) as scopes; ValueError names a bad one."""
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    unknown = sorted({n for n in names if n not in Scope.__members__.values()})
    if unknown:
        raise ValueError(
            f"unknown scope {', '.join(unknown)}: choose from {', '.join(s.value for s in Scope)}"
        )
    if not names:
        raise ValueError("a key needs at least one scope")
    return frozenset(Scope(n) for n in names)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed stored key, else None."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


class Rows(Protocol):
    """What the store needs of a ClickHouse connection (``query_api.db.ClickHouse`` or
    :class:`ClientRows` over a clickhouse-connect client)."""

    def rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]: ...

    def command(self, sql: str, parameters: dict[str, Any]) -> None: ...


class ClientRows:
    """:class:`Rows` over a plain clickhouse-connect client (the CLI, tests)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        result: Sequence[Sequence[Any]] = self.client.query(sql, parameters=parameters).result_rows
        return result

    def command(self, sql: str, parameters: dict[str, Any]) -> None:
        self.client.command(sql, parameters=parameters)


_COLUMNS = "key_id, tenant_id, scopes, name, created_at, revoked_at"
_LATEST = f"SELECT {_COLUMNS}, secret_sha256 FROM api_keys FINAL"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _key_of(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        key_id=row[0],
        tenant_id=row[1],
        scopes=frozenset(Scope(s) for s in row[2] if s in Scope.__members__.values()),
        name=row[3],
        created_at=_utc(row[4]),
        revoked_at=None if row[5] is None else _utc(row[5]),
    )


class KeyStore:
    """Create, list, revoke and look up keys; every query has bound parameters."""

    def __init__(self, db: Rows) -> None:
        self.db = db

    def create(
        self, tenant_id: str, scopes: frozenset[Scope], name: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key; returns it with the plain key, which is shown once and never stored."""
        if not tenant_id.strip():
            raise ValueError("a key needs a tenant")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        values = {
            "key_id": key_id,
            "hash": hash_secret(secret),
            "tenant": tenant_id,
            "scopes": sorted(scopes),
            "name": name,
            "now": now,
        }
        self.db.command(
            "INSERT INTO api_keys (key_id, secret_sha256, tenant_id, scopes, name, created_at,"
            " revoked_at, version) SELECT {key_id:String}, {hash:String}, {tenant:String},"
            " {scopes:Array(String)}, {name:String}, {now:DateTime64(3, 'UTC')}, NULL, 1",
            values,
        )
        key = ApiKey(key_id, tenant_id, scopes, name, now)
        return key, f"{PREFIX}{key_id}_{secret}"

    def list(self, tenant_id: str | None = None) -> list[ApiKey]:
        rows = self.db.rows(
            f"{_LATEST} WHERE {{tenant:String}} = '' OR tenant_id = {{tenant:String}}"
            " ORDER BY created_at, key_id",
            {"tenant": tenant_id or ""},
        )
        return [_key_of(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke ``key_id`` (idempotent); None when no such key exists."""
        found = self._latest(key_id)
        if found is None:
            return None
        key, _ = found
        if key.revoked_at is not None:
            return key
        now = datetime.now(UTC)
        self.db.command(
            "INSERT INTO api_keys (key_id, secret_sha256, tenant_id, scopes, name, created_at,"
            " revoked_at, version) SELECT key_id, secret_sha256, tenant_id, scopes, name,"
            " created_at, {now:DateTime64(3, 'UTC')}, version + 1"
            " FROM api_keys FINAL WHERE key_id = {key_id:String}",
            {"key_id": key_id, "now": now},
        )
        return ApiKey(key.key_id, key.tenant_id, key.scopes, key.name, key.created_at, now)

    def verify(self, key: str) -> ApiKey | None:
        """The active stored key that ``key`` is, else None (secret compared in constant time)."""
        parts = split_key(key)
        if parts is None:
            return None
        found = self._latest(parts[0])
        if found is None:
            return None
        stored, digest = found
        if not hmac.compare_digest(digest, hash_secret(parts[1])) or not stored.active:
            return None
        return stored

    def _latest(self, key_id: str) -> tuple[ApiKey, str] | None:
        rows = self.db.rows(f"{_LATEST} WHERE key_id = {{key_id:String}}", {"key_id": key_id})
        return (_key_of(rows[0]), str(rows[0][6])) if rows else None


class Authenticator:
    """Key -> :class:`Principal`: keys of ``LLM_USAGE_API_KEYS`` first, then the store.

    A stored key's answer (found or not) is cached for ``api_key_cache_s`` seconds, so a
    request does not cost a ClickHouse query and a revocation takes effect within that time.
    """

    def __init__(
        self,
        settings: Settings,
        store: KeyStore | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env_keys = settings.api_key_tenants
        self.store = store
        self.ttl = settings.api_key_cache_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Principal | Literal[False] | None:
        """The answer without any I/O: a Principal, None (refused), or False when only the
        store can tell (call :meth:`principal` then, off the event loop)."""
        tenant = None
        for candidate, owner in self.env_keys.items():  # every key compared: constant time
            if hmac.compare_digest(candidate.encode(), key.encode()):
                tenant = owner
        if tenant is not None:
            return Principal(tenant, frozenset(Scope), "env")
        if self.store is None or split_key(key) is None:
            return None
        with self._lock:
            cached = self._cache.get(hash_secret(key))
        if cached is not None and self.clock() - cached[0] < self.ttl:
            return cached[1]
        return False

    def principal(self, key: str) -> Principal | None:
        """Raises ``query_api.db.Unavailable`` when the store cannot be asked and nothing is
        cached."""
        known = self.cached(key)
        if known is not False:
            return known
        assert self.store is not None  # cached() answers when there is no store
        now = self.clock()
        stored = self.store.verify(key)
        found = Principal(stored.tenant_id, stored.scopes, stored.key_id) if stored else None
        with self._lock:
            if len(self._cache) > 10_000:  # unbounded junk keys must not grow memory
                self._cache.clear()
            self._cache[hash_secret(key)] = (now, found)
        return found
