"""Numbered, forward-only SQL migrations from ``clickhouse/migrations``.

Each ``NNNN_name.sql`` file is applied once, in order, and recorded in
``<database>.schema_migrations`` with its checksum. Files are templates: ``${database}``,
``${raw_retention_days}`` and ``${dedup_window}`` come from the settings. An applied file
must never change: add a new one instead (a changed checksum is an error).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from clickhouse_connect.driver.client import Client

from llm_usage.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "clickhouse" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, was edited after being applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def statements(self, settings: Settings) -> list[str]:
        text = Template(self.path.read_text()).substitute(
            database=settings.clickhouse_database,
            raw_retention_days=settings.raw_retention_days,
            dedup_window=settings.dedup_window,
        )
        return split_statements(text)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside quotes and ``--`` comments; drop empty statements."""
    statements, current, quote, i = [], [], "", 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in ("'", '"', "`"):
            quote = ch
            current.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end == -1 else end
            continue
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def _ensure_bookkeeping(client: Client, database: str) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ("
        " version UInt32 COMMENT 'Number of the migration file',"
        " name String COMMENT 'Name of the migration file',"
        " checksum String COMMENT 'sha256 of the file as applied',"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = MergeTree ORDER BY version"
        " COMMENT 'Migrations applied by llm-usage migrate'"
    )


def _applied(client: Client, database: str) -> dict[int, str]:
    rows = client.query(f"SELECT version, checksum FROM `{database}`.schema_migrations").result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def pending_migrations(client: Client, settings: Settings) -> list[Migration]:
    _ensure_bookkeeping(client, settings.clickhouse_database)
    applied = _applied(client, settings.clickhouse_database)
    pending = []
    for migration in discover():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"{migration.path.name} changed after it was applied; migrations are "
                    "forward-only: revert the edit and add a new numbered file"
                )
            continue
        pending.append(migration)
    return pending


def apply_migrations(client: Client, settings: Settings) -> list[Migration]:
    """Apply every pending migration in order; return the ones applied (idempotent)."""
    applied = []
    for migration in pending_migrations(client, settings):
        for statement in migration.statements(settings):
            try:
                client.command(statement)
            except Exception as exc:  # the driver raises several types; keep the context
                raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
        client.insert(
            f"`{settings.clickhouse_database}`.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    return applied


def apply_retention(client: Client, settings: Settings) -> bool:
    """Keep the TTL of ``usage_events`` equal to ``raw_retention_days``; True if changed.

    The TTL is a setting, not a migration: changing ``LLM_USAGE_RAW_RETENTION_DAYS`` and
    running ``llm-usage migrate`` again updates it without rewriting existing parts.
    """
    days = settings.raw_retention_days
    engine_full = client.command(
        "SELECT engine_full FROM system.tables"
        " WHERE database = {db:String} AND name = 'usage_events'",
        parameters={"db": settings.clickhouse_database},
    )
    if f"toIntervalDay({days})" in str(engine_full):
        return False
    client.command(
        f"ALTER TABLE `{settings.clickhouse_database}`.usage_events "
        f"MODIFY TTL toDateTime(occurred_at) + INTERVAL {int(days)} DAY",
        settings={"materialize_ttl_after_modify": 0},
    )
    return True
