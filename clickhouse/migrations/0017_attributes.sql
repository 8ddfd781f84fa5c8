-- Attribution by any dimension (issue "Attribution by any dimension"): a call's attributes
-- (end user, customer, feature, environment, ...: keys ^[a-z][a-z0-9_.]{0,63}$$, string
-- values, at most 16 per call) on the raw table, and two rollups keyed by tenant, key and
-- value that the API groups and filters by, fed by the same exactly-once inserts as every
-- other rollup (and repriced like them: the reprice run finds every view over usage_events).
-- A call without attributes adds no rollup row: the API counts "no value" as the window's
-- total minus the groups. Built for about 100,000 values of one key a day: above that the
-- rollups grow with the values, every answer stays exact, only slower.
ALTER TABLE ${database}.usage_events${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS attributes Map(LowCardinality(String), String) COMMENT 'What the call is for, key -> value: user, customer, feature, environment, ...',
    ADD INDEX IF NOT EXISTS idx_attribute_values mapValues(attributes) TYPE bloom_filter(0.01) GRANULARITY 4;

-- @cluster-only
ALTER TABLE ${database}.usage_events ${on_cluster}
    ADD COLUMN IF NOT EXISTS attributes Map(LowCardinality(String), String);

-- 15-minute UTC slots (any time zone's hours and days are whole slots, see 0010) for the
-- edges and the recent part of a window; whole UTC days for its middle. Sorted by key and
-- value first: a filter on one value reads only that value's rows, a breakdown by a key
-- only that key's.
CREATE TABLE IF NOT EXISTS ${database}.usage_attributes_15m${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    attr_key LowCardinality(String) COMMENT 'Attribute key, e.g. user',
    attr_value String COMMENT 'Attribute value',
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
ORDER BY (tenant_id, attr_key, attr_value, slot, source, model, price_tier)
TTL slot + INTERVAL ${raw_retention_days} DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: 15-minute UTC slots per tenant, attribute key and value, source, model and price tier';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.usage_attributes_15m ${on_cluster}
AS ${database}.usage_attributes_15m_local
ENGINE = Distributed(${cluster}, ${database}, usage_attributes_15m_local, cityHash64(tenant_id, attr_key, attr_value))
COMMENT 'Query API attribute rollup, 15-minute slots (Distributed over usage_attributes_15m_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_attributes_15m_mv ${on_cluster}
TO ${database}.usage_attributes_15m${local} AS
SELECT
    tenant_id,
    attr_key,
    attr_value,
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
ARRAY JOIN mapKeys(attributes) AS attr_key, mapValues(attributes) AS attr_value
GROUP BY tenant_id, attr_key, attr_value, slot, source, model, price_tier;

CREATE TABLE IF NOT EXISTS ${database}.usage_attributes_daily${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    attr_key LowCardinality(String) COMMENT 'Attribute key, e.g. user',
    attr_value String COMMENT 'Attribute value',
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
ORDER BY (tenant_id, attr_key, attr_value, day, source, model, price_tier)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Query API rollup: UTC days per tenant, attribute key and value, source, model and price tier';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.usage_attributes_daily ${on_cluster}
AS ${database}.usage_attributes_daily_local
ENGINE = Distributed(${cluster}, ${database}, usage_attributes_daily_local, cityHash64(tenant_id, attr_key, attr_value))
COMMENT 'Query API attribute rollup, UTC days (Distributed over usage_attributes_daily_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.usage_attributes_daily_mv ${on_cluster}
TO ${database}.usage_attributes_daily${local} AS
SELECT
    tenant_id,
    attr_key,
    attr_value,
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
ARRAY JOIN mapKeys(attributes) AS attr_key, mapValues(attributes) AS attr_value
GROUP BY tenant_id, attr_key, attr_value, day, source, model, price_tier;
