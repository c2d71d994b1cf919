"""Per-host politeness state kept across runs: postponed hosts (migration 004, ``host_state``)
and robots.txt answers (migration 006, ``robots_cache``).

A run seeds its :class:`tasks.robots.PolitenessState` with :func:`seed_state` before it fetches
and writes back what it learnt with :func:`save_state` when it is done, so that

- a host that asked for a long pause (429/503 with a Retry-After over the cap) gets no request
  before then, whichever run comes next;
- a robots.txt the host answered (2xx, 4xx) is not asked again for ``robots_cache_hours``.

Call both from the writer's session (they use the warehouse connection).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import duckdb

from tasks.robots import PolitenessState, RobotsRules, allow_all, parse_robots

SQL_LOAD = "SELECT host, postponed_until FROM host_state WHERE postponed_until > ?"
SQL_UPSERT = """
INSERT INTO host_state (host, postponed_until, updated_at) VALUES (?, ?, ?)
ON CONFLICT (host) DO UPDATE SET
    postponed_until = greatest(coalesce(host_state.postponed_until, excluded.postponed_until),
                               excluded.postponed_until),
    updated_at = excluded.updated_at
"""
SQL_EXPIRE = "DELETE FROM host_state WHERE postponed_until IS NULL OR postponed_until <= ?"

# Rows fetched within the window (and not in the future: a clock set back must not stretch it).
SQL_LOAD_ROBOTS = """
SELECT robots_key, outcome, status, body, fetched_at FROM robots_cache
WHERE fetched_at > ? AND fetched_at <= ?
"""
# Two runs may save the same host (a poll during a backfill): the newer fetch stays.
SQL_UPSERT_ROBOTS = """
INSERT INTO robots_cache (robots_key, outcome, status, body, fetched_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (robots_key) DO UPDATE SET
    outcome = excluded.outcome, status = excluded.status, body = excluded.body,
    fetched_at = excluded.fetched_at
WHERE excluded.fetched_at > robots_cache.fetched_at
"""
OUTCOME_PARSED = "parsed"  # 2xx: the rules of the body
OUTCOME_ALLOW_ALL = "allow_all"  # 4xx: no rules (RFC 9309 section 2.3.1.3)


def load_postponed(con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> dict[str, datetime]:
    """Hosts still postponed at ``now``: host key -> not before (UTC)."""
    now = now or datetime.now(UTC)
    rows = con.execute(SQL_LOAD, [now]).fetchall()
    return {host: until.astimezone(UTC) for host, until in rows}


def _write_postponed(con: duckdb.DuckDBPyConnection, postponed: Mapping[str, datetime], now: datetime) -> int:
    con.execute(SQL_EXPIRE, [now])
    written = 0
    for host, until in postponed.items():
        if until > now:
            con.execute(SQL_UPSERT, [host, until, now])
            written += 1
    return written


def save_postponed(
    con: duckdb.DuckDBPyConnection, postponed: Mapping[str, datetime], now: datetime | None = None
) -> int:
    """Record postponements (a later date wins over a stored one) and forget expired ones, in one
    transaction. Returns the number of hosts written."""
    now = now or datetime.now(UTC)
    with _transaction(con):
        return _write_postponed(con, postponed, now)


def load_robots(
    con: duckdb.DuckDBPyConnection, max_age: timedelta, now: datetime | None = None
) -> dict[str, RobotsRules]:
    """The robots.txt answers fetched less than ``max_age`` before ``now``: robots key -> rules."""
    now = now or datetime.now(UTC)
    if max_age <= timedelta(0):
        return {}
    rows = con.execute(SQL_LOAD_ROBOTS, [now - max_age, now]).fetchall()
    return {
        key: _cached_rules(outcome, status, body, at.astimezone(UTC))
        for key, outcome, status, body, at in rows
    }


def _cached_rules(outcome: str, status: int, body: bytes | None, fetched_at: datetime) -> RobotsRules:
    if outcome == OUTCOME_PARSED:
        return parse_robots(body or b"", status, fetched_at)
    return allow_all(status, fetched_at)


def _write_robots(con: duckdb.DuckDBPyConnection, rules: Mapping[str, RobotsRules]) -> int:
    written = 0
    for key, r in rules.items():
        if not r.cacheable:  # unavailable: the next run asks again
            continue
        outcome = OUTCOME_ALLOW_ALL if r.body is None else OUTCOME_PARSED
        con.execute(SQL_UPSERT_ROBOTS, [key, outcome, r.status, r.body, r.fetched_at])
        written += 1
    return written


def save_state(con: duckdb.DuckDBPyConnection, state: PolitenessState, now: datetime | None = None) -> int:
    """Store what a run learnt about hosts, in one transaction: its postponements (expired ones
    forgotten) and the robots.txt answers it fetched. Returns the number of rows written."""
    now = now or datetime.now(UTC)
    with _transaction(con):
        return _write_postponed(con, dict(state.postponed), now) + _write_robots(con, state.rules_to_save())


def seed_state(
    state: PolitenessState,
    con: duckdb.DuckDBPyConnection,
    now: datetime | None = None,
    *,
    robots_max_age: timedelta | None = None,
) -> None:
    """Put the stored state into a run's state (before its first fetch): postponements, and the
    robots.txt answers younger than ``robots_max_age`` (none when it is None)."""
    now = now or datetime.now(UTC)
    for host, until in load_postponed(con, now).items():
        state.postpone(host, until)
    if robots_max_age is not None:
        for key, rules in load_robots(con, robots_max_age, now).items():
            state.seed_rules(key, rules)
    state.seeded = True


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
