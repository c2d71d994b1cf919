"""The warehouse: one DuckDB database plus Parquet files, kept in agreement.

Write path of one load batch (the unit of atomicity):
1. the raw WARC of the batch is written and renamed into place;
2. one DuckDB transaction inserts the batch's rows and a ``load_batches`` row (exported=false);
3. each table's new rows are written as Parquet (temporary name, fsync, rename), partitioned by
   ``ingest_date``, one file per batch and partition;
4. the ``load_batches`` row is marked exported.
A crash between 2 and 4 is repaired by the next writer (:meth:`Warehouse.recover`): batches that
are committed but not exported are exported again from DuckDB (same file names, so never twice),
and temporary files are removed. DuckDB is the record of what was committed.

The Parquet files and the raw archive are under the warehouse's storage root (warehouse/storage.py:
the data dir by default, another directory or an object store with ``NEWSFLOW_STORAGE_URL``); the
DuckDB file is always in the data dir.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from importlib.resources import files
from pathlib import Path

import duckdb
import pyarrow as pa

from tasks.dedup import KnownKey
from warehouse.files import remove_orphaned_temporaries, write_parquet_to
from warehouse.lock import WriterLock
from warehouse.storage import Storage, as_storage, record_storage, resolve_storage
from warehouse.stories import assign_story_ids, insert_story_index, reindex_articles

APPEND_TABLES = ("entries", "articles", "fetch_log", "extraction_history")  # one Parquet file per batch
SNAPSHOT_TABLES = ("feeds", "runs", "feed_events")  # small, rewritten whole at the end of a run

# Table names are fixed identifiers, never user input: each statement is a constant.
SELECT_EMPTY = {t: f"SELECT * FROM {t} LIMIT 0" for t in APPEND_TABLES + SNAPSHOT_TABLES}  # noqa: S608
INSERT_BY_NAME = {t: f"INSERT INTO {t} BY NAME SELECT * FROM incoming" for t in APPEND_TABLES}  # noqa: S608
SELECT_BATCH = {t: f"SELECT * FROM {t} WHERE load_batch = ?" for t in APPEND_TABLES}  # noqa: S608
SELECT_ALL = {t: f"SELECT * FROM {t} ORDER BY 1" for t in SNAPSHOT_TABLES}  # noqa: S608

SQL_SEEN_ENTRY_KEYS = "SELECT entry_key FROM entries WHERE entry_key IN (SELECT unnest(?::VARCHAR[]))"
SQL_KNOWN_URL_KEYS = """
    SELECT url_key AS key, coalesce(duplicate_of, article_id) AS original
    FROM articles WHERE url_key IN (SELECT unnest(?::VARCHAR[])) AND version = 1
    UNION ALL
    SELECT canonical_url AS key, coalesce(duplicate_of, article_id) AS original
    FROM articles WHERE canonical_url IN (SELECT unnest(?::VARCHAR[]))
"""
SQL_KNOWN_CANONICAL = """
    SELECT canonical_url, coalesce(duplicate_of, article_id) FROM articles
    WHERE canonical_url IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY fetched_at, article_id
"""
SQL_KNOWN_HASHES = """
    SELECT content_hash, coalesce(duplicate_of, article_id) FROM articles
    WHERE content_hash IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY fetched_at, article_id
"""
# Article versions (migration 007): what a page fetched again is compared with.
SQL_LATEST_VERSIONS = """
    SELECT url_key, article_id, article_key, version, content_hash,
           max_by(story_id, version) FILTER (WHERE story_id IS NOT NULL) OVER (PARTITION BY url_key)
    FROM articles WHERE url_key IN (SELECT unnest(?::VARCHAR[]))
    QUALIFY row_number() OVER (PARTITION BY url_key ORDER BY version DESC) = 1
"""
# Every stored row carrying a dedup key, in the order they were stored, with its article_key: a
# new version is compared with the other articles, not with its own versions.
SQL_KNOWN_CANONICAL_ROWS = """
    SELECT canonical_url, coalesce(duplicate_of, article_id), article_key FROM articles
    WHERE canonical_url IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY fetched_at, article_id
"""
SQL_KNOWN_HASH_ROWS = """
    SELECT content_hash, coalesce(duplicate_of, article_id), article_key FROM articles
    WHERE content_hash IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY fetched_at, article_id
"""
SQL_ARTICLE_KEYS = (
    "SELECT article_id, article_key FROM articles WHERE article_id IN (SELECT unnest(?::VARCHAR[]))"
)
# When each of these URLs was last fetched: its latest article version, or a later page fetch of
# the same URL that brought no new version (backfill: a sitemap <lastmod> against it).
SQL_LAST_FETCHED = """
    SELECT url_key AS key, max(fetched_at) FROM articles WHERE url_key IN (SELECT unnest(?::VARCHAR[]))
    GROUP BY url_key
    UNION ALL
    SELECT url AS key, max(fetched_at) FROM fetch_log
    WHERE kind = 'page' AND status BETWEEN 200 AND 299 AND url IN (SELECT unnest(?::VARCHAR[]))
    GROUP BY url
"""
# Stored entries seen again: the date their page was last judged by (updated, else published).
SQL_ENTRY_DATES = """
    SELECT entry_key, coalesce(updated_at, published_at) FROM entries
    WHERE entry_key IN (SELECT unnest(?::VARCHAR[]))
"""
SQL_ENTRY_DAYS_OF = (
    "SELECT DISTINCT ingest_date FROM entries WHERE entry_key IN (SELECT unnest(?::VARCHAR[]))"
)
# A stored entry whose page was fetched again: the entry as the feed shows it now; when its page
# was fetched and the entry had not resolved to that URL before (it had failed, or its link moved),
# it now resolves to that article.
_RESOLVES_ANEW = (
    "u.page_fetched AND (entries.status NOT IN ('fetched', 'duplicate') "
    "OR entries.link_key IS DISTINCT FROM u.link_key)"
)
SQL_UPDATE_ENTRIES = f"""
    UPDATE entries SET
        guid = u.guid, link = u.link, link_key = u.link_key, title = u.title,
        published_at = u.published_at, updated_at = u.updated_at, summary = u.summary,
        author = u.author, categories = u.categories, enclosures = u.enclosures,
        article_id = CASE WHEN {_RESOLVES_ANEW} THEN u.article_id ELSE entries.article_id END,
        status = CASE WHEN {_RESOLVES_ANEW} THEN 'fetched' ELSE entries.status END,
        duplicate_of = CASE WHEN {_RESOLVES_ANEW} THEN NULL ELSE entries.duplicate_of END,
        duplicate_reason = CASE WHEN {_RESOLVES_ANEW} THEN NULL ELSE entries.duplicate_reason END
    FROM entry_updates u WHERE entries.entry_key = u.entry_key
"""  # noqa: S608 - a fixed condition, no values
SQL_FEED_STATE = "SELECT feed_url, etag, last_modified, body_hash FROM feeds WHERE feed_url IN (SELECT unnest(?::VARCHAR[]))"
SQL_FEED_ROW = "SELECT * FROM feeds WHERE feed_url = ?"
SQL_FEED_ROWS = "SELECT * FROM feeds WHERE feed_url IN (SELECT unnest(?::VARCHAR[]))"
SQL_UPSERT_FEED = """
    INSERT INTO feeds BY NAME SELECT * FROM incoming
    ON CONFLICT (feed_url) DO UPDATE SET
        name = excluded.name, tags = excluded.tags, title = excluded.title,
        site_url = excluded.site_url, format = excluded.format, language = excluded.language,
        etag = excluded.etag, last_modified = excluded.last_modified, body_hash = excluded.body_hash,
        last_status = excluded.last_status, last_fetched_at = excluded.last_fetched_at,
        last_success_at = excluded.last_success_at, last_error_class = excluded.last_error_class,
        last_error = excluded.last_error, consecutive_failures = excluded.consecutive_failures,
        entries_seen = excluded.entries_seen,
        state = excluded.state, state_changed_at = excluded.state_changed_at,
        next_due_at = excluded.next_due_at, poll_interval_s = excluded.poll_interval_s,
        hint_interval_s = excluded.hint_interval_s, fetch_url = excluded.fetch_url,
        first_failure_at = excluded.first_failure_at, last_new_entry_at = excluded.last_new_entry_at,
        new_per_day = excluded.new_per_day
"""
SQL_FEED_HEALTH_ORDER = (
    "\nORDER BY (state <> 'active') DESC, failures DESC, next_due_at NULLS FIRST, feed_url"
)
SQL_INSERT_FEED_EVENTS = "INSERT INTO feed_events BY NAME SELECT * FROM incoming"
SQL_INSERT_BATCH = "INSERT INTO load_batches VALUES (?, ?, ?, ?, false)"
SQL_MARK_EXPORTED = "UPDATE load_batches SET exported = true WHERE load_batch = ?"
SQL_UNEXPORTED = "SELECT load_batch, tables FROM load_batches WHERE NOT exported ORDER BY committed_at"

# Re-extraction (backfill --reextract): candidates, their current values, the in-place update.
SQL_REEXTRACT_CANDIDATES = """
    SELECT article_id, final_url, raw_path, raw_offset FROM articles
    WHERE raw_path IS NOT NULL
      AND ($since IS NULL OR CAST(fetched_at AS DATE) >= $since)
      AND ($until IS NULL OR CAST(fetched_at AS DATE) <= $until)
      AND ($feed IS NULL OR feed_url = $feed)
    ORDER BY article_id
"""
SQL_ARTICLES_WITH_ENTRY = """
    SELECT a.*, e.title AS entry_title, e.author AS entry_author, e.published_at AS entry_published_at,
           e.categories AS entry_categories
    FROM articles a LEFT JOIN entries e ON e.entry_key = a.entry_key
    WHERE a.article_id IN (SELECT unnest(?::VARCHAR[]))
"""
REEXTRACTED_COLUMNS = (
    "title", "author", "published_at", "language", "sitename", "description", "categories", "tags", "image",
    "canonical_url", "text", "text_chars", "content_hash", "extractor", "extractor_version",
    "extractor_options", "extraction_error",
)  # fmt: skip
SQL_UPDATE_EXTRACTION = (
    "UPDATE articles SET "  # noqa: S608 - fixed column names
    + ", ".join(f"{c} = u.{c}" for c in REEXTRACTED_COLUMNS)
    + " FROM incoming u WHERE articles.article_id = u.article_id"
)
SQL_INGEST_DATES_OF = (
    "SELECT DISTINCT ingest_date FROM articles WHERE article_id IN (SELECT unnest(?::VARCHAR[]))"
)
SQL_PARTITION = {t: f"SELECT * FROM {t} WHERE ingest_date = ?" for t in APPEND_TABLES}  # noqa: S608
PARTITION_MARK = "@"  # in load_batches.tables: "articles@2026-11-30" = that partition is rewritten
SQL_INSERT_RUN = "INSERT OR REPLACE INTO runs BY NAME SELECT * FROM incoming"


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in files("warehouse").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text()))
    return sorted(found)


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the versioned migrations not yet applied, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    done = []
    for version, name, sql in _migrations():
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, datetime.now(UTC)])
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        done.append(name)
    return done


# Rows per row group in every table a writer appends to. With DuckDB's default, 122,880, the
# checkpoint after each load batch rewrites the table's last row group whole: a 200-article batch
# into a warehouse of 100,000 articles (one row group) read 337 MiB of it back, peaked at 973 MiB
# and took 1-2 s to checkpoint, and a backfill's memory grew with the run until the group was full.
# With 16,384 rows the rewrite is at most that many rows. The size is not kept in the file: every
# writer attaches with it (without it, a checkpoint merges the small groups back into big ones).
ROW_GROUP_SIZE = 16_384
WAREHOUSE_CATALOG = "newsflow"


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse's DuckDB file. A writer's is an in-memory DuckDB with the file
    attached as the default database, because the row group size is an option of ATTACH only."""
    if read_only:
        con = duckdb.connect(str(path), read_only=True)
    else:
        con = duckdb.connect(":memory:")
        con.execute(sql_attach_writer(path))
        con.execute(f"USE {WAREHOUSE_CATALOG}")
        # An in-memory DuckDB spills to ./.tmp of whatever directory the command runs in; a file's
        # own connection spills beside the file, and so does this one.
        con.execute(f"SET temp_directory = {_sql_string(str(path) + '.tmp')}")
    con.execute("SET TimeZone = 'UTC'")
    return con


def sql_attach_writer(path: Path) -> str:
    return f"ATTACH {_sql_string(str(path))} AS {WAREHOUSE_CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})"


def _sql_string(text: str) -> str:
    """A quoted SQL string literal, for the statements that take no bound parameters (ATTACH, SET)."""
    return "'" + text.replace("'", "''") + "'"


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failed statement or COMMIT. A COMMIT that fails (a full disk, say) has
    already ended the transaction: DuckDB's "no transaction is active" must not hide why."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise


# Present while a writer has the database open; still there at the next open: the writer died.
OPEN_MARKER = ".writer-open"
# The CREATE INDEX indexes of the migrations (constraint indexes excluded), to make again after a
# writer died. Named here, not read from the catalogue: a rebuild cut short must still know them.
SECONDARY_INDEXES = {  # entries_feed was dropped by migration 012
    "extraction_history_article": (
        "extraction_history",
        "CREATE INDEX extraction_history_article ON extraction_history (article_id)",
    ),
    "story_index_band": ("story_index", "CREATE INDEX story_index_band ON story_index (band)"),
    "feed_events_feed": ("feed_events", "CREATE INDEX feed_events_feed ON feed_events (feed_url)"),
}
SQL_TABLE_EXISTS = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?"


def rebuild_secondary_indexes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Drop and create again the CREATE INDEX indexes (not the constraint indexes).

    With DuckDB 1.5.5, such an index can come out of a killed writer's recovery missing entries
    (seen under tests/test_crash.py's kills: lookups by an indexed column missed rows that were
    there), and a lookup answered from it then misses stored rows. The primary-key and UNIQUE
    indexes came through whole. Rebuilding after a crash costs one pass over each indexed table.
    Each statement commits on its own: DROP and CREATE of one index in one transaction aborts
    the process in DuckDB 1.5.5 ("pure virtual method called")."""
    rebuilt = []
    for name, (table, create) in SECONDARY_INDEXES.items():
        if not con.execute(SQL_TABLE_EXISTS, [table]).fetchone()[0]:
            continue
        con.execute(f"DROP INDEX IF EXISTS {name}")  # a name from the constant above
        con.execute(create)
        rebuilt.append(name)
    return rebuilt


class Warehouse:
    """Read and write access for one writer process (hold the WriterLock around it)."""

    def __init__(self, data_dir: Path, storage_url: str | None = None):
        """``storage_url``: where the Parquet files and raw archive are (``NEWSFLOW_STORAGE_URL``);
        None: where this warehouse recorded them, by default the data dir itself."""
        self.data_dir = data_dir
        self.storage = resolve_storage(data_dir, storage_url)
        data_dir.mkdir(parents=True, exist_ok=True)
        record_storage(self.storage)
        self.con = connect(data_dir / "newsflow.duckdb")
        # A marker left behind means the last writer died with the database open.
        self._open_marker = data_dir / OPEN_MARKER
        died = self._open_marker.exists()
        self._open_marker.touch()
        migrate(self.con)
        self.rebuilt_indexes = rebuild_secondary_indexes(self.con) if died else []
        self._schemas: dict[str, pa.Schema] = {}

    def close(self) -> None:
        self.con.close()
        self._open_marker.unlink(missing_ok=True)

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ lookups

    def seen_entry_keys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        return {r[0] for r in self.con.execute(SQL_SEEN_ENTRY_KEYS, [list(keys)]).fetchall()}

    def known_url_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """URL keys already stored (as an article's own URL or its canonical URL) -> original article."""
        if not keys:
            return {}
        out: dict[str, str] = {}
        for key, original in self.con.execute(SQL_KNOWN_URL_KEYS, [list(keys), list(keys)]).fetchall():
            out.setdefault(key, original)
        return out

    def known_canonical(self, urls: Sequence[str]) -> dict[str, str]:
        return self._first_by_key(SQL_KNOWN_CANONICAL, urls)

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        return self._first_by_key(SQL_KNOWN_HASHES, hashes)

    def _first_by_key(self, sql: str, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        out: dict[str, str] = {}
        for key, original in self.con.execute(sql, [list(keys)]).fetchall():
            out.setdefault(key, original)
        return out

    def known_canonical_rows(self, urls: Sequence[str]) -> dict[str, list[KnownKey]]:
        return self._rows_by_key(SQL_KNOWN_CANONICAL_ROWS, urls)

    def known_hash_rows(self, hashes: Sequence[str]) -> dict[str, list[KnownKey]]:
        return self._rows_by_key(SQL_KNOWN_HASH_ROWS, hashes)

    def _rows_by_key(self, sql: str, keys: Sequence[str]) -> dict[str, list[KnownKey]]:
        if not keys:
            return {}
        out: dict[str, list[KnownKey]] = {}
        for key, original, article_key in self.con.execute(sql, [list(keys)]).fetchall():
            out.setdefault(key, []).append(KnownKey(original, article_key))
        return out

    def article_keys(self, article_ids: Sequence[str]) -> dict[str, str]:
        """article_id -> article_key (the id of the article's first version)."""
        if not article_ids:
            return {}
        return dict(self.con.execute(SQL_ARTICLE_KEYS, [list(article_ids)]).fetchall())

    def latest_versions(self, url_keys: Sequence[str]) -> dict[str, tuple]:
        """url_key -> (article_id, article_key, version, content_hash, story_id) of the latest
        stored version; story_id is that of the latest version that has one."""
        if not url_keys:
            return {}
        return {r[0]: r[1:] for r in self.con.execute(SQL_LATEST_VERSIONS, [list(url_keys)]).fetchall()}

    def last_fetched(self, url_keys: Sequence[str], urls: Sequence[str]) -> dict[str, datetime]:
        """When each URL key (its latest version) or URL (a page fetch) was last fetched."""
        if not url_keys and not urls:
            return {}
        out: dict[str, datetime] = {}
        for key, at in self.con.execute(SQL_LAST_FETCHED, [list(url_keys), list(urls)]).fetchall():
            out[key] = max(at, out.get(key, at))
        return out

    def entry_dates(self, keys: Sequence[str]) -> dict[str, datetime | None]:
        """Stored entries among ``keys`` -> their date (updated, else published; None without)."""
        if not keys:
            return {}
        return dict(self.con.execute(SQL_ENTRY_DATES, [list(keys)]).fetchall())

    def feed_validators(self, urls: Sequence[str]) -> dict[str, tuple[str | None, str | None, str | None]]:
        if not urls:
            return {}
        rows = self.con.execute(SQL_FEED_STATE, [list(urls)]).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def feed_row(self, url: str) -> dict | None:
        cur = self.con.execute(SQL_FEED_ROW, [url])
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    # ------------------------------------------------------------------ writes

    def _schema(self, table: str) -> pa.Schema:
        if table not in self._schemas:
            self._schemas[table] = self.con.execute(SELECT_EMPTY[table]).fetch_arrow_table().schema
        return self._schemas[table]

    def to_arrow(self, table: str, rows: Sequence[Mapping]) -> pa.Table:
        return pa.Table.from_pylist([dict(r) for r in rows], schema=self._schema(table))

    def load_batch(
        self, load_batch: str, run_id: str, rows: Mapping[str, Sequence[Mapping]]
    ) -> dict[str, int]:
        """Insert one batch in one transaction, then export it as Parquet. Returns row counts.

        ``rows["entry_updates"]`` (entry rows plus ``page_fetched``): stored entries whose page was
        fetched again, updated in place in the same transaction; their ``entries`` partitions are
        then rewritten (named ``entries@<day>`` in ``load_batches``, like a re-extraction's)."""
        for row in rows.get("articles", ()):
            # A row that does not say otherwise is an article's first version.
            row.setdefault("version", 1)
            row.setdefault("article_key", row["article_id"])
        # Story identity: fills story_id on the article rows (indexed lookups, not a scan).
        story_index_rows = assign_story_ids(self.con, rows.get("articles", ()))
        tables = {t: self.to_arrow(t, rows.get(t, [])) for t in APPEND_TABLES}
        present = [t for t in APPEND_TABLES if tables[t].num_rows]
        entry_updates = self._entry_updates(rows.get("entry_updates", ()))
        if not present and entry_updates is None:
            return {}
        rewritten: list[str] = []
        if entry_updates is not None:
            keys = entry_updates.column("entry_key").to_pylist()
            days = sorted(r[0].isoformat() for r in self.con.execute(SQL_ENTRY_DAYS_OF, [keys]).fetchall())
            rewritten = [f"entries{PARTITION_MARK}{d}" for d in days]
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for t in present:
                con.register("incoming", tables[t])
                try:
                    con.execute(INSERT_BY_NAME[t])
                finally:
                    con.unregister("incoming")
            if entry_updates is not None:
                con.register("entry_updates", entry_updates)
                try:
                    con.execute(SQL_UPDATE_ENTRIES)
                finally:
                    con.unregister("entry_updates")
            insert_story_index(con, story_index_rows)
            con.execute(SQL_INSERT_BATCH, [load_batch, run_id, datetime.now(UTC), present + rewritten])
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        self._export_batch(load_batch, present + rewritten, tables)
        counts = {t: tables[t].num_rows for t in present}
        if entry_updates is not None:
            counts["entries_updated"] = entry_updates.num_rows
        return counts

    def _entry_updates(self, rows: Sequence[Mapping]) -> pa.Table | None:
        if not rows:
            return None
        schema = self._schema("entries").append(pa.field("page_fetched", pa.bool_()))
        return pa.Table.from_pylist([dict(r) for r in rows], schema=schema)

    def _export_append(self, table: str, load_batch: str, data: pa.Table) -> None:
        by_date: dict[str, list[int]] = defaultdict(list)
        for i, d in enumerate(data.column("ingest_date").to_pylist()):
            by_date[d.isoformat()].append(i)
        body = data.drop_columns(["ingest_date"])
        for day, indices in sorted(by_date.items()):
            part = body.take(pa.array(indices)) if len(indices) != data.num_rows else body
            write_parquet_to(self.storage, f"parquet/{table}/ingest_date={day}/{load_batch}.parquet", part)

    def feed_rows(self, urls: Sequence[str]) -> dict[str, dict]:
        """The stored rows of these feeds (state, validators, schedule), by feed_url."""
        if not urls:
            return {}
        cur = self.con.execute(SQL_FEED_ROWS, [list(urls)])
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}

    def feed_health(self, urls: Sequence[str] | None = None) -> list[dict]:
        """``queries/feed_status.sql`` for these feeds (all when None), failing ones first."""
        sql = files("warehouse").joinpath("queries", "feed_status.sql").read_text()
        cur = self.con.execute(
            sql + SQL_FEED_HEALTH_ORDER, {"feeds": list(urls) if urls is not None else None}
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def upsert_feeds(self, rows: Sequence[Mapping], events: Sequence[Mapping] = ()) -> None:
        """Feeds' new state and the events that led there, in one transaction."""
        if not rows and not events:
            return
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for sql, table, data in (
                (SQL_UPSERT_FEED, "feeds", rows),
                (SQL_INSERT_FEED_EVENTS, "feed_events", events),
            ):
                if not data:
                    continue
                con.register("incoming", self.to_arrow(table, data))
                try:
                    con.execute(sql)
                finally:
                    con.unregister("incoming")
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise

    def record_run(self, row: Mapping) -> None:
        self.con.register("incoming", self.to_arrow("runs", [row]))
        try:
            self.con.execute(SQL_INSERT_RUN)
        finally:
            self.con.unregister("incoming")

    def export_snapshots(self) -> None:
        """Rewrite the small state tables (feeds, runs) as whole Parquet files."""
        for t in SNAPSHOT_TABLES:
            data = self.con.execute(SELECT_ALL[t]).fetch_arrow_table()
            write_parquet_to(self.storage, f"parquet/{t}/{t}.parquet", data)

    def _export_batch(
        self, load_batch: str, tables: Sequence[str], fresh: Mapping[str, pa.Table] | None = None
    ):
        """Write a committed batch's Parquet files (from ``fresh`` rows when given, else from
        DuckDB), rewrite the partitions it changed in place, then mark it exported."""
        rewrites: dict[str, list[date]] = defaultdict(list)
        for t in tables:
            if PARTITION_MARK in t:
                table, day = t.split(PARTITION_MARK, 1)
                rewrites[table].append(date.fromisoformat(day))
            else:
                data = (
                    fresh[t]
                    if fresh and t in fresh
                    else self.con.execute(SELECT_BATCH[t], [load_batch]).fetch_arrow_table()
                )
                self._export_append(t, load_batch, data)
        for table, days in rewrites.items():
            self.rewrite_partitions(table, days)
        self.con.execute(SQL_MARK_EXPORTED, [load_batch])

    def rewrite_partitions(self, table: str, days: Sequence[date]) -> None:
        """Replace partitions' Parquet files with what DuckDB holds for them, atomically for readers."""
        from warehouse.maintenance import replace_partition

        for day in days:
            data = self.con.execute(SQL_PARTITION[table], [day]).fetch_arrow_table()
            replace_partition(self.storage, table, day, data.drop_columns(["ingest_date"]))

    # ------------------------------------------------------------------ re-extraction

    def reextraction_candidates(
        self, since: date | None, until: date | None, feed_url: str | None
    ) -> list[tuple]:
        params = {"since": since, "until": until, "feed": feed_url}
        return self.con.execute(SQL_REEXTRACT_CANDIDATES, params).fetchall()

    def articles_with_entry(self, article_ids: Sequence[str]) -> list[dict]:
        cur = self.con.execute(SQL_ARTICLES_WITH_ENTRY, [list(article_ids)])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def apply_reextraction(
        self, load_batch: str, run_id: str, history: Sequence[Mapping], updates: Sequence[Mapping]
    ) -> int:
        """One transaction: keep the replaced values in extraction_history, update the articles.
        Then the history is exported and the touched articles partitions rewritten."""
        if not updates:
            return 0
        hist = self.to_arrow("extraction_history", history)
        upd = pa.Table.from_pylist(
            [dict(u) for u in updates],
            schema=pa.schema([self._schema("articles").field("article_id")]
                             + [self._schema("articles").field(c) for c in REEXTRACTED_COLUMNS]),
        )  # fmt: skip
        ids = [u["article_id"] for u in updates]
        days = sorted(row[0].isoformat() for row in self.con.execute(SQL_INGEST_DATES_OF, [ids]).fetchall())
        tables = ["extraction_history"] + [f"articles{PARTITION_MARK}{d}" for d in days]
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("incoming", hist)
            con.execute(INSERT_BY_NAME["extraction_history"])
            con.unregister("incoming")
            con.register("incoming", upd)
            con.execute(SQL_UPDATE_EXTRACTION)
            con.unregister("incoming")
            reindex_articles(con, ids)  # the story index follows the new texts
            con.execute(SQL_INSERT_BATCH, [load_batch, run_id, datetime.now(UTC), tables])
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        self._export_batch(load_batch, tables, {"extraction_history": hist})
        return len(updates)

    def recover(self) -> dict[str, int]:
        """Repair what a killed writer left: unexported batches, temporary files (and, when this
        open found the last writer dead, its secondary indexes were rebuilt)."""
        # Only a local directory can hold torn temporaries: elsewhere a file is sent whole, from
        # the spool directory (a raw archive whose upload did not happen is lost with its batch,
        # which was not committed either).
        removed = remove_orphaned_temporaries(self.storage.spool_dir)
        if self.storage.local:
            removed += remove_orphaned_temporaries(self.storage.local_path("parquet"))
            removed += remove_orphaned_temporaries(self.storage.local_path("raw"))
        return {
            "temporary_files_removed": len(removed),
            "batches_reexported": self.export_pending(),
            "indexes_rebuilt": len(self.rebuilt_indexes),
        }

    def export_pending(self) -> int:
        """Export the batches a killed writer committed but did not export (cheap when none)."""
        pending = self.con.execute(SQL_UNEXPORTED).fetchall()
        for load_batch, tables in pending:
            self._export_batch(load_batch, tables)
        return len(pending)


def parquet_glob(location: Path | str | Storage, table: str) -> str:
    """The table's Parquet file (snapshot) or glob (append table), as DuckDB reads it: a path, or
    a URL of the storage's filesystem (register it on the connection: ``Storage.attach``)."""
    storage = as_storage(location)
    if table in SNAPSHOT_TABLES:
        return storage.reader_path("parquet", table, f"{table}.parquet")
    return storage.reader_path("parquet", table, "*", "*.parquet")


# Through SQL with a bound glob, not ``con.read_parquet(glob, hive_partitioning=True, ...)``: in
# duckdb 1.5.5 that call holds the GIL while it lists the files, and a registered fsspec
# filesystem (warehouse/storage.py) needs the GIL to answer: it never returns.
SQL_READ_PARTITIONED = "SELECT * FROM read_parquet($glob, hive_partitioning = true, union_by_name = true)"
SQL_READ_SNAPSHOT = "SELECT * FROM read_parquet($glob)"


def parquet_relation(
    con: duckdb.DuckDBPyConnection, location: Path | str | Storage, table: str
) -> duckdb.DuckDBPyRelation:
    """The table's Parquet rows as a relation of ``con`` (which is made able to read the storage)."""
    storage = as_storage(location)
    storage.attach(con)
    sql = SQL_READ_SNAPSHOT if table in SNAPSHOT_TABLES else SQL_READ_PARTITIONED
    return con.sql(sql, params={"glob": parquet_glob(storage, table)})


def has_parquet(location: Path | str | Storage, table: str) -> bool:
    """Whether the table has any Parquet file."""
    storage = as_storage(location)
    if table in SNAPSHOT_TABLES:
        return storage.exists("parquet", table, f"{table}.parquet")
    if storage.local:  # stops at the first file
        return any(storage.local_path("parquet", table).glob("ingest_date=*/*.parquet"))
    return bool(storage.glob("parquet", table, "ingest_date=*", "*.parquet"))


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@contextmanager
def writer_session(
    data_dir: Path,
    lock_timeout: float,
    purpose: str,
    on_wait: Callable[[str], None] | None = None,
    run_id: str | None = None,
    on_dead_holder: Callable[[dict], None] | None = None,
    storage_url: str | None = None,
) -> Iterator[Warehouse]:
    """The writer lock and a warehouse connection, for one unit of work (a backfill batch).

    Closing the connection matters as much as releasing the lock: DuckDB lets no other process
    open the file, even to read, while this one has it open.
    """
    lock = WriterLock(
        data_dir, lock_timeout, purpose, on_wait=on_wait, run_id=run_id, on_dead_holder=on_dead_holder
    )
    with lock, Warehouse(data_dir, storage_url) as wh:
        # A writer killed between its commit and its export leaves a batch the Parquet files lack:
        # export it before anything (a partition rewrite, say) reads the Parquet side.
        wh.export_pending()
        yield wh
