"""Phrase search over the articles' text: DuckDB's full-text search index when it is there, a scan
of the text when it is not, and the same articles either way.

What a phrase matches: its words, in order, as whole words (not inside a longer word), case
ignored, separated in the text by anything that is neither a letter nor a digit
(:func:`phrase_pattern`). The scan applies that pattern to every article; the index only
narrows the articles the pattern is applied to.

The index is the ``fts`` extension's (``PRAGMA create_fts_index`` over ``articles.text``, schema
``fts_main_articles``), loaded from the ``duckdb-extension-fts`` package (DuckDB-signed, no
download). The extension cannot add documents to an index: it builds it whole, in time
proportional to all the text (minutes for a million articles on two cores). So maintenance builds
it (:func:`build_fts_index`, from ``warehouse.maintenance.checkpoint``), never a poll, and a search
covers what was stored after the build by scanning only those articles: the ones of load batches
committed since, and the ones re-extracted since.

Why the index never misses an article the scan finds: it is asked for the articles holding every
word of the phrase (its stemmed terms, all of them, as ``match_bm25(..., conjunctive := 1)`` would
select them), and a text holding
the phrase as whole words holds each of its words as a term: the extension cuts text at anything
that is not a letter a-z (after lower-casing and removing accents), and the phrase's edges are not
letters or digits. Words the index leaves out (its English stop words) are not asked for; a phrase
made only of them, or of no indexable letter at all, is answered by the scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from warehouse.stories import _keys  # a key table joined through the primary key's ART index

FTS_SCHEMA = "fts_main_articles"
# Each statement is a constant: the schema name is fixed by the extension (fts_main_<table>).
SQL_CREATE_INDEX = (
    "PRAGMA create_fts_index('articles', 'article_id', 'text', stemmer = 'porter', "
    "stopwords = 'english', strip_accents = 1, lower = 1, overwrite = 1)"
)
# The index's postings, one row per word of every text, in term order: a query then reads only the
# row groups of its own terms (DuckDB's zone maps) instead of every posting (measured at 100,000
# articles: 0.42 s -> 0.07 s for a two-word phrase).
SQL_SORT_TERMS = "CREATE OR REPLACE TABLE fts_main_articles.terms AS SELECT * FROM fts_main_articles.terms ORDER BY termid, docid"
# Written last: an index without it (a build cut short) is not used.
SQL_MARK_BUILT = (
    "CREATE OR REPLACE TABLE fts_main_articles.newsflow_built AS SELECT ? AS built_at, ? AS articles"
)
SQL_BUILT = "SELECT built_at, articles FROM fts_main_articles.newsflow_built"
SQL_HAS_BUILT = "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'fts_main_articles' AND table_name = 'newsflow_built'"
SQL_QUERY_TERMS = """
    SELECT DISTINCT t FROM (SELECT unnest(fts_main_articles.tokenize(?)) AS t)
    WHERE t <> '' AND t NOT IN (SELECT sw FROM fts_main_articles.stopwords)
    ORDER BY t
"""
SQL_CHANGED_SINCE = """
    SELECT (SELECT count(*) FROM load_batches WHERE committed_at > $built_at AND list_contains(tables, 'articles'))
         + (SELECT count(*) FROM extraction_history WHERE replaced_at > $built_at)
"""

# The search, in three steps. 1: the articles the index names (every term of the phrase: what
# ``match_bm25(..., conjunctive := 1)`` selects, read from the index's tables directly; the macro
# scores every article of the table, 1.6 s at 1M articles) plus those
# stored or re-extracted after it was built. 2: their rows, fetched by primary key (an index scan:
# warehouse.stories._keys). 3: those that hold the phrase. In one query DuckDB would apply the
# pattern to every text in its scan of `articles`.
SQL_FTS_CANDIDATES = """
    WITH tokens AS (SELECT DISTINCT stem(unnest($terms), 'porter') AS t),
    hits AS (
        SELECT docid FROM fts_main_articles.terms
        WHERE termid IN (SELECT termid FROM fts_main_articles.dict WHERE term IN (SELECT t FROM tokens))
        GROUP BY docid HAVING count(DISTINCT termid) = (SELECT count(*) FROM tokens)
    )
    SELECT d.name AS article_id FROM hits JOIN fts_main_articles.docs d ON d.docid = hits.docid
    UNION
    SELECT article_id FROM articles
    WHERE load_batch IN (SELECT load_batch FROM load_batches WHERE committed_at > $built_at)
       OR article_id IN (SELECT article_id FROM extraction_history WHERE replaced_at > $built_at)
"""
# The README's phrase search (originals; the latest version of each URL, i.e. the version no later
# one of the same article_key follows, unless $all_versions), over the candidates or every article.
_SEARCH_SELECT = """
SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.url, a.article_id, a.version
"""
_SEARCH_WHERE = """
WHERE a.duplicate_of IS NULL
  AND regexp_matches(a.text, $pattern)
  AND ($all_versions OR NOT EXISTS (
        SELECT 1 FROM articles b
        WHERE b.version > 1 AND b.article_key = a.article_key AND b.version > a.version))
ORDER BY a.published_at DESC NULLS LAST, a.article_id
"""
# Alone, so that DuckDB answers it from the primary key (with a filter on the text it scans).
SQL_CANDIDATE_ROWS = """
    SELECT a.article_id, a.article_key, a.version, a.published_at, a.sitename, a.title, a.url, a.feed_url,
           a.duplicate_of, a.text
    FROM story_keys k JOIN articles a ON a.article_id = k.key
"""
SQL_SEARCH_CANDIDATES = (
    _SEARCH_SELECT + "FROM candidate_rows a LEFT JOIN feeds f ON f.feed_url = a.feed_url" + _SEARCH_WHERE
)
SQL_SEARCH_SCAN = (
    _SEARCH_SELECT + "FROM articles a LEFT JOIN feeds f ON f.feed_url = a.feed_url" + _SEARCH_WHERE
)

_WORD = re.compile(r"[^\W_]+")  # letters and digits: what a phrase's words are made of


@dataclass(frozen=True)
class SearchResult:
    columns: list[str]
    rows: list[tuple]
    method: str  # "fts" or "scan"
    index_built_at: datetime | None


def phrase_words(phrase: str) -> list[str]:
    return _WORD.findall(phrase)


def phrase_pattern(phrase: str) -> str:
    """The RE2 pattern of a phrase: its words in order, whole, case ignored, with anything but
    letters and digits between them."""
    words = phrase_words(phrase)
    if not words:
        raise ValueError(f"nothing to search for in {phrase!r}: no letter or digit")
    body = r"[^\pL\pN]+".join(re.escape(w) for w in words)
    return rf"(?i)(?:^|[^\pL\pN]){body}(?:$|[^\pL\pN])"


def fts_extension_path() -> Path | None:
    """The extension file of the ``duckdb-extension-fts`` package for this DuckDB, if installed."""
    try:
        import duckdb_extension_fts
    except ImportError:
        return None
    path = (
        Path(duckdb_extension_fts.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "fts.duckdb_extension"
    )
    return path if path.exists() else None


def load_fts(con: duckdb.DuckDBPyConnection) -> bool:
    """Load the ``fts`` extension (from the package; else one DuckDB has installed itself)."""
    path = fts_extension_path()
    try:
        if path is not None:
            con.execute(f"LOAD '{path}'")  # a path from the installed package, not user input
        else:
            con.execute("LOAD fts")
        return True
    except duckdb.Error:
        return False


def index_built_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When the index was last built whole, or None (none, or a build cut short)."""
    if not con.execute(SQL_HAS_BUILT).fetchone()[0]:
        return None
    return con.execute(SQL_BUILT).fetchone()[0]


@dataclass(frozen=True)
class FtsBuild:
    built: bool
    articles: int = 0
    reason: str | None = None  # why not built


def build_fts_index(con: duckdb.DuckDBPyConnection, now: datetime) -> FtsBuild:
    """Build the index over every article's text, unless nothing changed since the last build.
    Hold the writer lock; maintenance calls it before its checkpoint."""
    if not load_fts(con):
        return FtsBuild(False, reason="the fts extension is not installed (pip install duckdb-extension-fts)")
    built_at = index_built_at(con)
    if built_at is not None and not con.execute(SQL_CHANGED_SINCE, {"built_at": built_at}).fetchone()[0]:
        return FtsBuild(False, reason="no article stored or re-extracted since the last build")
    articles = con.execute("SELECT count(*) FROM articles").fetchone()[0]
    con.execute(SQL_CREATE_INDEX)
    con.execute(SQL_SORT_TERMS)
    con.execute(SQL_MARK_BUILT, [now, articles])
    return FtsBuild(True, articles=articles)


def search(
    con: duckdb.DuckDBPyConnection, phrase: str, all_versions: bool = False, use_index: bool = True
) -> SearchResult:
    """The articles (originals, not duplicates; the latest version of each URL unless
    ``all_versions``) whose text holds ``phrase``, latest published first."""
    pattern = phrase_pattern(phrase)
    params = {"pattern": pattern, "all_versions": all_versions}
    built_at = index_built_at(con) if use_index else None
    terms = _indexable_terms(con, phrase) if built_at is not None and load_fts(con) else []
    if terms:
        found = con.execute(SQL_FTS_CANDIDATES, {"terms": terms, "built_at": built_at}).fetchall()
        with _keys(con, sorted(r[0] for r in found), pa.string()):
            candidates = con.execute(SQL_CANDIDATE_ROWS).to_arrow_table()
        con.register("candidate_rows", candidates)
        try:
            cur = con.execute(SQL_SEARCH_CANDIDATES, params)
            columns, rows = [d[0] for d in cur.description], cur.fetchall()
        finally:
            con.unregister("candidate_rows")
        return SearchResult(columns, rows, "fts", built_at)
    cur = con.execute(SQL_SEARCH_SCAN, params)
    return SearchResult([d[0] for d in cur.description], cur.fetchall(), "scan", None)


def _indexable_terms(con: duckdb.DuckDBPyConnection, phrase: str) -> list[str]:
    """The phrase's words as the index cuts them (its own tokenizer), minus its stop words."""
    return [r[0] for r in con.execute(SQL_QUERY_TERMS, [phrase]).fetchall()]
