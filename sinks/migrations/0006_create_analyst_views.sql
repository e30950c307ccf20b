-- up
-- Named views for analysts. Counts come from the signed rollups. Centiles are exact
-- (ClickHouse quantileExact(0.9): the value at 0-based index min(int(0.9 n), n - 1), domain/metrics.py)
-- and computed from a signed histogram of the changes tables: rows grouped by value with sum(sign),
-- so corrections cancel before the centile is taken. In every view h is that histogram, an array
-- of (value, count) sorted by value, and t its total count.

CREATE OR REPLACE VIEW non_conveyance_icb_month AS
SELECT
    code AS icb,
    toDate(period) AS month,
    sum(r.incidents) AS incidents,
    sum(r.hear_and_treat) AS hear_and_treat,
    sum(r.see_and_treat) AS see_and_treat,
    sum(r.conveyed_elsewhere) AS conveyed_elsewhere,
    sum(r.conveyed_ed) AS conveyed_ed,
    hear_and_treat + see_and_treat + conveyed_elsewhere AS not_conveyed_ed,
    if(incidents = 0, NULL, not_conveyed_ed / incidents) AS non_conveyance_rate,
    if(incidents = 0, NULL, hear_and_treat / incidents) AS hear_and_treat_rate,
    if(incidents = 0, NULL, see_and_treat / incidents) AS see_and_treat_rate,
    if(incidents = 0, NULL, conveyed_elsewhere / incidents) AS conveyed_elsewhere_rate,
    sum(r.open) AS open
FROM incident_rollup_monthly AS r
WHERE r.level = 'icb'
GROUP BY icb, month
HAVING incidents != 0 OR open != 0
COMMENT 'Non-conveyance by ICB and month (AmbSYS): not conveyed to ED = A17 + A55 + A54, rate over A7 = incidents with a disposition; open = no disposition yet';

CREATE OR REPLACE VIEW handover_site_day AS
SELECT
    site,
    day,
    arrivals,
    handovers,
    if(handovers = 0, NULL, sum_ms / handovers / 60000) AS mean_min,
    if(handovers = 0, NULL, p90_ms / 60000) AS p90_min,
    over_15,
    over_30,
    over_45,
    over_60,
    lost_ms / 3600000 AS hours_lost
FROM
(
    SELECT
        site,
        day,
        sum(n) AS arrivals,
        sumIf(n, v IS NOT NULL) AS handovers,
        sum(n * ifNull(v, 0)) AS sum_ms,
        sumIf(n, v > 900000) AS over_15,
        sumIf(n, v > 1800000) AS over_30,
        sumIf(n, v > 2700000) AS over_45,
        sumIf(n, v > 3600000) AS over_60,
        sum(n * greatest(ifNull(v, 0) - 900000, 0)) AS lost_ms,
        arraySort(groupArrayIf((assumeNotNull(v), n), v IS NOT NULL)) AS h,
        handovers AS t,
        if(t = 0, NULL, arrayElement(arrayMap(x -> x.1, h), arrayFirstIndex(c -> c > least(toInt64(0.9 * t), t - 1), arrayCumSum(arrayMap(x -> x.2, h))))) AS p90_ms
    FROM
    (
        SELECT site, toDate(toDateTime(intDiv(day_ms, 1000), 'Europe/London')) AS day,
               handover_duration_ms AS v, sum(sign) AS n
        FROM handover_changes
        GROUP BY site, day, v
        HAVING n != 0
    )
    GROUP BY site, day
)
COMMENT 'Handover by hospital site and day (of the incident clock start): arrival to handover complete; over N = strictly more than N minutes; hours lost = sum of max(0, minutes - 15) / 60';

CREATE OR REPLACE VIEW response_category_month AS
SELECT
    level,
    code,
    month,
    category,
    responses,
    sum_ms / responses / 1000 AS mean_s,
    p90_ms / 1000 AS p90_s
FROM
(
    SELECT level, code, month, category, sum(n) AS responses, sum(n * v) AS sum_ms,
           arraySort(groupArray((v, n))) AS h, responses AS t, if(t = 0, NULL, arrayElement(arrayMap(x -> x.1, h), arrayFirstIndex(c -> c > least(toInt64(0.9 * t), t - 1), arrayCumSum(arrayMap(x -> x.2, h))))) AS p90_ms
    FROM
    (
        SELECT lc.1 AS level, lc.2 AS code,
               toDate(toDateTime(intDiv(month_ms, 1000), 'Europe/London')) AS month,
               assumeNotNull(category) AS category, assumeNotNull(response_ms) AS v, sum(sign) AS n
        FROM incident_changes
        ARRAY JOIN [('england', 'E92000001'), ('region', region), ('icb', icb)] AS lc
        WHERE response_ms IS NOT NULL AND category IS NOT NULL
        GROUP BY level, code, month, category, v
        HAVING n != 0
    )
    GROUP BY level, code, month, category
)
COMMENT 'Response times (clock start to first arrival) by category and month for England, regions and ICBs: count, mean and exact 90th centile in seconds';

CREATE OR REPLACE VIEW dispositions_imd_month AS
SELECT
    d.imd_decile AS imd_decile,
    toDate(r.period) AS month,
    sum(r.incidents) AS incidents,
    sum(r.hear_and_treat) AS hear_and_treat,
    sum(r.see_and_treat) AS see_and_treat,
    sum(r.conveyed_ed) AS conveyed_ed,
    sum(r.conveyed_elsewhere) AS conveyed_elsewhere,
    if(incidents = 0, NULL, (hear_and_treat + see_and_treat + conveyed_elsewhere) / incidents) AS non_conveyance_rate,
    sum(r.open) AS open
FROM incident_rollup_monthly AS r
LEFT JOIN (SELECT lsoa21_code, toNullable(imd_decile) AS imd_decile FROM imd_lsoa21 FINAL) AS d
    ON d.lsoa21_code = r.code
WHERE r.level = 'lsoa'
GROUP BY imd_decile, month
HAVING incidents != 0 OR open != 0
COMMENT 'Dispositions and non-conveyance by IMD 2025 decile of the incident LSOA (1 = most deprived; NULL = unknown LSOA) and month';

CREATE OR REPLACE VIEW response_imd_month AS
SELECT
    imd_decile,
    month,
    category,
    responses,
    sum_ms / responses / 1000 AS mean_s,
    p90_ms / 1000 AS p90_s
FROM
(
    SELECT imd_decile, month, category, sum(n) AS responses, sum(n * v) AS sum_ms,
           arraySort(groupArray((v, n))) AS h, responses AS t, if(t = 0, NULL, arrayElement(arrayMap(x -> x.1, h), arrayFirstIndex(c -> c > least(toInt64(0.9 * t), t - 1), arrayCumSum(arrayMap(x -> x.2, h))))) AS p90_ms
    FROM
    (
        SELECT d.imd_decile AS imd_decile,
               toDate(toDateTime(intDiv(c.month_ms, 1000), 'Europe/London')) AS month,
               assumeNotNull(c.category) AS category, assumeNotNull(c.response_ms) AS v, sum(c.sign) AS n
        FROM incident_changes AS c
        LEFT JOIN (SELECT lsoa21_code, toNullable(imd_decile) AS imd_decile FROM imd_lsoa21 FINAL) AS d
            ON d.lsoa21_code = c.lsoa
        WHERE c.response_ms IS NOT NULL AND c.category IS NOT NULL
        GROUP BY imd_decile, month, category, v
        HAVING n != 0
    )
    GROUP BY imd_decile, month, category
)
COMMENT 'Response times by IMD 2025 decile of the incident LSOA, category and month: count, mean and exact 90th centile in seconds';

CREATE OR REPLACE VIEW handover_imd_month AS
SELECT
    imd_decile,
    month,
    arrivals,
    handovers,
    if(handovers = 0, NULL, sum_ms / handovers / 60000) AS mean_min,
    if(handovers = 0, NULL, p90_ms / 60000) AS p90_min,
    over_15,
    over_30,
    over_45,
    over_60,
    lost_ms / 3600000 AS hours_lost
FROM
(
    SELECT
        imd_decile,
        month,
        sum(n) AS arrivals,
        sumIf(n, v IS NOT NULL) AS handovers,
        sum(n * ifNull(v, 0)) AS sum_ms,
        sumIf(n, v > 900000) AS over_15,
        sumIf(n, v > 1800000) AS over_30,
        sumIf(n, v > 2700000) AS over_45,
        sumIf(n, v > 3600000) AS over_60,
        sum(n * greatest(ifNull(v, 0) - 900000, 0)) AS lost_ms,
        arraySort(groupArrayIf((assumeNotNull(v), n), v IS NOT NULL)) AS h,
        handovers AS t,
        if(t = 0, NULL, arrayElement(arrayMap(x -> x.1, h), arrayFirstIndex(c -> c > least(toInt64(0.9 * t), t - 1), arrayCumSum(arrayMap(x -> x.2, h))))) AS p90_ms
    FROM
    (
        SELECT d.imd_decile AS imd_decile,
               toDate(toDateTime(intDiv(c.month_ms, 1000), 'Europe/London')) AS month,
               c.handover_duration_ms AS v, sum(c.sign) AS n
        FROM handover_changes AS c
        LEFT JOIN (SELECT lsoa21_code, toNullable(imd_decile) AS imd_decile FROM imd_lsoa21 FINAL) AS d
            ON d.lsoa21_code = c.lsoa
        GROUP BY imd_decile, month, v
        HAVING n != 0
    )
    GROUP BY imd_decile, month
)
COMMENT 'Handover by IMD 2025 decile of the incident LSOA and month: mean, exact 90th centile, counts over 15/30/45/60 minutes, hours lost';

-- down
DROP VIEW IF EXISTS handover_imd_month;
DROP VIEW IF EXISTS response_imd_month;
DROP VIEW IF EXISTS dispositions_imd_month;
DROP VIEW IF EXISTS response_category_month;
DROP VIEW IF EXISTS handover_site_day;
DROP VIEW IF EXISTS non_conveyance_icb_month;
