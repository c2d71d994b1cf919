-- 009: the story index in two tables, so that a poll never writes the big one.
--
-- DuckDB 1.5.5 writes a changed ART index out at each checkpoint in proportion to the whole index,
-- not to what changed (duckdb/duckdb#24848): with 1M articles, `story_index` holds 32M band keys,
-- and the checkpoint that ends every poll grew with the warehouse (benchmarks/growth.py: about
-- 6 s at 32M keys, 0.7 s at 3.2M). Polls, backfills and re-extractions now add band keys to
-- `story_index` (the keys added since the last maintenance run: small), and maintenance moves them
-- into `story_index_archive` before its checkpoint, the only one that writes the archive's index.
-- Lookups read both (warehouse/stories.py). Derived data, not exported to Parquet.
CREATE TABLE story_index_archive (
    band       BIGINT  NOT NULL,
    article_id VARCHAR NOT NULL
);
CREATE INDEX story_index_archive_band ON story_index_archive (band);
