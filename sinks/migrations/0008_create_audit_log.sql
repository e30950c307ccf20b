-- up
-- Audit of every analyst query through `amb serve` and `amb query` (amb/serve.py): who (identity
-- and kind), when, on which surface (catalogue, metric, incidents, sql, cli, audit), what (the SQL
-- text as sent, or the metric with its parameters as JSON), how many rows went back, and whether
-- it was refused and why. Append-only: nothing in the platform updates or deletes it; retention
-- is the data controller's decision (ALTER TABLE audit_log DROP PARTITION YYYYMM).
-- request_id is a fresh UUID per query, so no two rows are identical and no insert is dropped.
CREATE TABLE IF NOT EXISTS audit_log
(
    at DateTime64(3, 'UTC'),
    identity LowCardinality(String),
    kind LowCardinality(String),
    surface LowCardinality(String),
    query String,
    params String,
    rows UInt64,
    refused Bool,
    reason String,
    status UInt16,
    duration_ms UInt32,
    remote String,
    request_id String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, identity)
COMMENT 'Every analyst query (amb serve, amb query): identity, time, surface, query or metric and parameters, rows returned, refused or not';

-- down
DROP TABLE IF EXISTS audit_log;
