-- up
-- Incident rollups by hour, day and month (Europe/London period starts, as domain/metrics.py) at
-- every level: lsoa, msoa, lad, sicbl, icb, region, england, trust. Materialised views sum the
-- SIGNED rows of incident_changes, so a correction or a late event moves an incident from its old
-- cell to its new one (-1 there, +1 here) instead of adding it twice. Only counts and integer sums
-- live here: they re-aggregate exactly to any coarser level or period. Centiles cannot be
-- subtracted, so they are computed at query time from incident_changes (sinks/README.md).
-- Rows summing to zero everywhere are removed by SummingMergeTree merges; queries filter them too.
-- A level is rolled up at a grain only where a cell holds several incidents at national volume
-- (about 24,600 a day): LSOA monthly (~22 per cell) but not daily (<1) or hourly, MSOA daily
-- (~3) but not hourly. A finer cell would cost as much as the change row it sums, and load time
-- with it, while summing incident_changes for one LSOA (bloom-filter index) is as fast
-- (bench/bench_store.py). sinks/queries.py sums the changes for the tables left out, exactly.

CREATE TABLE IF NOT EXISTS incident_rollup_hourly
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    category LowCardinality(String),
    incidents Int64,
    hear_and_treat Int64,
    see_and_treat Int64,
    conveyed_ed Int64,
    conveyed_elsewhere Int64,
    open Int64,
    responses Int64,
    response_ms_sum Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period, category)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed incident counts per level (not lsoa or msoa), code, hour and category (empty = none): incidents = A7 (with a disposition), open = none yet';

CREATE MATERIALIZED VIEW IF NOT EXISTS incident_rollup_hourly_mv TO incident_rollup_hourly AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(hour_ms, 1000), 'Europe/London') AS period,
    ifNull(category, '') AS category,
    sumIf(sign, disposition IS NOT NULL) AS incidents,
    sumIf(sign, disposition = 'hear_and_treat') AS hear_and_treat,
    sumIf(sign, disposition = 'see_and_treat') AS see_and_treat,
    sumIf(sign, disposition = 'conveyed_ed') AS conveyed_ed,
    sumIf(sign, disposition = 'conveyed_elsewhere') AS conveyed_elsewhere,
    sumIf(sign, disposition IS NULL) AS open,
    sumIf(sign, response_ms IS NOT NULL) AS responses,
    sum(sign * ifNull(response_ms, 0)) AS response_ms_sum
FROM incident_changes
ARRAY JOIN [('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust)] AS lc
GROUP BY level, code, period, category;

CREATE TABLE IF NOT EXISTS incident_rollup_daily
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    category LowCardinality(String),
    incidents Int64,
    hear_and_treat Int64,
    see_and_treat Int64,
    conveyed_ed Int64,
    conveyed_elsewhere Int64,
    open Int64,
    responses Int64,
    response_ms_sum Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period, category)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed incident counts per level (not lsoa), code, day and category (empty = none): incidents = A7 (with a disposition), open = none yet';

CREATE MATERIALIZED VIEW IF NOT EXISTS incident_rollup_daily_mv TO incident_rollup_daily AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(day_ms, 1000), 'Europe/London') AS period,
    ifNull(category, '') AS category,
    sumIf(sign, disposition IS NOT NULL) AS incidents,
    sumIf(sign, disposition = 'hear_and_treat') AS hear_and_treat,
    sumIf(sign, disposition = 'see_and_treat') AS see_and_treat,
    sumIf(sign, disposition = 'conveyed_ed') AS conveyed_ed,
    sumIf(sign, disposition = 'conveyed_elsewhere') AS conveyed_elsewhere,
    sumIf(sign, disposition IS NULL) AS open,
    sumIf(sign, response_ms IS NOT NULL) AS responses,
    sum(sign * ifNull(response_ms, 0)) AS response_ms_sum
FROM incident_changes
ARRAY JOIN [('msoa', msoa), ('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust)] AS lc
GROUP BY level, code, period, category;

CREATE TABLE IF NOT EXISTS incident_rollup_monthly
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    category LowCardinality(String),
    incidents Int64,
    hear_and_treat Int64,
    see_and_treat Int64,
    conveyed_ed Int64,
    conveyed_elsewhere Int64,
    open Int64,
    responses Int64,
    response_ms_sum Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period, category)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed incident counts per level, code, month and category (empty = none): incidents = A7 (with a disposition), open = none yet';

CREATE MATERIALIZED VIEW IF NOT EXISTS incident_rollup_monthly_mv TO incident_rollup_monthly AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(month_ms, 1000), 'Europe/London') AS period,
    ifNull(category, '') AS category,
    sumIf(sign, disposition IS NOT NULL) AS incidents,
    sumIf(sign, disposition = 'hear_and_treat') AS hear_and_treat,
    sumIf(sign, disposition = 'see_and_treat') AS see_and_treat,
    sumIf(sign, disposition = 'conveyed_ed') AS conveyed_ed,
    sumIf(sign, disposition = 'conveyed_elsewhere') AS conveyed_elsewhere,
    sumIf(sign, disposition IS NULL) AS open,
    sumIf(sign, response_ms IS NOT NULL) AS responses,
    sum(sign * ifNull(response_ms, 0)) AS response_ms_sum
FROM incident_changes
ARRAY JOIN [('lsoa', lsoa), ('msoa', msoa), ('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust)] AS lc
GROUP BY level, code, period, category;

-- down
DROP VIEW IF EXISTS incident_rollup_hourly_mv;
DROP TABLE IF EXISTS incident_rollup_hourly;
DROP VIEW IF EXISTS incident_rollup_daily_mv;
DROP TABLE IF EXISTS incident_rollup_daily;
DROP VIEW IF EXISTS incident_rollup_monthly_mv;
DROP TABLE IF EXISTS incident_rollup_monthly;
