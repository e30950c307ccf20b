-- up
-- NHS 111 call facts (domain/facts.py Call111Fact), keyed by (trust, call_id): the same design as
-- 0001, signed changes plus the current version per call, so the sink stores every fact kind the
-- worker sends. The calls_111 metrics read call_facts FINAL (no rollups yet).
CREATE TABLE IF NOT EXISTS call_changes
(
    trust LowCardinality(String),
    call_id String,
    version UInt32,
    sign Int8,
    call_time_ms Int64,
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    disposition_ambulance Nullable(Bool),
    linked_incident_id Nullable(String),
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String),
    INDEX idx_day day_ms TYPE minmax GRANULARITY 1,
    INDEX idx_lsoa lsoa TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
PARTITION BY toYYYYMM(toDateTime(intDiv(month_ms, 1000), 'Europe/London'))
ORDER BY (icb, day_ms, lsoa, trust, call_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed NHS 111 call fact versions (+1 new, -1 replaced)';

CREATE TABLE IF NOT EXISTS call_facts
(
    trust LowCardinality(String),
    call_id String,
    version UInt32,
    call_time_ms Int64,
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    disposition_ambulance Nullable(Bool),
    linked_incident_id Nullable(String),
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (trust, call_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Current NHS 111 call facts (domain/facts.py Call111Fact): read with FINAL';

-- down
DROP TABLE IF EXISTS call_facts;
DROP TABLE IF EXISTS call_changes;
