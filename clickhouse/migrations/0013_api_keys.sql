-- API keys of `llm-usage keys create|list|revoke` (query_api/keys.py). Only a SHA-256 of
-- each key's secret is stored: a key is 192 random bits, so a fast hash cannot be brute
-- forced, and a leaked table grants nothing. A revocation is a new row of the same key_id
-- with a later `version`; the latest row of a key wins (ReplacingMergeTree, read with FINAL).
CREATE TABLE IF NOT EXISTS ${database}.api_keys${local} ${on_cluster}
(
    key_id String COMMENT 'Public id, also the prefix of the key (llmu_<key_id>_<secret>)',
    secret_sha256 String COMMENT 'Hex SHA-256 of the secret part; never the key',
    tenant_id String COMMENT 'The tenant this key reads and writes',
    scopes Array(LowCardinality(String)) COMMENT 'read, ingest and/or admin',
    name String COMMENT 'What the key is for (free text)',
    created_at DateTime64(3, 'UTC') COMMENT 'When the key was created',
    revoked_at Nullable(DateTime64(3, 'UTC')) COMMENT 'When it was revoked; NULL while valid',
    version UInt64 COMMENT 'Latest row wins: creation 1, revocation 2'
)
ENGINE = ${replicated}ReplacingMergeTree(version)
ORDER BY key_id
COMMENT 'API keys (hashed) with tenant and scopes; latest version of a key_id wins';

-- @cluster-only
CREATE TABLE IF NOT EXISTS ${database}.api_keys ${on_cluster}
AS ${database}.api_keys_local
ENGINE = Distributed(${cluster}, ${database}, api_keys_local, cityHash64(key_id))
COMMENT 'API keys (Distributed over api_keys_local)';
