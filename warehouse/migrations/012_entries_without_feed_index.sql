-- 012: `entries` without its ART index on feed_url.
--
-- No query of newsflow looks entries up by feed_url (they go by entry_key, the primary key), and
-- with a few hundred feeds for a million entries such an index holds long row-id lists under few
-- keys, which DuckDB 1.5.5 updates slowly and writes out whole at checkpoints. Measured on the
-- 1,000,000-article warehouse of benchmarks/growth.py: inserting a batch of 200 entries took
-- 0.19-0.24 s with it and 0.045 s without, and the checkpoint after it 0.36-0.39 s against
-- 0.28 s. A scan of the feed_url column answers the rare analyst's question as fast.
DROP INDEX IF EXISTS entries_feed;
