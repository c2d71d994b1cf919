-- 008: the rest of a run's summary counts in `runs` (005 added the feed schedule's).
ALTER TABLE runs ADD COLUMN entries_left_for_next_run INTEGER;  -- over the per-feed limit: next run
ALTER TABLE runs ADD COLUMN skipped_known INTEGER;              -- backfill: URLs already stored
ALTER TABLE runs ADD COLUMN new_versions INTEGER;               -- stored URLs whose text changed
ALTER TABLE runs ADD COLUMN refetched_unchanged INTEGER;        -- stored URLs fetched again, same text
