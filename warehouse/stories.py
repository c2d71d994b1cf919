"""Story identity, warehouse side: the LSH index (``story_index``), the assignment of a batch's
articles to stories inside the load transaction, and ``recluster``.

The decisions are ``tasks.stories``'s; this module asks DuckDB "which stored articles share these
band keys?" (an ART index lookup on ``story_index.band``: the cost per article does not grow with
the warehouse, see ``benchmarks/story_lookup.py``) and "what are their texts and stories?" (the
``articles`` primary key), and writes the index rows.

Integration (``warehouse/store.py`` ``Warehouse.load_batch``)::

    index_rows = assign_story_ids(self.con, rows.get("articles", ()))   # before the Arrow tables
    ...                                                                  # inside the transaction:
    insert_story_index(con, index_rows)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.resources import files

import duckdb
import pyarrow as pa

from tasks.stories import (
    PARAMS,
    Fingerprint,
    StoredArticle,
    StoryArticle,
    StoryParams,
    assign_batch,
    fingerprint,
    select_candidates,
)

IndexRow = tuple[int, str]  # (band key, article_id)

# Lookups join a registered Arrow table of keys (binding a Python list of thousands of values as a
# parameter costs ~0.1 ms per value). DuckDB turns the join's keys into an IN filter on the scan,
# answered from the ART index, when there are at most ``dynamic_or_filter_threshold`` of them
# (default 50): :func:`_keys` raises it for the query (measured: 6,400 keys against 16M index
# rows, 60 ms with the index, 200-300 ms as a scan).
# The band keys are in two tables (migrations 009, 010): `story_index` (added since the last
# maintenance run, ART-indexed) and `story_index_archive` (the rest, not indexed: DuckDB 1.5.5 writes
# every ART index a process has loaded out at its checkpoint, so the poll that only looked keys up
# in a 32M-key archive index paid for writing it). Each lookup reads both: the first through its
# index, the second as a hash join over its band column (measured at 32M keys: 0.5 s for a batch's
# 6,400 keys; it grows with the archive, about 0.5 s per batch and million articles).
SQL_POSTINGS = """
    SELECT s.band, s.article_id FROM story_keys k JOIN story_index s ON s.band = k.key
    UNION ALL
    SELECT s.band, s.article_id FROM story_keys k JOIN story_index_archive s ON s.band = k.key
"""
SQL_STORED = """
    SELECT a.article_id, a.story_id, coalesce(a.published_at, a.fetched_at) AS placed_at, a.text
    FROM story_keys k JOIN articles a ON a.article_id = k.key
"""
SQL_OR_FILTER_SETTING = "SELECT current_setting('dynamic_or_filter_threshold')"
SQL_INSERT_INDEX = "INSERT INTO story_index SELECT band, article_id FROM story_index_incoming"
SQL_DELETE_INDEX_OF = (
    "DELETE FROM story_index WHERE article_id IN (SELECT key FROM story_keys)",
    "DELETE FROM story_index_archive WHERE article_id IN (SELECT key FROM story_keys)",
)
SQL_CLEAR_INDEX = ("DELETE FROM story_index", "DELETE FROM story_index_archive")
SQL_ARCHIVE_INDEX = (
    "INSERT INTO story_index_archive SELECT band, article_id FROM story_index",
    "DELETE FROM story_index",
)
SQL_CANONICAL_ORDER = """
    SELECT article_id, coalesce(published_at, fetched_at) AS placed_at, story_id
    FROM articles ORDER BY placed_at, article_id
"""
# Recluster's order: canonical order, except that a later version of an article never comes
# before its earlier versions (it takes their story): its time is the latest of theirs and its own.
SQL_RECLUSTER_ORDER = """
    SELECT article_id,
           max(coalesce(published_at, fetched_at)) OVER (
               PARTITION BY article_key ORDER BY version ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
           ) AS placed_at,
           story_id, article_key, version
    FROM articles ORDER BY placed_at, version, article_id
"""
SQL_TEXTS = "SELECT a.article_id, a.text FROM story_keys k JOIN articles a ON a.article_id = k.key"
SQL_UPDATE_STORIES = (
    "UPDATE articles SET story_id = u.story_id FROM story_updates u WHERE articles.article_id = u.article_id"
)
SQL_DAYS_OF = "SELECT DISTINCT a.ingest_date FROM story_updates u JOIN articles a USING (article_id)"
SQL_INSERT_BATCH = "INSERT INTO load_batches VALUES (?, ?, ?, ?, false)"
SQL_COUNTS = """
    SELECT count(*) FILTER (WHERE story_id IS NOT NULL), count(DISTINCT story_id) FROM articles
"""
SQL_INDEX_ROWS = "SELECT (SELECT count(*) FROM story_index) + (SELECT count(*) FROM story_index_archive)"

INDEX_SCHEMA = pa.schema([("band", pa.int64()), ("article_id", pa.string())])
CHUNK = 1000  # articles per step of recluster / rebuild_story_index


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def _keys(con: duckdb.DuckDBPyConnection, keys: Sequence, kind: pa.DataType) -> Iterator[None]:
    """``story_keys(key)`` for the duration of one lookup, answered through the ART index."""
    previous = int(con.execute(SQL_OR_FILTER_SETTING).fetchone()[0])
    con.register("story_keys", pa.table({"key": pa.array(keys, kind)}))
    if len(keys) > previous:
        con.execute(f"SET dynamic_or_filter_threshold = {int(len(keys))}")
    try:
        yield
    finally:
        if len(keys) > previous:
            con.execute(f"SET dynamic_or_filter_threshold = {previous}")
        con.unregister("story_keys")


def postings(con: duckdb.DuckDBPyConnection, bands: Iterable[int]) -> dict[int, list[str]]:
    """Stored articles under each of ``bands`` (one indexed lookup for all of them)."""
    keys = sorted(set(bands))
    out: dict[int, list[str]] = {}
    if not keys:
        return out
    with _keys(con, keys, pa.int64()):
        found = con.execute(SQL_POSTINGS).fetchall()
    for band, article_id in found:
        out.setdefault(band, []).append(article_id)
    return out


def _texts(con: duckdb.DuckDBPyConnection, article_ids: Sequence[str]) -> list[tuple[str, str | None]]:
    with _keys(con, sorted(set(article_ids)), pa.string()):
        return con.execute(SQL_TEXTS).fetchall()


def stored_articles(
    con: duckdb.DuckDBPyConnection,
    article_ids: Iterable[str],
    params: StoryParams = PARAMS,
    story_of: Mapping[str, str] | None = None,
) -> dict[str, StoredArticle]:
    """The candidates' stories, times and fingerprints (from their stored texts). ``story_of``
    overrides the stored story_id (recluster: the stories being rebuilt)."""
    ids = sorted(set(article_ids))
    if not ids:
        return {}
    out = {}
    with _keys(con, ids, pa.string()):
        found = con.execute(SQL_STORED).fetchall()
    for article_id, story_id, placed_at, text in found:
        story = story_of.get(article_id) if story_of is not None else story_id
        if story is None:
            continue
        out[article_id] = StoredArticle(article_id, story, _utc(placed_at), fingerprint(text, params))
    return out


def place(
    con: duckdb.DuckDBPyConnection,
    batch: Sequence[StoryArticle],
    params: StoryParams = PARAMS,
    story_of: Mapping[str, str] | None = None,
    kept_story: Mapping[str, str] | None = None,
):
    """Fingerprint ``batch``, find its candidates in the index, and place it (tasks.stories).
    ``kept_story``: articles whose story is already decided (later versions of an article)."""
    fps: dict[str, Fingerprint | None] = {a.article_id: fingerprint(a.text, params) for a in batch}
    found = postings(con, (b for fp in fps.values() if fp is not None for b in fp.bands))
    candidates = {
        article_id: select_candidates(fp.bands, found, params, exclude=article_id)
        for article_id, fp in fps.items()
        if fp is not None
    }
    stored = stored_articles(con, (c for cs in candidates.values() for c in cs), params, story_of)
    return assign_batch(batch, fps, candidates, stored, params, kept_story)


def assign_story_ids(
    con: duckdb.DuckDBPyConnection, article_rows: Sequence[MutableMapping], params: StoryParams = PARAMS
) -> list[IndexRow]:
    """Fill ``story_id`` in each article row (dicts with article_id, text, published_at,
    fetched_at) and return the ``story_index`` rows to insert with them, in the same transaction
    (:func:`insert_story_index`). Reads only; call it before the rows are turned into Arrow.

    A row of a later version (``version`` > 1) that comes with a ``story_id`` (its earlier
    versions') keeps it, whatever its text; its band keys are indexed all the same, so that later
    copies of the new text find the story."""
    if not article_rows:
        return []
    batch = [
        StoryArticle(r["article_id"], _utc(r.get("published_at") or r.get("fetched_at")), r.get("text"))
        for r in article_rows
    ]
    kept = {
        r["article_id"]: r["story_id"]
        for r in article_rows
        if (r.get("version") or 1) > 1 and r.get("story_id")
    }
    placements = {p.article_id: p for p in place(con, batch, params, kept_story=kept)}
    index_rows: list[IndexRow] = []
    for row in article_rows:
        p = placements[row["article_id"]]
        row["story_id"] = p.story_id
        index_rows.extend((band, p.article_id) for band in p.bands)
    return index_rows


def insert_story_index(con: duckdb.DuckDBPyConnection, index_rows: Sequence[IndexRow]) -> int:
    if not index_rows:
        return 0
    data = pa.Table.from_arrays(
        [pa.array([b for b, _ in index_rows], pa.int64()), pa.array([a for _, a in index_rows], pa.string())],
        schema=INDEX_SCHEMA,
    )
    con.register("story_index_incoming", data)
    try:
        con.execute(SQL_INSERT_INDEX)
    finally:
        con.unregister("story_index_incoming")
    return len(index_rows)


def _index_rows_of(
    con: duckdb.DuckDBPyConnection, article_ids: Sequence[str], params: StoryParams
) -> list[IndexRow]:
    rows: list[IndexRow] = []
    for article_id, text in _texts(con, article_ids):
        fp = fingerprint(text, params)
        if fp is not None:
            rows.extend((band, article_id) for band in fp.bands)
    return rows


def reindex_articles(
    con: duckdb.DuckDBPyConnection, article_ids: Sequence[str], params: StoryParams = PARAMS
) -> int:
    """Replace the index rows of articles whose text changed (re-extraction); their story_id
    stays until the next recluster. Call inside the transaction that changed the texts."""
    if not article_ids:
        return 0
    with _keys(con, sorted(set(article_ids)), pa.string()):
        for sql in SQL_DELETE_INDEX_OF:
            con.execute(sql)
    return insert_story_index(con, _index_rows_of(con, article_ids, params))


def rebuild_story_index(con: duckdb.DuckDBPyConnection, params: StoryParams = PARAMS) -> int:
    """Recompute every article's index rows from its stored text, keeping the stories as they are
    (after ``newsflow warehouse rebuild``: the index is not in Parquet). Returns the rows written."""
    for sql in SQL_CLEAR_INDEX:
        con.execute(sql)
    ids = [r[0] for r in con.execute(SQL_CANONICAL_ORDER).fetchall() if r[2] is not None]
    written = 0
    for start in range(0, len(ids), CHUNK):
        written += insert_story_index(con, _index_rows_of(con, ids[start : start + CHUNK], params))
    return written


def archive_story_index(con: duckdb.DuckDBPyConnection) -> int:
    """Move the band keys added since the last run into ``story_index_archive``, in one
    transaction; maintenance does it before its checkpoint. Polls only ever add to the small,
    indexed ``story_index``: DuckDB 1.5.5 writes a changed (or merely loaded) ART index out whole
    at a checkpoint, so the one that ends a poll costs what a day's keys cost, not what the whole
    history's would (``benchmarks/growth.py``). Returns the rows moved."""
    moved = con.execute("SELECT count(*) FROM story_index").fetchone()[0]
    if not moved:
        return 0
    con.execute("BEGIN TRANSACTION")
    try:
        for sql in SQL_ARCHIVE_INDEX:
            con.execute(sql)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return moved


# --------------------------------------------------------------------------- recluster


@dataclass
class ReclusterReport:
    articles: int = 0  # articles placed in a story
    stories: int = 0
    changed: int = 0  # articles whose story_id changed
    index_rows: int = 0
    partitions_rewritten: list[str] = field(default_factory=list)
    load_batch: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def recluster(wh, run_id: str, load_batch: str, params: StoryParams = PARAMS) -> ReclusterReport:
    """Rebuild every story from scratch: the articles in canonical order (time, article_id), each
    placed by the same function as at load time against the ones before it. Idempotent: with the
    same texts and parameters nothing changes and nothing is rewritten.

    A later version of an article keeps the story of its earlier versions (as at load time): the
    versions of an article are replayed in version order, each after the one before.

    One transaction: the index is rebuilt, the changed story_ids are updated and a ``load_batches``
    row names the ``articles`` partitions to rewrite (``articles@<day>``), which are then rewritten
    from DuckDB (a crash in between is repaired by ``Warehouse.recover``). Hold the writer lock.
    ``wh`` is a ``warehouse.store.Warehouse``."""
    started = time.monotonic()
    con = wh.con
    report = ReclusterReport()
    con.execute("BEGIN TRANSACTION")
    try:
        order = con.execute(SQL_RECLUSTER_ORDER).fetchall()
        old = {article_id: story_id for article_id, _, story_id, _, _ in order}
        for sql in SQL_CLEAR_INDEX:
            con.execute(sql)
        new: dict[str, str] = {}
        story_of_article: dict[str, str] = {}  # article_key -> the story of its versions so far
        for chunk in _version_safe_chunks(order):
            texts = dict(_texts(con, [r[0] for r in chunk]))
            batch = [StoryArticle(a, _utc(t), texts.get(a)) for a, t, _, _, _ in chunk]
            kept = {
                a: story_of_article[key]
                for a, _, _, key, version in chunk
                if version > 1 and key in story_of_article
            }
            key_of = {a: key for a, _, _, key, _ in chunk}
            index_rows: list[IndexRow] = []
            for p in place(con, batch, params, story_of=new, kept_story=kept):
                if p.story_id is not None:
                    new[p.article_id] = p.story_id
                    story_of_article[key_of[p.article_id]] = p.story_id
                index_rows.extend((band, p.article_id) for band in p.bands)
            report.index_rows += insert_story_index(con, index_rows)
        changed = sorted(a for a in old if new.get(a) != old[a])
        report.articles, report.stories, report.changed = len(new), len(set(new.values())), len(changed)
        if changed:
            updates = pa.table(
                {"article_id": pa.array(changed, pa.string()), "story_id": [new.get(a) for a in changed]}
            )
            con.register("story_updates", updates)
            try:
                con.execute(SQL_UPDATE_STORIES)
                days = sorted(r[0].isoformat() for r in con.execute(SQL_DAYS_OF).fetchall())
            finally:
                con.unregister("story_updates")
            report.partitions_rewritten = [f"articles@{d}" for d in days]
            report.load_batch = load_batch
            con.execute(
                SQL_INSERT_BATCH, [load_batch, run_id, datetime.now(UTC), report.partitions_rewritten]
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if report.partitions_rewritten:
        wh._export_batch(load_batch, report.partitions_rewritten)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _version_safe_chunks(order: Sequence[tuple]) -> Iterator[Sequence[tuple]]:
    """Chunks of at most CHUNK rows (article_id, time, story_id, article_key, version) in which no
    article has two versions: a later version is placed once its earlier one has its story."""
    chunk: list[tuple] = []
    keys: set[str] = set()
    for row in order:
        if len(chunk) >= CHUNK or row[3] in keys:
            yield chunk
            chunk, keys = [], set()
        chunk.append(row)
        keys.add(row[3])
    if chunk:
        yield chunk


def story_views_sql() -> str:
    """The ``articles_latest``, ``story_articles`` and ``stories`` views as migration 011 (the
    latest to define them) creates them, for a connection over the Parquet files
    (``warehouse.queries.parquet_connection``, while a writer holds DuckDB)."""
    sql = files("warehouse").joinpath("migrations", "011_faster_views.sql").read_text()
    # Plain CREATE: on a connection that has them already, nothing is replaced (and it says so).
    return sql[sql.index("CREATE OR REPLACE VIEW articles_latest") :].replace(
        "CREATE OR REPLACE VIEW", "CREATE VIEW"
    )


def create_story_views(con: duckdb.DuckDBPyConnection) -> bool:
    """Create the story views on a Parquet connection that has ``articles`` and ``feeds``."""
    try:
        con.execute(story_views_sql())
    except duckdb.CatalogException:  # no articles or feeds yet, or articles without story_id
        return False
    except duckdb.BinderException:
        return False
    return True


def story_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    placed, stories = con.execute(SQL_COUNTS).fetchone()
    return {"articles": placed, "stories": stories, "index_rows": con.execute(SQL_INDEX_ROWS).fetchone()[0]}
