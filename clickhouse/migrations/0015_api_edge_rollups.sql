-- Finer rollups for the edges of the query API's windows. A rolling window starts and ends
-- at any millisecond; what lies between its edge and the next whole slot used to be read
-- from usage_events (up to 15 minutes, or an hour for per-entity questions), on every
-- request, since the query API caches only settled whole hours. With these, the raw table
-- is read for less than a minute at each edge (compact questions) or less than 15 minutes
-- (per conversation or agent: the top list and name searches).
-- Both live as long as the raw rows (raw_retention_days); read them with plain sum(). They
-- are read a few minutes at a time, so their granules are small (1,024 rows, not 8,192).
CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_1m${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    minute DateTime('UTC') COMMENT 'Start of the UTC minute',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    model LowCardinality(String) COMMENT 'Normalised model name',
    price_tier LowCardinality(String) COMMENT 'standard, batch, fast or priority',
    calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Number of API calls',
    unpriced_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls whose model was not in the price book',
    input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of input_tokens',
    output_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of output_tokens',
    cache_creation_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache writes (5m + 1h)',
    cache_read_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache reads',
    web_search_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_search_requests',
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Exact USD cost',
    tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Of which server tools'
)
ENGINE = ${replicated}AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, minute, source, model, price_tier)
TTL minute + INTERVAL ${raw_retention_days} DAY
SETTINGS index_granularity = 1024,
    non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: UTC minutes per tenant, source, model and price tier (window edges)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_1m ${on_cluster}
AS ${database}.usage_api_models_1m_local
ENGINE = Distributed(${cluster}, ${database}, usage_api_models_1m_local, cityHash64(tenant_id, source))
COMMENT 'Query API per-model rollup, minutes (Distributed over usage_api_models_1m_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_api_models_1m_mv ${on_cluster}
TO ${database}.usage_api_models_1m${local} AS
SELECT
    tenant_id,
    toStartOfMinute(occurred_at) AS minute,
    source,
    model,
    price_tier,
    count() AS calls,
    countIf(NOT priced) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(toUInt64(web_search_requests)) AS web_search_requests,
    sum(cost_usd) AS cost_usd,
    sum(tool_cost_usd) AS tool_cost_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, minute, source, model, price_tier;

CREATE TABLE IF NOT EXISTS ${database}.usage_entities_15m${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    slot DateTime('UTC') COMMENT 'Start of the 15-minute UTC slot',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    source_id String COMMENT 'Conversation or agent id',
    model LowCardinality(String) COMMENT 'Normalised model name',
    price_tier LowCardinality(String) COMMENT 'standard, batch, fast or priority',
    calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Number of API calls',
    unpriced_calls SimpleAggregateFunction(sum, UInt64) COMMENT 'Calls whose model was not in the price book',
    input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of input_tokens',
    output_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of output_tokens',
    cache_creation_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache writes (5m + 1h)',
    cache_read_input_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of cache reads',
    web_search_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_search_requests',
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Exact USD cost',
    tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Of which server tools'
)
ENGINE = ${replicated}AggregatingMergeTree
PARTITION BY toYYYYMM(slot)
ORDER BY (tenant_id, slot, source, source_id, model, price_tier)
TTL slot + INTERVAL ${raw_retention_days} DAY
SETTINGS index_granularity = 1024,
    non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: 15-minute UTC slots per conversation or agent, model and price tier';

-- @cluster-only
-- Spread like usage_hourly: a conversation or agent and its rollup rows live on one shard.
CREATE TABLE IF NOT EXISTS ${database}.usage_entities_15m ${on_cluster}
AS ${database}.usage_entities_15m_local
ENGINE = Distributed(${cluster}, ${database}, usage_entities_15m_local, cityHash64(tenant_id, source_id))
COMMENT 'Query API per-entity rollup, 15-minute slots (Distributed over usage_entities_15m_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_entities_15m_mv ${on_cluster}
TO ${database}.usage_entities_15m${local} AS
SELECT
    tenant_id,
    toStartOfFifteenMinutes(occurred_at) AS slot,
    source,
    source_id,
    model,
    price_tier,
    count() AS calls,
    countIf(NOT priced) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(toUInt64(web_search_requests)) AS web_search_requests,
    sum(cost_usd) AS cost_usd,
    sum(tool_cost_usd) AS tool_cost_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, slot, source, source_id, model, price_tier;

-- Backfill rows written before the views existed (apply before the worker first writes,
-- as `make run` and deploys do; see 0010).
INSERT INTO ${database}.usage_api_models_1m
SELECT
    tenant_id, toStartOfMinute(occurred_at) AS minute, source, model, price_tier,
    count(), countIf(NOT priced), sum(input_tokens), sum(output_tokens),
    sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(toUInt64(web_search_requests)), sum(cost_usd), sum(tool_cost_usd)
FROM ${database}.usage_events
GROUP BY tenant_id, minute, source, model, price_tier;

INSERT INTO ${database}.usage_entities_15m
SELECT
    tenant_id, toStartOfFifteenMinutes(occurred_at) AS slot, source, source_id, model,
    price_tier, count(), countIf(NOT priced), sum(input_tokens), sum(output_tokens),
    sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(toUInt64(web_search_requests)), sum(cost_usd), sum(tool_cost_usd)
FROM ${database}.usage_events
GROUP BY tenant_id, slot, source, source_id, model, price_tier;
