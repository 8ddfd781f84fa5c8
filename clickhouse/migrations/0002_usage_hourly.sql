-- Hourly rollup (UTC hours), fed on insert by a materialized view over usage_events.
-- Query it with plain sum()/max(): the columns are SimpleAggregateFunction, so
--   SELECT hour, sum(cost_usd) FROM usage_hourly WHERE tenant_id = 't1' GROUP BY hour
-- is exact even before background merges have collapsed the rows.
CREATE TABLE IF NOT EXISTS ${database}.usage_hourly${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    hour DateTime('UTC') COMMENT 'Start of the UTC hour',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    source_id String COMMENT 'Conversation or agent id',
    model LowCardinality(String) COMMENT 'Normalised model name',
    calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Number of API calls',
    error_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls with status = error',
    unpriced_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls whose model was not in the price book',
    input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of input_tokens',
    output_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of output_tokens',
    cache_creation_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache writes (5m + 1h)',
    cache_creation_5m_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of 5-minute cache writes',
    cache_creation_1h_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of 1-hour cache writes',
    cache_read_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache reads',
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Exact USD cost',
    duration_ms SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of call durations (ms)',
    last_occurred_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT 'Latest call in the bucket'
)
ENGINE = ${replicated}AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, source, source_id, model)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Hourly (UTC) rollup of usage_events per tenant, source, source_id and model';

-- @cluster-only
-- Cluster mode only: the table that queries and inserts use, spread over the shards by
-- cityHash64(tenant_id, source_id): a conversation or agent, its rollup rows and its names
-- live on one shard.
CREATE TABLE IF NOT EXISTS ${database}.usage_hourly ${on_cluster}
AS ${database}.usage_hourly_local
ENGINE = Distributed(${cluster}, ${database}, usage_hourly_local, cityHash64(tenant_id, source_id))
COMMENT 'Hourly (UTC) rollup (Distributed over usage_hourly_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_hourly_mv ${on_cluster}
TO ${database}.usage_hourly${local} AS
SELECT
    tenant_id,
    toStartOfHour(occurred_at) AS hour,
    source,
    source_id,
    model,
    count() AS calls,
    countIf(status = 'error') AS error_calls,
    countIf(NOT priced) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_creation_5m_input_tokens) AS cache_creation_5m_input_tokens,
    sum(cache_creation_1h_input_tokens) AS cache_creation_1h_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cost_usd) AS cost_usd,
    sum(duration_ms) AS duration_ms,
    max(occurred_at) AS last_occurred_at
FROM ${database}.usage_events${local}
GROUP BY tenant_id, hour, source, source_id, model;
