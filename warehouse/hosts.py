"""Per-host politeness state kept across runs (migration 004, table ``host_state``).

A run seeds its :class:`tasks.robots.PolitenessState` with :func:`load_postponed` before it fetches
and writes the state back with :func:`save_postponed` when it is done, so a host that asked for a
long pause (429/503 with a Retry-After over the cap) gets no request before then, whichever run
comes next. Call both from the writer's session (they use the warehouse connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import duckdb

from tasks.robots import PolitenessState

SQL_LOAD = "SELECT host, postponed_until FROM host_state WHERE postponed_until > ?"
SQL_UPSERT = """
INSERT INTO host_state (host, postponed_until, updated_at) VALUES (?, ?, ?)
ON CONFLICT (host) DO UPDATE SET
    postponed_until = greatest(coalesce(host_state.postponed_until, excluded.postponed_until),
                               excluded.postponed_until),
    updated_at = excluded.updated_at
"""
SQL_EXPIRE = "DELETE FROM host_state WHERE postponed_until IS NULL OR postponed_until <= ?"


def load_postponed(con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> dict[str, datetime]:
    """Hosts still postponed at ``now``: host key -> not before (UTC)."""
    now = now or datetime.now(UTC)
    rows = con.execute(SQL_LOAD, [now]).fetchall()
    return {host: until.astimezone(UTC) for host, until in rows}


def save_postponed(
    con: duckdb.DuckDBPyConnection, postponed: Mapping[str, datetime], now: datetime | None = None
) -> int:
    """Record postponements (a later date wins over a stored one) and forget expired ones, in one
    transaction. Returns the number of hosts written."""
    now = now or datetime.now(UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(SQL_EXPIRE, [now])
        for host, until in postponed.items():
            if until > now:
                con.execute(SQL_UPSERT, [host, until, now])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return sum(1 for until in postponed.values() if until > now)


def seed_state(state: PolitenessState, con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> None:
    """Put the stored postponements into a run's state (before its first fetch)."""
    for host, until in load_postponed(con, now).items():
        state.postpone(host, until)
