-- 005: a schedule and a life cycle per feed (tasks/schedule.py decides, the poll flow stores).
--
-- `feed_url` stays the feed's identity (as written in feeds.toml: entry keys hash it), while
-- `fetch_url` is where it is fetched from now: a permanent redirect (301/308) moves it, and
-- the move is recorded in feed_events.
--
-- state: 'active'  polled every poll_interval_s (adapted to the feed, within bounds)
--        'backoff' failing; next_due_at backs off exponentially with jitter, up to a cap
--        'dead'    failed for too long or too often; re-probed rarely, revived when it answers
--        'retired' answered 410 Gone; never polled again unless the user revives it

ALTER TABLE feeds ADD COLUMN state VARCHAR DEFAULT 'active';
ALTER TABLE feeds ADD COLUMN state_changed_at TIMESTAMPTZ;
ALTER TABLE feeds ADD COLUMN next_due_at TIMESTAMPTZ;
ALTER TABLE feeds ADD COLUMN poll_interval_s INTEGER;      -- the interval used while healthy
ALTER TABLE feeds ADD COLUMN hint_interval_s INTEGER;      -- what the feed asked: ttl, sy:update*, max-age, Expires
ALTER TABLE feeds ADD COLUMN fetch_url VARCHAR;            -- NULL: fetch feed_url itself
ALTER TABLE feeds ADD COLUMN first_failure_at TIMESTAMPTZ; -- start of the current failure streak
ALTER TABLE feeds ADD COLUMN last_new_entry_at TIMESTAMPTZ;
ALTER TABLE feeds ADD COLUMN new_per_day DOUBLE;           -- smoothed rate of new entries

-- The run summary counts the schedule (feeds listed, due, and in each state after the run).
ALTER TABLE runs ADD COLUMN feeds_listed INTEGER;
ALTER TABLE runs ADD COLUMN feeds_due INTEGER;
ALTER TABLE runs ADD COLUMN feeds_backed_off INTEGER;
ALTER TABLE runs ADD COLUMN feeds_dead INTEGER;
ALTER TABLE runs ADD COLUMN feeds_retired INTEGER;

CREATE TABLE feed_events (
    event_id VARCHAR     PRIMARY KEY,
    feed_url VARCHAR     NOT NULL,
    event_at TIMESTAMPTZ NOT NULL,
    event    VARCHAR     NOT NULL,  -- 'moved' | 'backoff' | 'dead' | 'revived' | 'retired' | 'recovered'
    detail   VARCHAR,               -- e.g. 'http://old -> https://new (301)', or the error
    run_id   VARCHAR
);
CREATE INDEX feed_events_feed ON feed_events (feed_url);
