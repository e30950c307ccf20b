-- up
-- The raw archive in the store (issue 12): every accepted trust event exactly as consumed, so
-- `amb rebuild --from DATE` and `amb reconcile` recompute from ClickHouse itself, and the data-
-- quality scorecard reads lateness (kafka_ts_ms - event_time_ms) and corrections from it.
-- Deduplicated by event id: a re-sent or replayed event has the same (trust, incident_id,
-- event_id) sort key, so ReplacingMergeTree keeps one row (read with FINAL, or let the oracle
-- dedupe, as it does by event id). Partitioned by the event's month: a duplicate carries the same
-- event time, so it lands in the same partition and merges away. payload is the message value
-- byte for byte, so a rebuild re-decodes and re-validates it with the code as it is then.
-- Written by the process that owns the store (the sink); holds personal data (locations): not in
-- any analyst catalogue.
CREATE TABLE IF NOT EXISTS raw_events
(
    trust LowCardinality(String),
    incident_id String,
    event_id String,
    event_type LowCardinality(String),
    event_time_ms Int64 COMMENT 'When it happened (the event''s own time, epoch ms UTC)',
    kafka_ts_ms Int64 COMMENT 'The Kafka message timestamp: when the trust sent it (0 if none)',
    accepted_ms Int64 COMMENT 'The clock validation ran with, so a rebuild re-validates the same way',
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    key String,
    payload String COMMENT 'The message value as consumed, byte for byte',
    INDEX idx_event_time event_time_ms TYPE minmax GRANULARITY 1,
    INDEX idx_kafka_ts kafka_ts_ms TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(event_time_ms, 1000), 'Europe/London'))
ORDER BY (trust, incident_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Every accepted trust event as consumed (raw archive), one row per event id: read with FINAL';

-- Every dead letter (the <prefix>.dlq topic: amb.dlq.* headers, amb/dlq.py), one row per DLQ
-- message, so refusals by reason and by trust are queryable next to the figures they were left
-- out of. Keyed by the DLQ message's own position, so re-reading the DLQ changes nothing.
CREATE TABLE IF NOT EXISTS dead_letters
(
    dlq_partition UInt32,
    dlq_offset UInt64,
    trust LowCardinality(String) COMMENT 'The trust of the source events topic or message key; empty if unknown',
    reason LowCardinality(String) COMMENT 'First reason code (domain.validation.Code)',
    reasons String COMMENT 'Every reason code, ;-separated',
    message String,
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    dead_lettered_ms Int64,
    kafka_ts_ms Int64 COMMENT 'The source message''s Kafka timestamp if known, else the DLQ message''s',
    replays UInt16,
    key String,
    payload String COMMENT 'The refused message value, byte for byte'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(dead_lettered_ms, 1000), 'Europe/London'))
ORDER BY (dlq_partition, dlq_offset)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Every message refused on the way in (the dead-letter topic), with its reasons';

-- down
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS raw_events;
