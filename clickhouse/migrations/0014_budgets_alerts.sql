-- Budgets, alerts and webhooks (stream_processor/alerts, query_api/alerts_api.py), and the
-- ingest activity the alerter reads to know which hours changed since it last looked.
-- Configuration tables keep every change as a new row with a later `version`; the latest
-- row of a key wins (ReplacingMergeTree, read with FINAL or argMax), a deletion is a row
-- with deleted = 1.
CREATE TABLE IF NOT EXISTS ${database}.budgets${local} ${on_cluster}
(
    tenant_id String COMMENT 'Tenant the budget belongs to',
    budget_id String COMMENT 'Random id',
    name String COMMENT 'What the budget is for (free text)',
    source String COMMENT 'Empty: the whole tenant; else chat, agent or memory',
    source_id String COMMENT 'Empty: every entity of the source; else one conversation or agent',
    period LowCardinality(String) COMMENT 'day, month (calendar, in time_zone) or rolling_24h',
    time_zone String COMMENT 'IANA zone of calendar periods',
    limit_usd Decimal(38, 12) COMMENT 'The limit per period, USD',
    thresholds Array(UInt16) COMMENT 'Warning thresholds in percent of the limit',
    hard Bool COMMENT 'Producers with budget_guard refuse calls once it is used up',
    created_at DateTime64(3, 'UTC') COMMENT 'When the budget was created',
    updated_at DateTime64(3, 'UTC') COMMENT 'When this version was written',
    deleted Bool COMMENT 'true: the budget was deleted',
    version UInt64 COMMENT 'Latest row wins'
)
ENGINE = ${replicated}ReplacingMergeTree(version)
ORDER BY (tenant_id, budget_id)
COMMENT 'Budgets per tenant, source or entity; latest version of a budget_id wins';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.budgets ${on_cluster}
AS ${database}.budgets_local
ENGINE = Distributed(${cluster}, ${database}, budgets_local, cityHash64(tenant_id))
COMMENT 'Budgets (Distributed over budgets_local)';

CREATE TABLE IF NOT EXISTS ${database}.alerts${local} ${on_cluster}
(
    tenant_id String COMMENT 'Tenant the alert belongs to',
    alert_id String COMMENT 'Deterministic id of the breach (the idempotency key of deliveries)',
    kind LowCardinality(String) COMMENT 'spike_started, spike_ended or budget_threshold',
    scope LowCardinality(String) COMMENT 'tenant, source or entity',
    source String COMMENT 'chat, agent, memory, or empty for the tenant',
    source_id String COMMENT 'Conversation or agent id, or empty',
    source_name String COMMENT 'Latest name of the entity when the alert was raised',
    budget_id String COMMENT 'The budget of a budget alert, else empty',
    threshold_pct UInt16 COMMENT 'The threshold crossed (budget alerts), else 0',
    window_start DateTime64(3, 'UTC') COMMENT 'Start of the hour or budget period judged',
    window_end DateTime64(3, 'UTC') COMMENT 'End of the hour or budget period judged',
    observed_cost_usd Decimal(38, 12) COMMENT 'Cost in the window (the spike hour, or the period so far)',
    observed_calls UInt64 COMMENT 'Calls in the window',
    baseline_cost_usd Decimal(38, 12) COMMENT 'Median cost of a normal hour (spikes), or the limit (budgets)',
    baseline_calls Float64 COMMENT 'Median calls of a normal hour (spikes), else 0',
    message String COMMENT 'One line for people',
    raised_at DateTime64(3, 'UTC') COMMENT 'When the alerter raised it',
    cleared_at Nullable(DateTime64(3, 'UTC')) COMMENT 'Rolling budgets: when spend fell below the threshold again',
    version UInt64 COMMENT 'Latest row wins (a clearance is version 2)'
)
ENGINE = ${replicated}ReplacingMergeTree(version)
ORDER BY (tenant_id, alert_id)
COMMENT 'Spike and budget alerts, one row per breach (latest version wins)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.alerts ${on_cluster}
AS ${database}.alerts_local
ENGINE = Distributed(${cluster}, ${database}, alerts_local, cityHash64(tenant_id))
COMMENT 'Alerts (Distributed over alerts_local)';

CREATE TABLE IF NOT EXISTS ${database}.webhooks${local} ${on_cluster}
(
    tenant_id String COMMENT 'Tenant whose alerts are delivered',
    webhook_id String COMMENT 'Random id',
    url String COMMENT 'Where alerts are POSTed',
    secret String COMMENT 'HMAC-SHA256 key of the signature header (the sender needs it in clear)',
    created_at DateTime64(3, 'UTC') COMMENT 'When the webhook was created',
    deleted Bool COMMENT 'true: the webhook was deleted',
    version UInt64 COMMENT 'Latest row wins'
)
ENGINE = ${replicated}ReplacingMergeTree(version)
ORDER BY (tenant_id, webhook_id)
COMMENT 'Per-tenant alert webhooks; latest version of a webhook_id wins';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.webhooks ${on_cluster}
AS ${database}.webhooks_local
ENGINE = Distributed(${cluster}, ${database}, webhooks_local, cityHash64(tenant_id))
COMMENT 'Webhooks (Distributed over webhooks_local)';

CREATE TABLE IF NOT EXISTS ${database}.alert_deliveries${local} ${on_cluster}
(
    tenant_id String COMMENT 'Tenant of the alert',
    alert_id String COMMENT 'The alert delivered',
    alert_version UInt64 COMMENT 'Which version of it',
    webhook_id String COMMENT 'Where to',
    attempts UInt32 COMMENT 'HTTP attempts it took',
    status UInt16 COMMENT 'HTTP status of the last attempt (0: no answer)',
    delivered Bool COMMENT 'false: gave up after the last retry',
    finished_at DateTime64(3, 'UTC') COMMENT 'When the last attempt ended'
)
ENGINE = ${replicated}ReplacingMergeTree(finished_at)
ORDER BY (tenant_id, alert_id, alert_version, webhook_id)
COMMENT 'Outcome of each alert delivery to each webhook (at least once)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.alert_deliveries ${on_cluster}
AS ${database}.alert_deliveries_local
ENGINE = Distributed(${cluster}, ${database}, alert_deliveries_local, cityHash64(tenant_id))
COMMENT 'Alert deliveries (Distributed over alert_deliveries_local)';

-- Which (tenant, hour) received rows and when: the alerter re-judges exactly the hours that
-- changed since its last look (a backfill of a week marks a week, live traffic one hour).
-- Like every target of a view over usage_events it deduplicates inserts (DESIGN: a replayed
-- block is dropped in raw and in every view's target).
CREATE TABLE IF NOT EXISTS ${database}.ingest_activity${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    hour DateTime('UTC') COMMENT 'Event-time hour that received rows',
    last_ingested_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT 'Latest write into the hour',
    last_occurred_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT 'Latest event time in the hour'
)
ENGINE = ${replicated}AggregatingMergeTree
ORDER BY (tenant_id, hour)
TTL hour + INTERVAL ${raw_retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Last ingest time per tenant and event-time hour (fed by ingest_activity_mv)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.ingest_activity ${on_cluster}
AS ${database}.ingest_activity_local
ENGINE = Distributed(${cluster}, ${database}, ingest_activity_local, cityHash64(tenant_id))
COMMENT 'Ingest activity (Distributed over ingest_activity_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_activity_mv ${on_cluster}
TO ${database}.ingest_activity${local} AS
SELECT
    tenant_id,
    toStartOfHour(occurred_at) AS hour,
    max(ingested_at) AS last_ingested_at,
    max(occurred_at) AS last_occurred_at
FROM ${database}.usage_events${local}
GROUP BY tenant_id, hour;
