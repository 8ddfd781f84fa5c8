-- Ledger of the stream processor's inserts: each batch's Kafka offset range is recorded
-- here BEFORE its rows are inserted into usage_events. After a crash or a rebalance the
-- worker re-forms exactly these batches, so a replayed batch carries the same
-- insert_deduplication_token and ClickHouse drops it in usage_events and in every rollup.
CREATE TABLE IF NOT EXISTS ${database}.processor_batches${local} ${on_cluster}
(
    cluster_id String COMMENT 'Kafka cluster id: offsets restart when a cluster or topic is new',
    topic String COMMENT 'Source topic of the batch',
    partition UInt32 COMMENT 'Source partition of the batch',
    first_offset UInt64 COMMENT 'Offset of the first Kafka message in the batch',
    last_offset UInt64 COMMENT 'Offset of the last Kafka message in the batch (inclusive)',
    messages UInt32 COMMENT 'Kafka messages in the range',
    rows UInt32 COMMENT 'usage_events rows the batch inserts',
    dedup_token String COMMENT 'insert_deduplication_token of the insert',
    worker String COMMENT 'host:pid of the worker that formed the batch',
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When the range was recorded'
)
ENGINE = ${replicated}ReplacingMergeTree(recorded_at)
ORDER BY (cluster_id, topic, partition, first_offset)
TTL toDateTime(recorded_at) + INTERVAL 30 DAY
COMMENT 'Offset ranges of the stream processor inserts, recorded before each insert';

-- @cluster-only
-- Cluster mode only: the table the worker reads and writes (synchronously, see the sink).
CREATE TABLE IF NOT EXISTS ${database}.processor_batches ${on_cluster}
AS ${database}.processor_batches_local
ENGINE = Distributed(${cluster}, ${database}, processor_batches_local, cityHash64(cluster_id, topic, partition))
COMMENT 'Offset ranges of the stream processor inserts (Distributed over processor_batches_local)';
