-- The event ids each calls-topic partition wrote recently: the stream processor's dedupe
-- window starts from here when a worker takes a partition (stream_processor/dedupe.py), so
-- no Kafka changelog or Faust table has to be recovered first. Fed by the same inserts as
-- usage_events (the same insert_deduplication_token drops a replayed block here too), read
-- one partition and a window's worth of rows at a time, kept a week.
CREATE TABLE IF NOT EXISTS ${database}.processor_seen_ids${local} ${on_cluster}
(
    kafka_topic LowCardinality(String) COMMENT 'Kafka topic the event was read from',
    kafka_partition UInt32 COMMENT 'Kafka partition the event was read from',
    ingested_at DateTime64(3, 'UTC') COMMENT 'When the processor wrote the row',
    event_id UUID COMMENT 'The event id written'
)
ENGINE = ${replicated}MergeTree
PARTITION BY toYYYYMMDD(ingested_at)
ORDER BY (kafka_topic, kafka_partition, ingested_at)
TTL toDateTime(ingested_at) + INTERVAL 7 DAY
SETTINGS non_replicated_deduplication_window = ${dedup_window},
    replicated_deduplication_window = ${dedup_window}
COMMENT 'Event ids written per calls-topic partition (the processor dedupe window)';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.processor_seen_ids ${on_cluster}
AS ${database}.processor_seen_ids_local
ENGINE = Distributed(${cluster}, ${database}, processor_seen_ids_local, cityHash64(kafka_topic, kafka_partition))
COMMENT 'Event ids written per calls-topic partition (Distributed over processor_seen_ids_local)';

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.processor_seen_ids_mv ${on_cluster}
TO ${database}.processor_seen_ids${local} AS
SELECT kafka_topic, kafka_partition, ingested_at, event_id
FROM ${database}.usage_events${local};

-- What workers wrote before this migration, so that the first restart after it keeps
-- deduplicating (a row written twice here meanwhile is harmless: it is a set of ids).
INSERT INTO ${database}.processor_seen_ids
SELECT kafka_topic, kafka_partition, ingested_at, event_id
FROM ${database}.usage_events
WHERE ingested_at >= now64(3) - INTERVAL 7 DAY;
