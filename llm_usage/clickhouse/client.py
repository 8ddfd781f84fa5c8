"""One way to open a ClickHouse connection, so every component talks to it alike."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from llm_usage.settings import Settings

# Applied to every query when LLM_USAGE_CLICKHOUSE_CLUSTER is set (see deploy/README.md):
# - a JOIN or IN whose both sides are Distributed tables (records joined with source_names)
#   is refused by ClickHouse's default ('deny'); 'global' computes the right side once on
#   the initiator and ships it to the shards, which is always correct;
# - inserts into a Distributed table return only once every shard has written its part, so
#   an acknowledged batch is really stored (the worker commits Kafka offsets after that),
#   and a replayed batch reaches the same shards with the same dedup token.
CLUSTER_QUERY_SETTINGS: dict[str, Any] = {
    "distributed_product_mode": "global",
    "distributed_foreground_insert": 1,
}


def client_options(settings: Settings, *, database: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``clickhouse_connect.get_client`` for these settings."""
    options: dict[str, Any] = {
        "host": settings.clickhouse_host,
        "port": settings.clickhouse_port,
        "secure": settings.clickhouse_secure,
        "username": settings.clickhouse_user,
        "password": settings.clickhouse_password,
        "database": settings.clickhouse_database if database is None else database,
    }
    if settings.clickhouse_secure:
        options["verify"] = settings.clickhouse_verify
        if settings.clickhouse_ca_cert:
            options["ca_cert"] = settings.clickhouse_ca_cert
    if settings.clickhouse_cluster:
        options["settings"] = dict(CLUSTER_QUERY_SETTINGS)
    return options


def connect(
    settings: Settings,
    *,
    database: str | None = None,
    query_settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Client:
    """A clickhouse-connect HTTP(S) client for the configured server.

    ``database=""`` connects without selecting a database (used before it exists). TLS is
    on when the URL is ``https://`` (certificate verified unless
    ``LLM_USAGE_CLICKHOUSE_VERIFY=false``; ``LLM_USAGE_CLICKHOUSE_CA_CERT`` for a private
    CA). In cluster mode the settings in :data:`CLUSTER_QUERY_SETTINGS` apply to every
    query; ``query_settings`` (ClickHouse settings for every query) are merged over them.
    Other keyword arguments go to ``clickhouse_connect.get_client``.
    """
    options = client_options(settings, database=database)
    if query_settings:
        options["settings"] = {**options.get("settings", {}), **query_settings}
    options.update(kwargs)
    return clickhouse_connect.get_client(**options)
