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

The index knows where each word stands. The extension's postings say only which words each text
holds (at a million articles, 6,325 texts hold both "security" and "guarantee", 986 the phrase,
and reading the candidates' texts, scattered over the whole table, was 1.5 s of a 1.6 s search).
So the build replaces its postings table with the same postings plus each word's position in its
text (:data:`SQL_POSITIONAL_TERMS`: the same rows, checked by the tests through ``match_bm25``),
and a search asks for the texts where the phrase's terms stand at the phrase's own distances from
one another: 1,011 candidates instead of 6,325 there.

Why the index never misses an article the scan finds: a text holding the phrase as whole words
holds, at that place, the very words of the phrase, separated by characters that are neither
letters nor digits. The extension cuts text into words at anything that is not a letter a-z
(after lower-casing and removing accents), so that place of the text is cut into the same words
as the phrase itself, one after the other, with nothing in between (the separators hold no
letter), and at its edges the text's neighbouring words are cut off by the phrase's boundaries
(not a letter or digit). A position counts every word, stop words included, so the distances
between the phrase's indexed terms are the same in the text and in the phrase
(:data:`SQL_PHRASE_TERMS`). Words the index leaves out (its English stop words) are not asked
for; a phrase made only of them, or of no indexable letter at all, is answered by the scan. The
pattern then decides, on the candidates' texts.
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
# The index's postings made again with each word's position in its text (1 for the first word,
# stop words counted, not kept): the rows the extension made (its tokenizer, stop words, stemmer
# and term ids), plus `pos`. In term order: a query then reads only the row groups of its own terms
# (DuckDB's zone maps) instead of every posting (measured at 100,000 articles: 0.42 s -> 0.07 s
# for a two-word phrase). At 100,000 articles this takes 22 s, after the extension's 14 s.
SQL_POSITIONAL_TERMS = """
    CREATE OR REPLACE TABLE fts_main_articles.terms AS
    WITH words AS (
        SELECT docid, unnest(words) AS word, generate_subscripts(words, 1) AS pos
        FROM (SELECT rowid AS docid, fts_main_articles.tokenize(text) AS words FROM articles)
    ),
    kept AS (
        SELECT docid, stem(word, 'porter') AS term, pos FROM words
        WHERE len(word) > 0 AND word NOT IN (SELECT sw FROM fts_main_articles.stopwords)
    )
    SELECT k.docid, CAST(0 AS BIGINT) AS fieldid, d.termid, CAST(k.pos AS INTEGER) AS pos
    FROM kept k JOIN fts_main_articles.dict d ON d.term = k.term
    ORDER BY d.termid, k.docid, k.pos
"""
# Written last: an index without it (a build cut short) is not used.
SQL_MARK_BUILT = (
    "CREATE OR REPLACE TABLE fts_main_articles.newsflow_built AS SELECT ? AS built_at, ? AS articles"
)
SQL_BUILT = "SELECT built_at, articles FROM fts_main_articles.newsflow_built"
# An index counts as built when it was built whole and with positions (one built by newsflow
# before positions is not used: the next maintenance builds it again).
SQL_HAS_BUILT = """
    SELECT count(*) = 2 FROM duckdb_columns()
    WHERE schema_name = 'fts_main_articles'
      AND (table_name, column_name) IN (('newsflow_built', 'built_at'), ('terms', 'pos'))
"""
# The phrase's indexed terms, stemmed, each with its position in the phrase (as the build counts).
SQL_PHRASE_TERMS = """
    WITH words AS (
        SELECT unnest(words) AS word, generate_subscripts(words, 1) AS pos
        FROM (SELECT fts_main_articles.tokenize(?) AS words)
    )
    SELECT stem(word, 'porter') AS term, pos FROM words
    WHERE len(word) > 0 AND word NOT IN (SELECT sw FROM fts_main_articles.stopwords)
    ORDER BY pos
"""
SQL_CHANGED_SINCE = """
    SELECT (SELECT count(*) FROM load_batches WHERE committed_at > $built_at AND list_contains(tables, 'articles'))
         + (SELECT count(*) FROM extraction_history WHERE replaced_at > $built_at)
"""

# The search, in three steps. 1: the articles the index names (the phrase's terms at the phrase's
# distances: their postings grouped by where the phrase would start, each start holding all of
# them; one term missing from the dictionary and no article is named), plus those stored or
# re-extracted after it was built. 2: their rows, fetched by primary key (an index scan:
# warehouse.stories._keys). 3: those that hold the phrase. In one query DuckDB would apply the
# pattern to every text in its scan of `articles`.
SQL_FTS_CANDIDATES = """
    WITH phrase AS (SELECT unnest($terms) AS term, unnest($positions) AS pos),
    hits AS (
        SELECT DISTINCT t.docid
        FROM fts_main_articles.terms t
        JOIN fts_main_articles.dict d ON d.termid = t.termid
        JOIN phrase p ON p.term = d.term
        GROUP BY t.docid, t.pos - p.pos HAVING count(*) = len($terms)
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
    """When the index was last built whole, or None (none, a build cut short, or one built before
    the index kept positions)."""
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
    con.execute(SQL_POSITIONAL_TERMS)
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
    terms = phrase_terms(con, phrase) if built_at is not None and load_fts(con) else []
    if terms:
        found = _candidates(con, terms, built_at)
        with _keys(con, sorted(found), pa.string()):
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


def phrase_terms(con: duckdb.DuckDBPyConnection, phrase: str) -> list[tuple[str, int]]:
    """The phrase's words as the index cuts and stems them, without its stop words, each with its
    position in the phrase (stop words counted): what the index is asked for."""
    return [(r[0], r[1]) for r in con.execute(SQL_PHRASE_TERMS, [phrase]).fetchall()]


def index_candidates(con: duckdb.DuckDBPyConnection, phrase: str) -> set[str]:
    """The articles whose text a search for ``phrase`` reads: those the built index names, and
    those stored or re-extracted since it was built."""
    built_at = index_built_at(con)
    if built_at is None or not load_fts(con):
        raise LookupError("no full-text index with positions: run `newsflow warehouse maintain`")
    return _candidates(con, phrase_terms(con, phrase), built_at)


def _candidates(con: duckdb.DuckDBPyConnection, terms: list[tuple[str, int]], built_at: datetime) -> set[str]:
    params = {"terms": [t for t, _ in terms], "positions": [p for _, p in terms], "built_at": built_at}
    return {r[0] for r in con.execute(SQL_FTS_CANDIDATES, params).fetchall()}
