-- up
-- Crash-safe loading (sinks/loader.py). The loader first writes each batch's signed changes here,
-- in ONE insert (one part: all or nothing), under a fresh load_id with the block's row count in
-- every row; then it copies the staged rows into <kind>_changes (whose materialised views feed
-- the rollups) and the +1 rows into <kind>_facts, with tokens derived from the load_id; then it
-- empties the staging (the commit point). A complete staged load found at the next start was
-- interrupted: the loader re-sends exactly that block with the same tokens (every table that has
-- it drops it, every table that missed it gets it) BEFORE reading the store for anything new. So
-- a crash at any point, then a replay cut into any batches, applies each change exactly once.
CREATE TABLE IF NOT EXISTS incident_changes_staged
(
    load_id String,
    rows UInt32,
    seq UInt32,
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
    last_event_ms Int64
)
ENGINE = MergeTree
ORDER BY (load_id, seq)
COMMENT 'Signed incident changes of loads in progress not yet committed: the exact block to re-send after a crash';

CREATE TABLE IF NOT EXISTS handover_changes_staged
(
    load_id String,
    rows UInt32,
    seq UInt32,
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
    geo_status LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (load_id, seq)
COMMENT 'Signed handover changes of loads not yet committed';

CREATE TABLE IF NOT EXISTS call_changes_staged
(
    load_id String,
    rows UInt32,
    seq UInt32,
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
    geo_status LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (load_id, seq)
COMMENT 'Signed NHS 111 call changes of loads not yet committed';

-- down
DROP TABLE IF EXISTS call_changes_staged;
DROP TABLE IF EXISTS handover_changes_staged;
DROP TABLE IF EXISTS incident_changes_staged;
