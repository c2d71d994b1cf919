"""Read access for analysts: ``newsflow sql`` and the demo's example query.

Queries go to the DuckDB file, read-only. While a writer holds it (DuckDB allows one process),
the same table names are served from the Parquet files instead, so a query never has to wait
for a poll to finish.
"""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

import duckdb

from warehouse.storage import as_storage
from warehouse.store import APPEND_TABLES, SNAPSHOT_TABLES, connect, has_parquet, parquet_relation
from warehouse.stories import create_story_views


def named_query(name: str) -> str:
    """A query shipped in ``warehouse/queries/<name>.sql`` (the README's examples)."""
    return files("warehouse").joinpath("queries", f"{name}.sql").read_text()


def open_for_reading(data_dir: Path) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A connection and where it reads from: ``"duckdb"`` or ``"parquet"`` (a writer holds the
    file, or a killed writer left a write-ahead log that only the next writer can replay)."""
    db = data_dir / "newsflow.duckdb"
    if not db.exists():
        raise FileNotFoundError(f"no warehouse at {data_dir} (run `newsflow poll` or `newsflow demo` first)")
    try:
        return connect(db, read_only=True), "duckdb"
    except duckdb.IOException as exc:
        text = str(exc).lower()
        if "lock" not in text and "replaying wal" not in text:
            raise
    return parquet_connection(data_dir), "parquet"


def parquet_connection(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """Views of the warehouse's Parquet files, wherever its storage keeps them."""
    storage = as_storage(data_dir)
    con = storage.attach(duckdb.connect(":memory:"))
    con.execute("SET TimeZone = 'UTC'")
    for t in (*APPEND_TABLES, *SNAPSHOT_TABLES):
        if has_parquet(storage, t):
            parquet_relation(con, storage, t).create_view(t)
    if "articles" in {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}:
        create_story_views(con)  # the same `stories` views as in the DuckDB file
    return con


def run_query(
    data_dir: Path, sql: str, attempts: int = 3, params: object = None
) -> tuple[list[str], list[tuple], str]:
    for attempt in range(1, attempts + 1):
        con, source = open_for_reading(data_dir)
        try:
            cur = con.execute(sql, params)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if cur.description else []
            return columns, rows, source
        except duckdb.IOException as exc:
            # Reading Parquet while maintenance swaps a partition in: a file listed a moment ago
            # is gone. Nothing is wrong; reading again sees the new files.
            if source != "parquet" or "No such file" not in str(exc) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
        finally:
            con.close()
    raise AssertionError("unreachable")
