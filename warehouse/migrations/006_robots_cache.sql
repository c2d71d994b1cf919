-- 006: robots.txt cached across runs (tasks/robots.py, warehouse/hosts.py).
-- One row per robots.txt, keyed like tasks.robots.robots_key: `scheme://host:port` (lower-case),
-- since RFC 9309 section 2.3 gives each scheme, host and port its own robots.txt.
-- Only what the host answered is stored: 'parsed' (2xx: the body as parsed, capped at
-- ROBOTS_MAX_BYTES = 500 KiB) or 'allow_all' (4xx: no rules, no body). An unavailable robots.txt
-- (5xx, 429, unreachable) is not stored: the next run asks again, and until it gets an answer
-- the host is not crawled. A run reuses a row for NEWSFLOW_ROBOTS_CACHE_HOURS after `fetched_at`
-- (24 h by default, RFC 9309 section 2.4); a newer fetch replaces it.
-- Operational state, not exported to Parquet: `warehouse rebuild` starts it empty, which costs
-- one robots.txt request per host on the next run.

CREATE TABLE robots_cache (
    robots_key VARCHAR     PRIMARY KEY,
    outcome    VARCHAR     NOT NULL,  -- 'parsed' | 'allow_all'
    status     INTEGER     NOT NULL,  -- the HTTP status the robots.txt was answered with
    body       BLOB,                  -- the robots.txt as parsed; NULL for 'allow_all'
    fetched_at TIMESTAMPTZ NOT NULL
);
