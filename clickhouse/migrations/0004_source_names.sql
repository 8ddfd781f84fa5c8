-- Latest known name of every conversation and agent. Filled from call events that carry a
-- name (materialized view below) and by the stream processor from rename events.
-- Latest name: SELECT argMax(source_name, named_at) FROM source_names WHERE ... GROUP BY ...
CREATE TABLE IF NOT EXISTS ${database}.source_names${local} ${on_cluster}
(
    tenant_id LowCardinality(String) COMMENT 'Tenant',
    source Enum8('chat' = 1, 'agent' = 2, 'memory' = 3) COMMENT 'chat, agent or memory',
    source_id String COMMENT 'Conversation or agent id',
    source_name String COMMENT 'Conversation title or agent name',
    named_at DateTime64(3, 'UTC') COMMENT 'When this name was seen (call time or rename time)',
    INDEX idx_name lower(source_name) TYPE ngrambf_v1(3, 4096, 2, 0) GRANULARITY 1
)
ENGINE = ${replicated}ReplacingMergeTree(named_at)
ORDER BY (tenant_id, source, source_id)
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Latest name per (tenant, source, source_id); read with argMax(source_name, named_at)';

-- @cluster-only
-- Cluster mode only: the table that queries and inserts use, spread over the shards by
-- cityHash64(tenant_id, source_id): a conversation or agent, its rollup rows and its names
-- live on one shard.
CREATE TABLE IF NOT EXISTS ${database}.source_names ${on_cluster}
AS ${database}.source_names_local
ENGINE = Distributed(${cluster}, ${database}, source_names_local, cityHash64(tenant_id, source_id))
COMMENT 'Latest names (Distributed over source_names_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.source_names_mv ${on_cluster}
TO ${database}.source_names${local} AS
SELECT
    tenant_id,
    source,
    source_id,
    argMax(name, occurred_at) AS source_name,
    max(occurred_at) AS named_at
FROM
(
    SELECT tenant_id, source, source_id, source_name AS name, occurred_at
    FROM ${database}.usage_events${local}
    WHERE source_name != ''
)
GROUP BY tenant_id, source, source_id;
