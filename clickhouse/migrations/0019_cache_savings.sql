-- Prompt-cache savings (issue "Attribution by any dimension": what prompt caching saved).
-- Per call, the worker's quote (stream_processor/pricing/book.py) gives, at exactly the
-- rates its cost used (model, price version of the day, tier, inference geo, long context):
--   cache_read_savings_usd  = cache reads x (input price - cache-read price): what the
--                             reads saved against the same tokens sent at the input price;
--   cache_write_premium_usd = 5m writes x (5m write price - input price)
--                             + 1h writes x (1h write price - input price): what the
--                             writes cost on top of the input price.
-- Both are 0 for an unpriced call. They depend on each call's own rates, so they are stored
-- per call and summed by the rollups the API's per-model questions read (summary, by-model:
-- the per-model, per-entity and per-attribute rollups and usage_hourly / usage_daily), never
-- derived from aggregates.
-- Calls stored before this migration read 0 in both (and so do the rollup rows written
-- before it) until `llm-usage reprice` runs: a reprice stages every call whose savings
-- differ from its quote (even when its cost does not) and fills the raw table and every
-- rollup exactly, as it does for costs. reprice_values carries the two new values.
-- Views are replaced in place (MODIFY QUERY, every existing column kept as it was), so no
-- insert is missed between two statements; a worker of the previous release writing
-- meanwhile stores 0 in both (the columns' default), which a reprice fills as well.
ALTER TABLE ${database}.usage_events${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd Decimal(38, 12) DEFAULT 0 COMMENT 'USD the cache reads saved: cache_read_input_tokens x (input price - cache-read price) at the rates of the call; 0 if unpriced or stored before migration 0019 (until a reprice)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd Decimal(38, 12) DEFAULT 0 COMMENT 'USD the cache writes cost above the input price: 5m writes x (5m write - input price) + 1h writes x (1h write - input price); 0 if unpriced or stored before migration 0019 (until a reprice)';

-- @cluster-only
ALTER TABLE ${database}.usage_events ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd Decimal(38, 12) DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd Decimal(38, 12) DEFAULT 0;

ALTER TABLE ${database}.reprice_values${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd Decimal(38, 12) DEFAULT 0 COMMENT 'cache_read_savings_usd after',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd Decimal(38, 12) DEFAULT 0 COMMENT 'cache_write_premium_usd after';

-- @cluster-only
ALTER TABLE ${database}.reprice_values ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd Decimal(38, 12) DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd Decimal(38, 12) DEFAULT 0;

ALTER TABLE ${database}.usage_hourly${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_hourly ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, hour, source, source_id, model, price_tier;

ALTER TABLE ${database}.usage_daily${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_daily ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, day, source, source_id, model, price_tier;

ALTER TABLE ${database}.usage_entities_15m${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_entities_15m ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_entities_15m_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, slot, source, source_id, model, price_tier;

ALTER TABLE ${database}.usage_api_models_15m${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_api_models_15m ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_api_models_15m_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, slot, source, model, price_tier;

ALTER TABLE ${database}.usage_api_models_daily${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_api_models_daily ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_api_models_daily_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, day, source, model, price_tier;

ALTER TABLE ${database}.usage_api_models_1m${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_api_models_1m ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_api_models_1m_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
GROUP BY tenant_id, minute, source, model, price_tier;

ALTER TABLE ${database}.usage_attributes_15m${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_attributes_15m ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_attributes_15m_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
ARRAY JOIN mapKeys(attributes) AS attr_key, mapValues(attributes) AS attr_value
GROUP BY tenant_id, attr_key, attr_value, slot, source, model, price_tier;

ALTER TABLE ${database}.usage_attributes_daily${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_read_savings_usd (0 for rows written before migration 0019)',
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12)) COMMENT 'Sum of cache_write_premium_usd (0 for rows written before migration 0019)';

-- @cluster-only
ALTER TABLE ${database}.usage_attributes_daily ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_savings_usd SimpleAggregateFunction(sum, Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS cache_write_premium_usd SimpleAggregateFunction(sum, Decimal(38, 12));

ALTER TABLE ${database}.usage_attributes_daily_mv ${on_cluster} MODIFY QUERY
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
    sum(tool_cost_usd) AS tool_cost_usd,
    sum(cache_read_savings_usd) AS cache_read_savings_usd,
    sum(cache_write_premium_usd) AS cache_write_premium_usd
FROM ${database}.usage_events${local}
ARRAY JOIN mapKeys(attributes) AS attr_key, mapValues(attributes) AS attr_value
GROUP BY tenant_id, attr_key, attr_value, day, source, model, price_tier;
