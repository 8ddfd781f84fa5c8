"""The one settings object of the pipeline.

Every process (producers, worker, API, CLI) reads its configuration from here, so an
operator sets one family of environment variables, all prefixed ``LLM_USAGE_``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.contract import ATTRIBUTE_KEY, ATTRIBUTE_KEY_RULE


class Settings(BaseSettings):
    """Configuration shared by every component; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="LLM_USAGE_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_calls: str = Field("llm-usage.calls", description="raw call events")
    topic_entities: str = Field("llm-usage.entities", description="rename events")
    topic_dead_letter: str = Field("llm-usage.dead-letter", description="rejected events")
    topic_alerts: str = Field("llm-usage.alerts", description="spike and budget alerts")
    topic_budget_status: str = Field(
        "llm-usage.budget-status", description="used-up hard budgets, for producers' guards"
    )
    topic_partitions: int = Field(6, ge=1, description="partitions of the calls topic")
    kafka_security_protocol: str = Field(
        "PLAINTEXT",
        pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="Kafka security protocol; see llm_usage.kafka.kafka_client_options",
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512",
        pattern=r"^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
        description="SASL mechanism",
    )
    kafka_sasl_username: str = Field("", description="SASL user (SASL_PLAINTEXT / SASL_SSL)")
    kafka_sasl_password: str = Field("", repr=False, description="SASL password")
    kafka_ssl_cafile: str = Field("", description="CA bundle of the brokers (empty: system CAs)")
    kafka_ssl_certfile: str = Field("", description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: str = Field("", description="client key (mutual TLS)")

    # --- ClickHouse --------------------------------------------------------------------
    clickhouse_url: str = Field("http://127.0.0.1:8123", description="ClickHouse HTTP(S) URL")
    clickhouse_database: str = Field(
        "llm_usage", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="database of our tables"
    )
    clickhouse_user: str = Field("default", description="ClickHouse user")
    clickhouse_password: str = Field("", repr=False, description="ClickHouse password")
    raw_retention_days: int = Field(
        400, ge=1, description="TTL of usage_events rows, in days after occurred_at"
    )
    dedup_window: int = Field(
        10_000, ge=1, description="non_replicated_deduplication_window of ingest tables"
    )
    clickhouse_cluster: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.{}-]*$",
        description="cluster name: Replicated + Distributed tables ON CLUSTER; empty = one node",
    )
    clickhouse_shard_urls: str = Field(
        "",
        description="HTTP URLs of every shard of a cluster without Keeper (the local sharded "
        "stack): migrate sends DDL to each; empty: DDL goes ON CLUSTER",
    )
    clickhouse_shards: int = Field(
        1, ge=1, le=8, description="local stack only: ClickHouse servers, one per shard"
    )
    clickhouse_tcp_port: int = Field(
        9000, ge=1, le=65535, description="local stack: native port of shard 1 (shard i: +i-1)"
    )
    clickhouse_verify: bool = Field(True, description="verify the server's TLS certificate")
    clickhouse_ca_cert: str = Field("", description="CA bundle for https (empty: system CAs)")

    # --- Local state -------------------------------------------------------------------
    home: Path = Field(Path(".llm-usage"), description="local state folder (stack data, spool)")

    # --- Producers (producers/) ---------------------------------------------------------
    topic_replication_factor: int = Field(
        1, ge=1, description="replication factor of topics created by ensure_topics"
    )
    producer_client_id: str = Field("llm-usage-producer", description="Kafka client id")
    producer_idempotence: str = Field(
        "auto",
        pattern=r"^(auto|on|off)$",
        description="idempotent producer: on | off | auto (falls back if the broker refuses)",
    )
    producer_compression: str = Field(
        "zstd",
        pattern=r"^(zstd|lz4|gzip|snappy|none)$",
        description="zstd: 17x on usage JSON at ~0.6 us/event (aiokafka's lz4 is level 9: 4 us)",
    )
    producer_batch_events: int = Field(
        200, ge=1, le=10_000, description="call events per Kafka message (JSON array)"
    )
    producer_batch_bytes: int = Field(
        256 * 1024, ge=4096, le=900_000, description="max bytes of one batched message value"
    )
    producer_linger_ms: int = Field(20, ge=0, description="wait this long to fill a batch")
    producer_buffer_events: int = Field(
        10_000, ge=1, description="in-memory buffer; beyond it events go to the spool"
    )
    producer_enqueue_timeout_ms: int = Field(
        50, ge=0, description="how long publish() may wait for buffer space before spooling"
    )
    producer_request_timeout_ms: int = Field(
        15_000, ge=500, description="a send not acked within this goes to the spool"
    )
    producer_retry_backoff_ms: int = Field(
        500, ge=10, description="first reconnect delay while offline (doubles up to 30 s)"
    )
    producer_spool_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="spool folder <home>/spool/<name>; one per publishing process",
    )
    producer_spool_max_bytes: int = Field(
        1 << 30, ge=1 << 20, description="spool size cap; events beyond it are dropped+logged"
    )
    producer_spool_fsync: bool = Field(
        False, description="fsync each spool write (survives power loss, costs throughput)"
    )
    producer_ensure_topics: bool = Field(
        True, description="create missing topics (topic_partitions) before publishing"
    )

    # --- Pricing (stream_processor/pricing/) ---------------------------------------------
    price_overrides: Path | None = Field(
        None,
        description="your own prices on top of the book (same JSON schema as prices.json): "
        "negotiated discounts, private or fine-tuned models; an overridden model is priced "
        "by this file alone",
    )

    # --- Stream processor (stream_processor/) -------------------------------------------
    processor_group: str = Field(
        "llm-usage-processor",
        description="consumer group of the calls topic; the Faust app (entities agent) "
        "uses this name with '-app' appended",
    )
    processor_batch_max_events: int = Field(
        20_000,
        ge=1,
        description="a ClickHouse insert holds at most this many rows of one partition "
        "(ClickHouse's cost per insert is mostly fixed: its views run once per insert)",
    )
    processor_batch_max_seconds: float = Field(
        1.0,
        gt=0,
        description="a buffered event waits this long before its insert is sent (up to twice "
        "as long while ClickHouse is busy with two others, for fewer, larger inserts)",
    )
    processor_dedupe_window_seconds: int = Field(
        3600, ge=60, description="how long an event_id is remembered for deduplication"
    )
    processor_default_tenant: str = Field(
        "", description="tenant_id given to events that lack one (empty: dead-letter them)"
    )
    processor_web_host: str = Field("127.0.0.1", description="bind address of /metrics, /health")
    processor_web_port: int = Field(
        6066, ge=0, le=65535, description="port of /metrics and /health (0: web disabled)"
    )
    processor_session_timeout_s: float = Field(
        30.0, gt=0, description="Kafka consumer session timeout (failure detection)"
    )
    processor_rebalance_timeout_s: float = Field(
        30.0, gt=0, description="Kafka rebalance timeout (first join waits about this long)"
    )
    processor_fetch_max_wait_ms: int = Field(
        500, ge=0, description="longest a fetch of the calls topic waits for new records"
    )
    processor_max_poll_interval_s: float = Field(
        300.0, gt=0, description="a worker stuck this long in one round leaves the group"
    )
    processor_retry_max_s: float = Field(
        30.0, gt=0, description="cap of the backoff between ClickHouse insert retries"
    )
    processor_log_level: str = Field("info", description="worker log level")

    # --- Query API (query_api/) ---------------------------------------------------------
    api_keys: str = Field("", description="comma-separated key:tenant pairs")
    api_host: str = Field("127.0.0.1", description="address `llm-usage api` binds")
    api_port: int = Field(8000, ge=1, le=65535, description="port `llm-usage api` binds")
    api_query_timeout_s: int = Field(
        30, ge=1, description="ClickHouse max_execution_time of one API query, in seconds"
    )
    api_export_timeout_s: int = Field(
        3600,
        ge=1,
        description="ClickHouse max_execution_time of one CSV export (records.csv), in seconds",
    )
    api_max_window_days: int = Field(
        400, ge=1, description="longest from/to window the API accepts (default: raw TTL)"
    )
    api_key_cache_s: float = Field(
        5.0, ge=0, description="a stored key's lookup is cached this long (revocation delay)"
    )
    api_cache_max_rows: int = Field(
        1_000_000,
        ge=0,
        description="rows of settled past-hour aggregates each API process keeps (0: no cache)",
    )
    api_cache_settle_s: float = Field(
        30.0,
        ge=0,
        description="hours written to more recently than this are queried, not cached",
    )

    # --- Ingest service (query_api/ingest/) -------------------------------------------
    ingest_host: str = Field("127.0.0.1", description="address `llm-usage ingest` binds")
    ingest_port: int = Field(4318, ge=1, le=65535, description="port (OTLP/HTTP's default)")
    ingest_max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="larger request bodies are refused with 413"
    )
    ingest_max_events: int = Field(
        10_000, ge=1, description="events (or spans) per request; more is refused with 413"
    )
    ingest_rate_events_per_s: float = Field(
        50_000.0, ge=0, description="per key and ingest process; above it 429 (0: no limit)"
    )
    ingest_rate_burst_s: float = Field(
        2.0, gt=0, description="a key may send this many seconds of its rate at once"
    )
    ingest_kafka_timeout_s: float = Field(
        10.0, gt=0, description="a request whose events Kafka has not acknowledged by then: 503"
    )
    ingest_otlp_mapping: Path | None = Field(
        None, description="JSON file overriding the OTLP span attribute mapping (README)"
    )

    # --- Alerter (stream_processor/alerts/) -------------------------------------------
    alert_interval_s: float = Field(
        15.0, gt=0, description="how often the alerter looks for new data and judges it"
    )
    alert_spike_sensitivity: float = Field(
        6.0, gt=0, description="robust standard deviations above normal that make a spike"
    )
    alert_spike_min_ratio: float = Field(
        3.0, ge=1, description="a spike hour is at least this multiple of a normal hour"
    )
    alert_spike_min_cost_usd: Decimal = Field(
        Decimal("2"), ge=0, description="an hour costing less never alerts (tiny entities)"
    )
    alert_spike_min_calls: int = Field(
        20, ge=1, description="a spike by call count needs at least this many calls"
    )
    alert_spike_attribute_keys: str = Field(
        "user,customer",
        description="attribute keys whose every value is judged for spikes against its own"
        " normal, comma-separated (empty: none)",
    )
    alert_webhook_timeout_s: float = Field(5.0, gt=0, description="one delivery attempt")
    alert_webhook_attempts: int = Field(8, ge=1, description="attempts before giving up")
    alert_webhook_backoff_s: float = Field(
        1.0, gt=0, description="first retry delay (doubles per attempt, capped at 5 min)"
    )
    budget_status_max_age_s: float = Field(
        300.0, gt=0, description="budget_guard lets calls through when its status is older"
    )

    @field_validator("alert_spike_attribute_keys")
    @classmethod
    def _attribute_keys(cls, value: str) -> str:
        for key in filter(None, (k.strip() for k in value.split(","))):
            if not ATTRIBUTE_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is no attribute key ({ATTRIBUTE_KEY_RULE})")
        return value

    @property
    def spike_attribute_keys(self) -> tuple[str, ...]:
        """The keys of ``alert_spike_attribute_keys``, each once, in order."""
        keys = (k.strip() for k in self.alert_spike_attribute_keys.split(","))
        return tuple(dict.fromkeys(k for k in keys if k))

    @field_validator("clickhouse_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must look like http://host:port or https://host:port")
        return value.rstrip("/")

    @field_validator("clickhouse_shard_urls")
    @classmethod
    def _shard_urls(cls, value: str) -> str:
        for url in filter(None, (u.strip() for u in value.split(","))):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r}: each shard URL must look like http://host:port")
        return value

    @property
    def shard_urls(self) -> list[str]:
        """The shards' HTTP URLs (``clickhouse_shard_urls``), empty when DDL goes ON CLUSTER."""
        return [u.strip().rstrip("/") for u in self.clickhouse_shard_urls.split(",") if u.strip()]

    @field_validator("api_keys")
    @classmethod
    def _keys_are_pairs(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            key, sep, tenant = pair.partition(":")
            if not sep or not key or not tenant:
                raise ValueError(f"expected key:tenant pairs, got {pair!r}")
        return value

    @property
    def api_key_tenants(self) -> dict[str, str]:
        """Map of API key -> tenant id parsed from ``api_keys``.

        A plain property, not a cached one: ``model_copy(update=...)`` would copy a stale cache.
        """
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
