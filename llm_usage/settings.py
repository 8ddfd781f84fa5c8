"""The one settings object of the pipeline.

Every process (producers, worker, API, CLI) reads its configuration from here, so an
operator sets one family of environment variables, all prefixed ``LLM_USAGE_``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by every component; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="LLM_USAGE_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_calls: str = Field("llm-usage.calls", description="raw call events")
    topic_entities: str = Field("llm-usage.entities", description="rename events")
    topic_dead_letter: str = Field("llm-usage.dead-letter", description="rejected events")
    topic_partitions: int = Field(6, ge=1, description="partitions of the calls topic")

    # --- ClickHouse --------------------------------------------------------------------
    clickhouse_url: str = Field("http://127.0.0.1:8123", description="ClickHouse HTTP(S) URL")
    clickhouse_database: str = Field("llm_usage", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    raw_retention_days: int = Field(
        400, ge=1, description="TTL of usage_events rows, in days after occurred_at"
    )
    dedup_window: int = Field(
        10_000, ge=1, description="non_replicated_deduplication_window of ingest tables"
    )

    # --- Local state -------------------------------------------------------------------
    home: Path = Field(Path(".llm-usage"), description="local state folder (stack data, spool)")

    # --- Producers (producers/) ---------------------------------------------------------

    # --- Stream processor (stream_processor/) -------------------------------------------

    # --- Query API (query_api/) ---------------------------------------------------------
    api_keys: str = Field("", description="comma-separated key:tenant pairs")

    @field_validator("clickhouse_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must look like http://host:port or https://host:port")
        return value.rstrip("/")

    @field_validator("api_keys")
    @classmethod
    def _keys_are_pairs(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            key, sep, tenant = pair.partition(":")
            if not sep or not key or not tenant:
                raise ValueError(f"expected key:tenant pairs, got {pair!r}")
        return value

    @cached_property
    def api_key_tenants(self) -> dict[str, str]:
        """Map of API key -> tenant id parsed from ``api_keys``."""
        pairs = (p.strip().partition(":") for p in self.api_keys.split(",") if p.strip())
        return {key: tenant for key, _, tenant in pairs}

    @property
    def clickhouse_host(self) -> str:
        return urlsplit(self.clickhouse_url).hostname or "127.0.0.1"

    @property
    def clickhouse_port(self) -> int:
        parts = urlsplit(self.clickhouse_url)
        return parts.port or (8443 if parts.scheme == "https" else 8123)

    @property
    def clickhouse_secure(self) -> bool:
        return urlsplit(self.clickhouse_url).scheme == "https"

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        """First bootstrap server as (host, port); the local stack listens there."""
        first = self.kafka_bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port or 9092)


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
