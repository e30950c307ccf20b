-- up
-- Incident facts: one row per incident version (domain/facts.py IncidentFact, same column names
-- and units: instants and durations in integer milliseconds, so sums are exact).
--
-- incident_changes is what the sink writes: for each new version a +1 row, and a -1 copy of the
-- version it replaces (sinks/loader.py). The pair is identical in every column, so it shares its
-- partition and sorting key: any filter keeps or drops both, sum(sign) is exact under any WHERE,
-- and VersionedCollapsingMergeTree cancels the pair in the background. This is why the period and
-- the geography may be in this table's keys although a later version may change them.
CREATE TABLE IF NOT EXISTS incident_changes
(
    trust LowCardinality(String),
    incident_id String,
    version UInt32,
    sign Int8,
    clock_start_ms Nullable(Int64),
    period_ms Int64,
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    category LowCardinality(Nullable(String)),
    source LowCardinality(Nullable(String)),
    disposition LowCardinality(Nullable(String)),
    open Bool,
    conveyed Bool,
    complete Bool,
    response_ms Nullable(Int64),
    response_negative Bool,
    destination_site LowCardinality(Nullable(String)),
    site LowCardinality(Nullable(String)),
    handover_duration_ms Nullable(Int64),
    handover_negative Bool,
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String),
    first_event_ms Int64,
    last_event_ms Int64,
    clock_start Nullable(DateTime64(3, 'UTC')) ALIAS fromUnixTimestamp64Milli(clock_start_ms),
    day Date ALIAS toDate(toDateTime(intDiv(day_ms, 1000), 'Europe/London')),
    month Date ALIAS toDate(toDateTime(intDiv(month_ms, 1000), 'Europe/London')),
    INDEX idx_day day_ms TYPE minmax GRANULARITY 1,
    INDEX idx_lsoa lsoa TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_msoa msoa TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_lad lad TYPE set(512) GRANULARITY 2,
    INDEX idx_sicbl sicbl TYPE set(256) GRANULARITY 2,
    INDEX idx_region region TYPE set(16) GRANULARITY 2,
    INDEX idx_trust trust TYPE set(16) GRANULARITY 2
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
PARTITION BY toYYYYMM(toDateTime(intDiv(month_ms, 1000), 'Europe/London'))
ORDER BY (icb, day_ms, lsoa, trust, incident_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed incident fact versions (+1 new, -1 replaced): sum(sign) counts current incidents under any filter';

-- The current version of each incident, for incident-level reads and for the sink's lookup of the
-- version a new one replaces. Sorted by identity only (domain/facts.py sink contract) and not
-- partitioned by time: a late clock start would move a version to another partition, where
-- ReplacingMergeTree would never meet, and FINAL would never drop, the old one.
CREATE TABLE IF NOT EXISTS incident_facts
(
    trust LowCardinality(String),
    incident_id String,
    version UInt32,
    clock_start_ms Nullable(Int64),
    period_ms Int64,
    hour_ms Int64,
    day_ms Int64,
    week_ms Int64,
    month_ms Int64,
    fy_ms Int64,
    category LowCardinality(Nullable(String)),
    source LowCardinality(Nullable(String)),
    disposition LowCardinality(Nullable(String)),
    open Bool,
    conveyed Bool,
    complete Bool,
    response_ms Nullable(Int64),
    response_negative Bool,
    destination_site LowCardinality(Nullable(String)),
    site LowCardinality(Nullable(String)),
    handover_duration_ms Nullable(Int64),
    handover_negative Bool,
    lsoa LowCardinality(String),
    msoa LowCardinality(String),
    lad LowCardinality(String),
    sicbl LowCardinality(String),
    icb LowCardinality(String),
    region LowCardinality(String),
    geo_status LowCardinality(String),
    first_event_ms Int64,
    last_event_ms Int64,
    clock_start Nullable(DateTime64(3, 'UTC')) ALIAS fromUnixTimestamp64Milli(clock_start_ms),
    day Date ALIAS toDate(toDateTime(intDiv(day_ms, 1000), 'Europe/London'))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (trust, incident_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Current incident facts (domain/facts.py IncidentFact): read with FINAL';

-- down
DROP TABLE IF EXISTS incident_facts;
DROP TABLE IF EXISTS incident_changes;
