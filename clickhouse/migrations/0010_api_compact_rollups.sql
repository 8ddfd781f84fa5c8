-- Compact rollups for the query API: per tenant and source only (no source_id, no model), so a
-- 30-day dashboard reads a few thousand rows however many conversations a tenant has.
-- usage_api_15m has 15-minute UTC slots: every time zone offset in use is a multiple of
-- 15 minutes, so a local hour or day in any zone (+05:30, +05:45, +08:45, -03:30, DST days)
-- is a whole number of slots, and only a window's own partial edges need the raw table.
-- usage_api_daily holds whole UTC days, for the middle of long windows.
-- Read both with plain sum() (SimpleAggregateFunction columns, exact before merges).
CREATE TABLE IF NOT EXISTS ${database}.usage_api_15m${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    slot DateTime('UTC') COMMENT 'Start of the 15-minute UTC slot',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Number of API calls',
    error_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls with status = error',
    unpriced_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls whose model was not in the price book',
    input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of input_tokens',
    output_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of output_tokens',
    cache_creation_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache writes (5m + 1h)',
    cache_read_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache reads',
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Exact USD cost',
    duration_ms SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of call durations (ms)'
)
ENGINE = ${replicated}AggregatingMergeTree
PARTITION BY toYYYYMM(slot)
ORDER BY (tenant_id, slot, source)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: 15-minute UTC slots per tenant and source';

-- @cluster-only
-- Cluster mode only (see llm_usage/clickhouse/migrations.py): the table queries and inserts
-- use, spread over the shards by cityHash64(tenant_id, source).
CREATE TABLE IF NOT EXISTS ${database}.usage_api_15m ${on_cluster}
AS ${database}.usage_api_15m_local
ENGINE = Distributed(${cluster}, ${database}, usage_api_15m_local, cityHash64(tenant_id, source))
COMMENT 'Query API rollup, 15-minute slots (Distributed over usage_api_15m_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_api_15m_mv ${on_cluster}
TO ${database}.usage_api_15m${local} AS
SELECT
    tenant_id,
    toStartOfFifteenMinutes(occurred_at) AS slot,
    source,
    count() AS calls,
    countIf(status = 'error') AS error_calls,
    countIf(NOT priced) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cost_usd) AS cost_usd,
    sum(duration_ms) AS duration_ms
FROM ${database}.usage_events${local}
GROUP BY tenant_id, slot, source;

CREATE TABLE IF NOT EXISTS ${database}.usage_api_daily${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    day Date COMMENT 'UTC calendar day',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Number of API calls',
    error_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls with status = error',
    unpriced_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls whose model was not in the price book',
    input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of input_tokens',
    output_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of output_tokens',
    cache_creation_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache writes (5m + 1h)',
    cache_read_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache reads',
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Exact USD cost',
    duration_ms SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of call durations (ms)'
)
ENGINE = ${replicated}AggregatingMergeTree
PARTITION BY toYear(day)
ORDER BY (tenant_id, day, source)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: UTC days per tenant and source';

-- @cluster-only
-- Cluster mode only (see llm_usage/clickhouse/migrations.py): the table queries and inserts
-- use, spread over the shards by cityHash64(tenant_id, source).
CREATE TABLE IF NOT EXISTS ${database}.usage_api_daily ${on_cluster}
AS ${database}.usage_api_daily_local
ENGINE = Distributed(${cluster}, ${database}, usage_api_daily_local, cityHash64(tenant_id, source))
COMMENT 'Query API rollup, UTC days (Distributed over usage_api_daily_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_api_daily_mv ${on_cluster}
TO ${database}.usage_api_daily${local} AS
SELECT
    tenant_id,
    toDate(occurred_at) AS day,
    source,
    count() AS calls,
    countIf(status = 'error') AS error_calls,
    countIf(NOT priced) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cost_usd) AS cost_usd,
    sum(duration_ms) AS duration_ms
FROM ${database}.usage_events${local}
GROUP BY tenant_id, day, source;

-- Backfill rows written before the views existed. Apply this migration before the worker
-- first writes (as `make run` and deploys do); with a worker writing concurrently, a batch
-- that lands between a view's creation and this statement would be counted twice.
INSERT INTO ${database}.usage_api_15m
SELECT
    tenant_id, toStartOfFifteenMinutes(occurred_at) AS slot, source,
    count(), countIf(status = 'error'), countIf(NOT priced), sum(input_tokens),
    sum(output_tokens), sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(cost_usd), sum(duration_ms)
FROM ${database}.usage_events
GROUP BY tenant_id, slot, source;

INSERT INTO ${database}.usage_api_daily
SELECT
    tenant_id, toDate(occurred_at) AS day, source,
    count(), countIf(status = 'error'), countIf(NOT priced), sum(input_tokens),
    sum(output_tokens), sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(cost_usd), sum(duration_ms)
FROM ${database}.usage_events
GROUP BY tenant_id, day, source;
