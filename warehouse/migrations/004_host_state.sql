-- 004: per-host politeness state that outlives a run (tasks/robots.py, warehouse/hosts.py).
-- A host that answered 429/503 with a Retry-After longer than NEWSFLOW_RETRY_AFTER_CAP is
-- postponed: no request is sent to it before `postponed_until`. `host` is the fetcher's host key,
-- `name:port` (lower-case). Operational state, not exported to Parquet: `warehouse rebuild`
-- starts it empty, which at worst sends one request too early to a host that asked for a pause.

CREATE TABLE host_state (
    host            VARCHAR     PRIMARY KEY,
    postponed_until TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL
);
