-- up
-- Handover rollups by hour, day and month at every level of the incident's geography plus the
-- hospital site (level 'site'). Signed sums as in 0003: corrections move, never add. 'over N'
-- is strictly more than N minutes; lost_ms = sum of max(0, duration - 15 min) (domain/metrics.py).
-- As in 0003, LSOA is rolled up monthly only and MSOA daily and monthly (the other tables are
-- summed from handover_changes at query time).

CREATE TABLE IF NOT EXISTS handover_rollup_hourly
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    arrivals Int64,
    handovers Int64,
    handover_ms_sum Int64,
    over_15 Int64,
    over_30 Int64,
    over_45 Int64,
    over_60 Int64,
    lost_ms Int64,
    clear_count Int64,
    clear_ms_sum Int64,
    clear_over_30 Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed handover counts and integer millisecond sums per level (incl. site; not lsoa or msoa), code and hour';

CREATE MATERIALIZED VIEW IF NOT EXISTS handover_rollup_hourly_mv TO handover_rollup_hourly AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(hour_ms, 1000), 'Europe/London') AS period,
    sum(sign) AS arrivals,
    sumIf(sign, handover_duration_ms IS NOT NULL) AS handovers,
    sum(sign * ifNull(handover_duration_ms, 0)) AS handover_ms_sum,
    sumIf(sign, handover_duration_ms > 900000) AS over_15,
    sumIf(sign, handover_duration_ms > 1800000) AS over_30,
    sumIf(sign, handover_duration_ms > 2700000) AS over_45,
    sumIf(sign, handover_duration_ms > 3600000) AS over_60,
    sum(sign * lost_ms) AS lost_ms,
    sumIf(sign, clear_duration_ms IS NOT NULL) AS clear_count,
    sum(sign * ifNull(clear_duration_ms, 0)) AS clear_ms_sum,
    sumIf(sign, clear_duration_ms > 1800000) AS clear_over_30
FROM handover_changes
ARRAY JOIN [('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust), ('site', site)] AS lc
GROUP BY level, code, period;

CREATE TABLE IF NOT EXISTS handover_rollup_daily
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    arrivals Int64,
    handovers Int64,
    handover_ms_sum Int64,
    over_15 Int64,
    over_30 Int64,
    over_45 Int64,
    over_60 Int64,
    lost_ms Int64,
    clear_count Int64,
    clear_ms_sum Int64,
    clear_over_30 Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed handover counts and integer millisecond sums per level (incl. site; not lsoa), code and day';

CREATE MATERIALIZED VIEW IF NOT EXISTS handover_rollup_daily_mv TO handover_rollup_daily AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(day_ms, 1000), 'Europe/London') AS period,
    sum(sign) AS arrivals,
    sumIf(sign, handover_duration_ms IS NOT NULL) AS handovers,
    sum(sign * ifNull(handover_duration_ms, 0)) AS handover_ms_sum,
    sumIf(sign, handover_duration_ms > 900000) AS over_15,
    sumIf(sign, handover_duration_ms > 1800000) AS over_30,
    sumIf(sign, handover_duration_ms > 2700000) AS over_45,
    sumIf(sign, handover_duration_ms > 3600000) AS over_60,
    sum(sign * lost_ms) AS lost_ms,
    sumIf(sign, clear_duration_ms IS NOT NULL) AS clear_count,
    sum(sign * ifNull(clear_duration_ms, 0)) AS clear_ms_sum,
    sumIf(sign, clear_duration_ms > 1800000) AS clear_over_30
FROM handover_changes
ARRAY JOIN [('msoa', msoa), ('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust), ('site', site)] AS lc
GROUP BY level, code, period;

CREATE TABLE IF NOT EXISTS handover_rollup_monthly
(
    level LowCardinality(String),
    code LowCardinality(String),
    period DateTime('Europe/London'),
    arrivals Int64,
    handovers Int64,
    handover_ms_sum Int64,
    over_15 Int64,
    over_30 Int64,
    over_45 Int64,
    over_60 Int64,
    lost_ms Int64,
    clear_count Int64,
    clear_ms_sum Int64,
    clear_over_30 Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (level, code, period)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Signed handover counts and integer millisecond sums per level (incl. site), code and month';

CREATE MATERIALIZED VIEW IF NOT EXISTS handover_rollup_monthly_mv TO handover_rollup_monthly AS
SELECT
    lc.1 AS level,
    lc.2 AS code,
    toDateTime(intDiv(month_ms, 1000), 'Europe/London') AS period,
    sum(sign) AS arrivals,
    sumIf(sign, handover_duration_ms IS NOT NULL) AS handovers,
    sum(sign * ifNull(handover_duration_ms, 0)) AS handover_ms_sum,
    sumIf(sign, handover_duration_ms > 900000) AS over_15,
    sumIf(sign, handover_duration_ms > 1800000) AS over_30,
    sumIf(sign, handover_duration_ms > 2700000) AS over_45,
    sumIf(sign, handover_duration_ms > 3600000) AS over_60,
    sum(sign * lost_ms) AS lost_ms,
    sumIf(sign, clear_duration_ms IS NOT NULL) AS clear_count,
    sum(sign * ifNull(clear_duration_ms, 0)) AS clear_ms_sum,
    sumIf(sign, clear_duration_ms > 1800000) AS clear_over_30
FROM handover_changes
ARRAY JOIN [('lsoa', lsoa), ('msoa', msoa), ('lad', lad), ('sicbl', sicbl), ('icb', icb), ('region', region), ('england', 'E92000001'), ('trust', trust), ('site', site)] AS lc
GROUP BY level, code, period;

-- down
DROP VIEW IF EXISTS handover_rollup_hourly_mv;
DROP TABLE IF EXISTS handover_rollup_hourly;
DROP VIEW IF EXISTS handover_rollup_daily_mv;
DROP TABLE IF EXISTS handover_rollup_daily;
DROP VIEW IF EXISTS handover_rollup_monthly_mv;
DROP TABLE IF EXISTS handover_rollup_monthly;
