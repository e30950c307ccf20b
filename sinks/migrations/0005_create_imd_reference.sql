-- up
-- English Indices of Deprivation 2025 by LSOA 2021, for the "by IMD decile" views. Loaded (and
-- reloaded, idempotently) from data/geo/imd_lsoa21.csv.gz by `amb db load-reference`, which
-- `amb db migrate` runs when this table is empty.
CREATE TABLE IF NOT EXISTS imd_lsoa21
(
    lsoa21_code String,
    imd_score Float64,
    imd_rank UInt32,
    imd_decile UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY lsoa21_code
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'IMD 2025 by LSOA 2021 (decile 1 = most deprived), from data/geo/imd_lsoa21.csv.gz';

-- down
DROP TABLE IF EXISTS imd_lsoa21;
