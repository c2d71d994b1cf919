-- 010: `story_index_archive` without its ART index.
--
-- DuckDB 1.5.5 writes out at a checkpoint every ART index it has loaded, even one that was only
-- read: a poll's story lookups load the archive's index (32M band keys at 1M articles) and the
-- checkpoint that ends the poll then wrote all of it again (6.3 s here, against 0.1 s without the
-- lookups), besides the lookups' own loading of it (about 7 s cold). Without the index, a lookup
-- of a batch's 6,400 band keys is a hash join over the archive's `band` column (0.5 s at 32M keys,
-- no checkpoint cost). The keys added since the last maintenance run stay indexed in `story_index`.
DROP INDEX IF EXISTS story_index_archive_band;
