-- `llm-usage reprice`: stored calls repriced with the current book, rollups included.
-- reprice_runs is the ledger (one row per run and step, latest state wins); reprice_values
-- holds the new prices of the run's changed calls (with the old ones, for the deltas and the
-- audit). See stream_processor/reprice/ and README "Reprice stored calls".
CREATE TABLE IF NOT EXISTS ${database}.reprice_runs${local} ${on_cluster}
(
    run_id String COMMENT 'One reprice run (resumed under the same id after a crash)',
    step String COMMENT 'planned, staged, delta:<rollup>, raw or finished',
    tenant_id String COMMENT 'Selected tenant, empty for all',
    models Array(String) COMMENT 'Selected canonical models, empty for all',
    from_day Nullable(Date) COMMENT 'First selected UTC day (inclusive)',
    to_day Nullable(Date) COMMENT 'Last selected UTC day (inclusive)',
    since Nullable(DateTime64(3, 'UTC')) COMMENT 'Catch-up pass: only calls ingested from here',
    book String COMMENT 'Fingerprint of the price book and overrides used',
    calls UInt64 COMMENT 'Calls whose price changed',
    old_cost_usd Decimal(38, 12) COMMENT 'Their cost before',
    new_cost_usd Decimal(38, 12) COMMENT 'Their cost after',
    at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When the step was recorded'
)
ENGINE = ${replicated}MergeTree
ORDER BY (run_id, step)
COMMENT 'Ledger of reprice runs: a step is recorded after it completed';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.reprice_runs ${on_cluster}
AS ${database}.reprice_runs_local
ENGINE = Distributed(${cluster}, ${database}, reprice_runs_local, cityHash64(run_id))
COMMENT 'Ledger of reprice runs (Distributed over reprice_runs_local)';

CREATE TABLE IF NOT EXISTS ${database}.reprice_values${local} ${on_cluster}
(
    run_id String COMMENT 'Reprice run',
    event_id UUID COMMENT 'The call',
    tenant_id LowCardinality(String) COMMENT 'Tenant of the call',
    occurred_at DateTime64(3, 'UTC') COMMENT 'When the call was made',
    model LowCardinality(String) COMMENT 'Canonical model',
    old_cost_usd Decimal(38, 12) COMMENT 'cost_usd before',
    cost_usd Decimal(38, 12) COMMENT 'cost_usd after',
    tool_cost_usd Decimal(38, 12) COMMENT 'tool_cost_usd after',
    priced Bool COMMENT 'priced after',
    price_version LowCardinality(String) COMMENT 'price_version after'
)
ENGINE = ${replicated}MergeTree
ORDER BY (run_id, event_id)
COMMENT 'New prices of the calls a reprice run changes (deleted when the run finished)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.reprice_values ${on_cluster}
AS ${database}.reprice_values_local
ENGINE = Distributed(${cluster}, ${database}, reprice_values_local, cityHash64(run_id))
COMMENT 'New prices of repriced calls (Distributed over reprice_values_local)';
