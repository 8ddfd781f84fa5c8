-- Contract v2: every field of the SDK's Usage that changes the bill, the price tier of the
-- call, and its cost split into tokens and server tools (issue "Costs that match the
-- invoice"). Rows written before this migration read the defaults: standard tier, no tools,
-- token cost = cost. price_tier and token_cost_usd are computed by ClickHouse on insert
-- (MATERIALIZED: the worker does not send them, and a reprice that updates cost_usd and
-- tool_cost_usd cannot leave them behind). Stop the workers while this migration runs: a
-- batch written between a rollup's new key and its view's new query would miss its tier.
ALTER TABLE ${database}.usage_events${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT 'standard' COMMENT 'usage.service_tier as reported: standard, priority or batch',
    ADD COLUMN IF NOT EXISTS speed LowCardinality(String) DEFAULT 'standard' COMMENT 'usage.speed as reported: standard or fast',
    ADD COLUMN IF NOT EXISTS inference_geo LowCardinality(String) DEFAULT '' COMMENT 'usage.inference_geo as reported (us = US-only inference); empty if not reported',
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String) MATERIALIZED multiIf(service_tier = 'batch', 'batch', speed = 'fast', 'fast', service_tier = 'priority', 'priority', 'standard') COMMENT 'The price list of the call: batch, fast, priority or standard (billed at standard prices where the model has no batch or fast prices)',
    ADD COLUMN IF NOT EXISTS web_search_requests UInt32 DEFAULT 0 COMMENT 'usage.server_tool_use.web_search_requests',
    ADD COLUMN IF NOT EXISTS web_fetch_requests UInt32 DEFAULT 0 COMMENT 'usage.server_tool_use.web_fetch_requests (no fee of its own)',
    ADD COLUMN IF NOT EXISTS thinking_tokens UInt64 DEFAULT 0 COMMENT 'usage.output_tokens_details.thinking_tokens (part of output_tokens)',
    ADD COLUMN IF NOT EXISTS tool_cost_usd Decimal(38, 12) DEFAULT 0 COMMENT 'USD for server tools (web search fee)',
    ADD COLUMN IF NOT EXISTS token_cost_usd Decimal(38, 12) MATERIALIZED cost_usd - tool_cost_usd COMMENT 'USD for the tokens (input, output, cache writes and reads): cost_usd - tool_cost_usd';

-- @cluster-only
ALTER TABLE ${database}.usage_events ${on_cluster}
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT 'standard',
    ADD COLUMN IF NOT EXISTS speed LowCardinality(String) DEFAULT 'standard',
    ADD COLUMN IF NOT EXISTS inference_geo LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String) MATERIALIZED multiIf(service_tier = 'batch', 'batch', speed = 'fast', 'fast', service_tier = 'priority', 'priority', 'standard'),
    ADD COLUMN IF NOT EXISTS web_search_requests UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS web_fetch_requests UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS thinking_tokens UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS tool_cost_usd Decimal(38, 12) DEFAULT 0,
    ADD COLUMN IF NOT EXISTS token_cost_usd Decimal(38, 12) MATERIALIZED cost_usd - tool_cost_usd;

-- The hourly and daily rollups gain the price tier as a key column (rows from before this
-- migration have price_tier '') and the new sums; their views are replaced in place
-- (MODIFY QUERY), so no insert is ever missed between two statements.
ALTER TABLE ${database}.usage_hourly${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String) COMMENT 'standard, batch, fast or priority; empty for rows written before migration 0011',
    ADD COLUMN IF NOT EXISTS thinking_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of thinking_tokens',
    ADD COLUMN IF NOT EXISTS web_search_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_search_requests',
    ADD COLUMN IF NOT EXISTS web_fetch_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_fetch_requests',
    ADD COLUMN IF NOT EXISTS token_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) DEFAULT cost_usd COMMENT 'Sum of token_cost_usd',
    ADD COLUMN IF NOT EXISTS tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of tool_cost_usd',
    MODIFY ORDER BY (tenant_id, hour, source, source_id, model, price_tier);

-- @cluster-only
ALTER TABLE ${database}.usage_hourly ${on_cluster}
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String),
    ADD COLUMN IF NOT EXISTS thinking_tokens SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS web_search_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS web_fetch_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS token_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) DEFAULT cost_usd,
    ADD COLUMN IF NOT EXISTS tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_hourly_mv ${on_cluster} MODIFY QUERY
SELECT
    tenant_id,
    toStartOfHour(occurred_at) AS hour,
    source,
    source_id,
    model,
    price_tier,
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
    max(occurred_at) AS last_occurred_at,
    sum(thinking_tokens) AS thinking_tokens,
    sum(toUInt64(web_search_requests)) AS web_search_requests,
    sum(toUInt64(web_fetch_requests)) AS web_fetch_requests,
    sum(token_cost_usd) AS token_cost_usd,
    sum(tool_cost_usd) AS tool_cost_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, hour, source, source_id, model, price_tier;

ALTER TABLE ${database}.usage_daily${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String) COMMENT 'standard, batch, fast or priority; empty for rows written before migration 0011',
    ADD COLUMN IF NOT EXISTS thinking_tokens SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of thinking_tokens',
    ADD COLUMN IF NOT EXISTS web_search_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_search_requests',
    ADD COLUMN IF NOT EXISTS web_fetch_requests SimpleAggregateFunction(sum, UInt64) COMMENT 'Sum of web_fetch_requests',
    ADD COLUMN IF NOT EXISTS token_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) DEFAULT cost_usd COMMENT 'Sum of token_cost_usd',
    ADD COLUMN IF NOT EXISTS tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of tool_cost_usd',
    MODIFY ORDER BY (tenant_id, day, source, source_id, model, price_tier);

-- @cluster-only
ALTER TABLE ${database}.usage_daily ${on_cluster}
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String),
    ADD COLUMN IF NOT EXISTS thinking_tokens SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS web_search_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS web_fetch_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS token_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12)) DEFAULT cost_usd,
    ADD COLUMN IF NOT EXISTS tool_cost_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_daily_mv ${on_cluster} MODIFY QUERY
SELECT
    tenant_id,
    toDate(occurred_at) AS day,
    source,
    source_id,
    model,
    price_tier,
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
    max(occurred_at) AS last_occurred_at,
    sum(thinking_tokens) AS thinking_tokens,
    sum(toUInt64(web_search_requests)) AS web_search_requests,
    sum(toUInt64(web_fetch_requests)) AS web_fetch_requests,
    sum(token_cost_usd) AS token_cost_usd,
    sum(tool_cost_usd) AS tool_cost_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, day, source, source_id, model, price_tier;

-- Compact per-model rollups for the query API's cost by model (and tier) and the list of
-- unpriced models: per tenant, source, model and price tier, in 15-minute UTC slots (any
-- time zone's hours and days are whole slots, see 0010) and in whole UTC days.
CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_15m${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    slot DateTime('UTC') COMMENT 'Start of the 15-minute UTC slot',
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
PARTITION BY toYYYYMM(slot)
ORDER BY (tenant_id, slot, source, model, price_tier)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: 15-minute UTC slots per tenant, source, model and price tier';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_15m ${on_cluster}
AS ${database}.usage_api_models_15m_local
ENGINE = Distributed(${cluster}, ${database}, usage_api_models_15m_local, cityHash64(tenant_id, source))
COMMENT 'Query API per-model rollup, 15-minute slots (Distributed over usage_api_models_15m_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_api_models_15m_mv ${on_cluster}
TO ${database}.usage_api_models_15m${local} AS
SELECT
    tenant_id,
    toStartOfFifteenMinutes(occurred_at) AS slot,
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
GROUP BY tenant_id, slot, source, model, price_tier;

CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_daily${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    day Date COMMENT 'UTC calendar day',
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
PARTITION BY toYear(day)
ORDER BY (tenant_id, day, source, model, price_tier)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: UTC days per tenant, source, model and price tier';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.usage_api_models_daily ${on_cluster}
AS ${database}.usage_api_models_daily_local
ENGINE = Distributed(${cluster}, ${database}, usage_api_models_daily_local, cityHash64(tenant_id, source))
COMMENT 'Query API per-model rollup, UTC days (Distributed over usage_api_models_daily_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_api_models_daily_mv ${on_cluster}
TO ${database}.usage_api_models_daily${local} AS
SELECT
    tenant_id,
    toDate(occurred_at) AS day,
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
GROUP BY tenant_id, day, source, model, price_tier;

-- Backfill rows written before the views existed (with the workers stopped, as above). The
-- tokens make a re-run of a half-applied migration drop the repeat.
INSERT INTO ${database}.usage_api_models_15m
SETTINGS insert_deduplication_token = 'migration-0011-backfill-15m'
SELECT
    tenant_id, toStartOfFifteenMinutes(occurred_at) AS slot, source, model, price_tier,
    count(), countIf(NOT priced), sum(input_tokens), sum(output_tokens),
    sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(toUInt64(web_search_requests)), sum(cost_usd), sum(tool_cost_usd)
FROM ${database}.usage_events
GROUP BY tenant_id, slot, source, model, price_tier;

INSERT INTO ${database}.usage_api_models_daily
SETTINGS insert_deduplication_token = 'migration-0011-backfill-daily'
SELECT
    tenant_id, toDate(occurred_at) AS day, source, model, price_tier,
    count(), countIf(NOT priced), sum(input_tokens), sum(output_tokens),
    sum(cache_creation_input_tokens), sum(cache_read_input_tokens),
    sum(toUInt64(web_search_requests)), sum(cost_usd), sum(tool_cost_usd)
FROM ${database}.usage_events
GROUP BY tenant_id, day, source, model, price_tier;
