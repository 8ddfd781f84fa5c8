"""Numbered, forward-only SQL migrations from ``clickhouse/migrations``.

Each ``NNNN_name.sql`` file is applied once, in order, and recorded in
``<database>.schema_migrations`` with its checksum. An applied file must never change: add a
new one instead (a changed checksum is an error).

Files are ``string.Template`` templates (write ``$$`` for a literal ``$``). From the settings:
``${database}``, ``${raw_retention_days}``, ``${dedup_window}``. For the two schema
layouts, one set of files serves both:

=================  ==============================  ==========================================
placeholder        single node (cluster empty)     cluster (``LLM_USAGE_CLICKHOUSE_CLUSTER``)
=================  ==============================  ==========================================
``${on_cluster}``  nothing                         ``ON CLUSTER 'name'``
``${replicated}``  nothing                         ``Replicated`` (engine prefix)
``${local}``       nothing                         ``_local`` (suffix of storage tables)
``${cluster}``     (cluster-only statements only)  ``'name'`` (for ``Distributed(...)``)
=================  ==============================  ==========================================

A statement preceded by a line ``-- @cluster-only`` runs in cluster mode only: that is how
each storage table gets its ``Distributed`` table, under the name queries use. Rules for a
migration that must work in both layouts (checked by :func:`cluster_problems` before a
cluster-mode migration runs, and by the unit tests for every file):

* every DDL statement carries ``${on_cluster}``;
* a MergeTree-family table is a storage table: ``${database}.name${local}`` with
  ``ENGINE = ${replicated}XxxMergeTree``, followed by a ``-- @cluster-only``
  ``CREATE TABLE ${database}.name ${on_cluster} AS ${database}.name_local
  ENGINE = Distributed(${cluster}, ${database}, name_local, <sharding key>)``;
* materialized views read from and write to ``...${local}`` tables (they fire on the shard
  that received the insert);
* ``ALTER TABLE`` targets ``name${local}`` (indexes, projections, TTL, mutations); a
  column change also alters the Distributed table (in a ``-- @cluster-only`` statement);
  a materialized view is changed in place with ``ALTER TABLE name_mv MODIFY QUERY``.

Queries and inserts always use the plain names (``usage_events`` ...): the table itself on
one node, the Distributed table on a cluster. Why and how: ``deploy/README.md``.
Print the SQL of either layout with
``python -m llm_usage.clickhouse [--cluster NAME]``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from clickhouse_connect.driver.client import Client

from llm_usage.clickhouse.client import connect
from llm_usage.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "clickhouse" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_CLUSTER_ONLY_LINE = re.compile(r"^[ \t]*-- @cluster-only[ \t]*$", re.MULTILINE)
_CLUSTER_ONLY = "/*@cluster-only*/"  # what the marker line becomes while splitting
LOCAL_SUFFIX = "_local"


class MigrationError(RuntimeError):
    """A migration file is malformed, was edited after being applied, or failed."""


@dataclass(frozen=True)
class Layout:
    """How the templates are rendered: one node, or a cluster of shards and replicas.

    ``replicated`` and ``on_cluster`` exist for tests that build a cluster without
    ClickHouse Keeper (several plain servers, DDL sent to each): production cluster mode
    always has both.
    """

    cluster: str = ""
    replicated: bool = True
    on_cluster: bool = True

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        """Replicated and ON CLUSTER, unless the settings list the shards (no Keeper: plain
        MergeTree storage tables on each shard, DDL sent to each by :class:`FanOut`)."""
        if settings.shard_urls:
            return cls(cluster=settings.clickhouse_cluster, replicated=False, on_cluster=False)
        return cls(cluster=settings.clickhouse_cluster)

    @property
    def clustered(self) -> bool:
        return bool(self.cluster)

    @property
    def on_cluster_clause(self) -> str:
        return f"ON CLUSTER '{self.cluster}'" if self.clustered and self.on_cluster else ""

    def variables(self, settings: Settings) -> dict[str, object]:
        return {
            "database": settings.clickhouse_database,
            "raw_retention_days": settings.raw_retention_days,
            "dedup_window": settings.dedup_window,
            "on_cluster": self.on_cluster_clause,
            "replicated": "Replicated" if self.clustered and self.replicated else "",
            "local": LOCAL_SUFFIX if self.clustered else "",
            "cluster": f"'{self.cluster}'",
        }

    def local_name(self, table: str) -> str:
        """Name of the table that stores the rows of ``table`` (itself on one node)."""
        return f"{table}{LOCAL_SUFFIX}" if self.clustered else table


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def statements(self, settings: Settings, layout: Layout | None = None) -> list[str]:
        """The file's statements rendered for ``layout`` (default: from the settings)."""
        return render(self.path.read_text(), settings, layout, name=self.path.name)


def render(
    text: str, settings: Settings, layout: Layout | None = None, *, name: str = "<sql>"
) -> list[str]:
    """Substitute the placeholders and split; drop ``-- @cluster-only`` statements on one node."""
    layout = layout or Layout.of(settings)
    try:
        sql = Template(text).substitute(layout.variables(settings))
    except (KeyError, ValueError) as exc:
        raise MigrationError(f"{name}: bad placeholder {exc} (see the migrations module)") from exc
    sql = _CLUSTER_ONLY_LINE.sub(_CLUSTER_ONLY, sql)
    statements = []
    for statement in split_statements(sql):
        cluster_only = statement.startswith(_CLUSTER_ONLY)
        statement = statement.removeprefix(_CLUSTER_ONLY).strip()
        if _CLUSTER_ONLY in statement:
            raise MigrationError(f"{name}: '-- @cluster-only' must come before a statement")
        if statement and (layout.clustered or not cluster_only):
            statements.append(statement)
    return statements


_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE|EXCHANGE)\b", re.IGNORECASE)
_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w`.]+)", re.IGNORECASE
)
_ALTER_TABLE = re.compile(r"^\s*ALTER\s+TABLE\s+([\w`.]+)", re.IGNORECASE)
_MERGETREE = re.compile(r"\bENGINE\s*=\s*(\w*)MergeTree\b", re.IGNORECASE)
_DISTRIBUTED = re.compile(r"\bENGINE\s*=\s*Distributed\s*\(([^)]*)\)", re.IGNORECASE)


def _table(qualified: str) -> str:
    return qualified.replace("`", "").rsplit(".", 1)[-1]


def cluster_problems(statements: list[str], layout: Layout) -> list[str]:
    """What in a migration's cluster-mode statements breaks the rules in the module doc."""
    if not layout.clustered:
        return []
    problems: list[str] = []
    local_tables: list[str] = []
    distributed_over: set[str] = set()
    for number, statement in enumerate(statements, 1):
        head = f"statement {number} ({' '.join(statement.split())[:60]}...)"
        if layout.on_cluster and _DDL.match(statement) and "ON CLUSTER" not in statement:
            problems.append(f"{head}: DDL without ${{on_cluster}}")
        engine = _MERGETREE.search(statement)
        created = _CREATE_TABLE.match(statement)
        if engine:
            if layout.replicated and not engine.group(1).lower().startswith("replicated"):
                problems.append(f"{head}: MergeTree engine without the ${{replicated}} prefix")
            if created and not _table(created.group(1)).endswith(LOCAL_SUFFIX):
                problems.append(f"{head}: storage table not named <name>${{local}}")
            elif created:
                local_tables.append(_table(created.group(1)))
        distributed = _DISTRIBUTED.search(statement)
        if distributed:
            args = [a.strip().strip("'`\"") for a in distributed.group(1).split(",")]
            if len(args) >= 3:
                distributed_over.add(args[2])
        altered = _ALTER_TABLE.match(statement)
        if (
            altered
            and not _table(altered.group(1)).endswith(LOCAL_SUFFIX)
            and not re.search(r"\bCOLUMN\b", statement, re.IGNORECASE)
            and not re.search(r"\bMODIFY\s+QUERY\b", statement, re.IGNORECASE)  # a view
        ):
            problems.append(f"{head}: ALTER of a Distributed table; alter <name>${{local}}")
    for table in local_tables:
        if table not in distributed_over:
            problems.append(f"storage table {table} has no '-- @cluster-only' Distributed table")
    return problems


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


def bookkeeping_statements(settings: Settings, layout: Layout | None = None) -> list[str]:
    """Create the database and ``schema_migrations`` (on every node in cluster mode).

    On a cluster, ``schema_migrations`` is one ReplicatedMergeTree whose replicas are all
    the nodes of all shards (its Keeper path has no ``{shard}``), so whichever node the
    next ``llm-usage migrate`` talks to knows what ran.
    """
    layout = layout or Layout.of(settings)
    database = settings.clickhouse_database
    on_cluster = layout.on_cluster_clause
    engine = "MergeTree"
    if layout.clustered and layout.replicated:
        engine = (
            "ReplicatedMergeTree('/clickhouse/llm_usage/{database}/schema_migrations',"
            " '{shard}-{replica}')"
        )
    return [
        f"CREATE DATABASE IF NOT EXISTS `{database}` {on_cluster}".strip(),
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations {on_cluster} ("
        " version UInt32 COMMENT 'Number of the migration file',"
        " name String COMMENT 'Name of the migration file',"
        " checksum String COMMENT 'sha256 of the file as applied',"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        f") ENGINE = {engine} ORDER BY version"
        " COMMENT 'Migrations applied by llm-usage migrate'",
    ]


def _check_cluster(client: Client, layout: Layout) -> None:
    """Fail early, and clearly, when the server does not know the configured cluster."""
    if not layout.clustered or "{" in layout.cluster:  # a macro: the server expands it
        return
    known = client.command(
        "SELECT count() FROM system.clusters WHERE cluster = {c:String}",
        parameters={"c": layout.cluster},
    )
    if not known:
        raise MigrationError(
            f"LLM_USAGE_CLICKHOUSE_CLUSTER={layout.cluster!r} is not a cluster of this server "
            "(SELECT DISTINCT cluster FROM system.clusters); leave it empty for one node"
        )


def _ensure_bookkeeping(client: Client, settings: Settings, layout: Layout) -> None:
    _check_cluster(client, layout)
    for statement in bookkeeping_statements(settings, layout):
        client.command(statement)


def _applied(client: Client, database: str) -> dict[int, str]:
    rows = client.query(f"SELECT version, checksum FROM `{database}`.schema_migrations").result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def pending_migrations(
    client: Client, settings: Settings, layout: Layout | None = None
) -> list[Migration]:
    layout = layout or Layout.of(settings)
    _ensure_bookkeeping(client, settings, layout)
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


def apply_migrations(
    client: Client, settings: Settings, layout: Layout | None = None
) -> list[Migration]:
    """Apply every pending migration in order; return the ones applied (idempotent)."""
    layout = layout or Layout.of(settings)
    applied = []
    for migration in pending_migrations(client, settings, layout):
        statements = migration.statements(settings, layout)
        problems = cluster_problems(statements, layout)
        if problems:
            raise MigrationError(
                f"{migration.path.name} cannot run in cluster mode: " + "; ".join(problems)
            )
        for statement in statements:
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


def apply_retention(client: Client, settings: Settings, layout: Layout | None = None) -> bool:
    """Keep the TTL of ``usage_events`` equal to ``raw_retention_days``; True if changed.

    The TTL is a setting, not a migration: changing ``LLM_USAGE_RAW_RETENTION_DAYS`` and
    running ``llm-usage migrate`` again updates it without rewriting existing parts. On a
    cluster it is the TTL of ``usage_events_local``, changed ON CLUSTER.
    """
    layout = layout or Layout.of(settings)
    table = layout.local_name("usage_events")
    days = settings.raw_retention_days
    engine_full = client.command(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": settings.clickhouse_database, "t": table},
    )
    if f"toIntervalDay({days})" in str(engine_full):
        return False
    client.command(
        f"ALTER TABLE `{settings.clickhouse_database}`.{table} {layout.on_cluster_clause} "
        f"MODIFY TTL toDateTime(occurred_at) + INTERVAL {int(days)} DAY",
        settings={"materialize_ttl_after_modify": 0},
    )
    return True


class FanOut:
    """What ``ON CLUSTER`` does, for shards without Keeper: DDL on every shard, in turn.

    Everything else (the migration ledger, backfill ``INSERT ... SELECT`` through the
    Distributed tables) goes to the first shard only, as it would on one node of a cluster.
    """

    _DDL = ("CREATE", "ALTER", "DROP", "RENAME")

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients

    def command(self, sql: str, **kwargs: Any) -> Any:
        if sql.lstrip().upper().startswith(self._DDL):
            results = [client.command(sql, **kwargs) for client in self.clients]
            return results[0]
        return self.clients[0].command(sql, **kwargs)

    def query(self, sql: str, **kwargs: Any) -> Any:
        return self.clients[0].query(sql, **kwargs)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self.clients[0].insert(*args, **kwargs)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def admin_client(settings: Settings) -> Client:
    """A client for schema changes, without a database selected: one node, or a
    :class:`FanOut` over every shard of ``clickhouse_shard_urls``."""
    urls = settings.shard_urls
    if not urls:
        return connect(settings, database="")
    if not settings.clickhouse_cluster:
        raise MigrationError("LLM_USAGE_CLICKHOUSE_SHARD_URLS needs LLM_USAGE_CLICKHOUSE_CLUSTER")
    clients = [
        connect(settings.model_copy(update={"clickhouse_url": u}), database="") for u in urls
    ]
    return FanOut(clients)  # type: ignore[return-value]  # the part of Client migrations use


def migrate(settings: Settings) -> tuple[list[Migration], bool]:
    """``llm-usage migrate``: pending migrations, then the raw TTL, for the settings' layout
    (one node, a cluster ON CLUSTER, or the shards listed in the settings). Returns the
    migrations applied and whether the TTL changed."""
    client = admin_client(settings)
    try:
        applied = apply_migrations(client, settings)
        return applied, apply_retention(client, settings)
    finally:
        client.close()


def drop_database(settings: Settings) -> None:
    """Drop the settings' database on every node (tests, benchmarks)."""
    client = admin_client(settings)
    try:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
    finally:
        client.close()
