-- up
-- Handover facts (domain/facts.py HandoverFact): same design as 0001, signed changes plus the
-- current version per incident.
CREATE TABLE IF NOT EXISTS handover_changes
(
    trust LowCardinality(String),
    incident_id String,
    version UInt32,
    sign Int8,
    site LowCardinality(String),
    arrived_at_ms Int64,
    handover_at_ms Nullable(Int64),
    clear_at_ms Nullable(Int64),
    handover_duration_ms Nullable(Int64),
    clear_duration_ms Nullable(Int64),
    lost_ms Int64,
    disposition LowCardinality(Nullable(String)),
    category LowCardinality(Nullable(String)),
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String),
    day Date ALIAS toDate(toDateTime(intDiv(day_ms, 1000), 'Europe/London')),
    INDEX idx_day day_ms TYPE minmax GRANULARITY 1,
    INDEX idx_site site TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_lsoa lsoa TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_region region TYPE set(16) GRANULARITY 2,
    INDEX idx_trust trust TYPE set(16) GRANULARITY 2
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
PARTITION BY toYYYYMM(toDateTime(intDiv(month_ms, 1000), 'Europe/London'))
ORDER BY (icb, day_ms, site, trust, incident_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed handover fact versions (+1 new, -1 replaced)';

CREATE TABLE IF NOT EXISTS handover_facts
(
    trust LowCardinality(String),
    incident_id String,
    version UInt32,
    site LowCardinality(String),
    arrived_at_ms Int64,
    handover_at_ms Nullable(Int64),
    clear_at_ms Nullable(Int64),
    handover_duration_ms Nullable(Int64),
    clear_duration_ms Nullable(Int64),
    lost_ms Int64,
    disposition LowCardinality(Nullable(String)),
    category LowCardinality(Nullable(String)),
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String),
    day Date ALIAS toDate(toDateTime(intDiv(day_ms, 1000), 'Europe/London'))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (trust, incident_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Current handover facts (domain/facts.py HandoverFact): read with FINAL';

-- down
DROP TABLE IF EXISTS handover_facts;
DROP TABLE IF EXISTS handover_changes;
