"""Warehouses that already hold N articles, generated fast, as polls and maintenance leave them.

Used by ``growth.py`` (a poll into each) and ``queries.py`` (the README's queries over 1M).

    python benchmarks/growth_data.py --size 100000          # build (or reuse) one, print its path

What is generated, for N article rows (``N`` = 0, 10k, 100k, 1M), through the real migrations:

- ``articles``: N rows over 365 days before ``END``, 200 feeds of 100 outlets, every column a poll
  fills (ids are ``tasks.dedup.article_id_for`` / ``entry_key_for``, computed in SQL with the same
  SHA-256). Texts: 6-10 paragraphs of 25-55 words drawn (Zipf) from 4,000 made-up words; every
  10th article is a syndicated copy of another (a partner line on top, 5 % of the words replaced:
  same story), every 50th an exact copy (``duplicate_of``, ``content_hash``), every 200th a
  second version of the article before it (``version`` 2, a paragraph added), one in 997
  mentions "security guarantee". ``content_hash`` is ``tasks.dedup.content_hash`` of the text.
- ``story_index``: the 32 band keys of every text, computed as ``tasks.stories.fingerprint``
  does (vectorised over a chunk of texts; a sample is checked against ``fingerprint`` itself, and
  the build stops if one differs). ``story_id``: the original's for copies and versions.
- ``entries`` (one per first version), ``fetch_log`` (one page fetch per article row, 50 feed
  fetches per run), ``runs`` (one per 1,000 articles), ``load_batches`` (200 articles per batch,
  plus a feed batch per run, all exported), ``feeds`` (200 plus the benchmark's loopback feeds),
  ``feed_events``.
- Parquet: each append table's partitions as maintenance leaves past days (one
  ``compacted-<id>.parquet`` per ``ingest_date``), the snapshot files, and the DuckDB file
  checkpointed.

Not generated: the raw WARC archive (``raw_path``/``raw_offset`` name files as a poll would; no
poll reads them, only ``backfill --reextract`` does), ``robots_cache`` and ``host_state``.

Each warehouse is cached under ``/tmp/newsflow-growth/`` (keyed by size and ``GENERATOR_VERSION``)
and copied before use, so reruns skip the build.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tasks.dedup import content_hash  # noqa: E402
from tasks.stories import PARAMS, _band_seeds, _mix, _word_hash, fingerprint, same_story  # noqa: E402
from warehouse.store import connect, migrate  # noqa: E402

CACHE_ROOT = Path("/tmp/newsflow-growth")
END = datetime(2026, 11, 1, tzinfo=UTC)  # the generated history ends here (a month ago)
DAYS = 365
FEEDS = 200
OUTLETS = 100
ARTICLES_PER_RUN = 1000
BATCH = 200
FEED_FETCHES_PER_RUN = 50
VOCAB_SIZE = 4000
CHUNK = 20_000
PHRASE = ("security", "guarantee")
PHRASE_EVERY = 997
PHRASE_RANKS = (300, 1200)  # where the phrase's words sit in the vocabulary (by frequency)

# The benchmark's loopback sites (growth.py serves them): their feeds are in the warehouse too.
BENCH_SITES = 10
BENCH_PORT = 18457


def bench_host(n: int) -> str:
    return f"127.77.0.{n + 1}"


def bench_feed_url(n: int) -> str:
    return f"http://{bench_host(n)}:{BENCH_PORT}/rss.xml"


# --------------------------------------------------------------------------- texts


def vocabulary() -> list[str]:
    """4,000 pronounceable made-up words (letters only: one token each for the tokenisers)."""
    rng = np.random.default_rng(7)
    onsets = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "st"]
    words: list[str] = []
    seen = set(PHRASE)
    while len(words) < VOCAB_SIZE - len(PHRASE):
        syllables = int(rng.integers(1, 4))
        w = "".join(
            onsets[rng.integers(len(onsets))]
            + vowels[rng.integers(len(vowels))]
            + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    # "security" and "guarantee" are ordinary words too, of middling frequency (in about 12 % and
    # 4 % of the texts): a phrase search cannot simply take every text holding both words.
    words.insert(PHRASE_RANKS[0], PHRASE[0])
    words.insert(PHRASE_RANKS[1], PHRASE[1])
    return words


VOCAB = vocabulary()
VOCAB_HASH = np.array([_word_hash(w) for w in VOCAB], dtype=np.uint64)
_ZIPF = 1.0 / np.arange(1, VOCAB_SIZE + 1) ** 0.9
ZIPF_CDF = np.cumsum(_ZIPF / _ZIPF.sum())


def zipf_words(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(ZIPF_CDF, rng.random(n)), VOCAB_SIZE - 1)


class Doc:
    """One text as paragraphs of word indices (into VOCAB), plus lines that are not paragraphs."""

    __slots__ = ("paragraphs", "header")

    def __init__(self, paragraphs: list[np.ndarray], header: str | None = None):
        self.paragraphs = paragraphs
        self.header = header

    def text(self) -> str:
        lines = [self.header] if self.header else []
        for p in self.paragraphs:
            words = [VOCAB[i] for i in p]
            words[0] = words[0].capitalize()
            lines.append(" ".join(words) + ".")
        return "\n".join(lines)

    def words(self) -> np.ndarray:
        return np.concatenate(self.paragraphs)

    def normalized(self) -> str:
        """tasks.dedup.normalize_text of text(): the words, case-folded, one space apart."""
        head = self.header.casefold().split() if self.header else []
        return " ".join([*head, *(VOCAB[i] for i in self.words())])


def random_doc(rng: np.random.Generator, phrase: bool) -> Doc:
    paragraphs = [zipf_words(rng, int(rng.integers(25, 56))) for _ in range(int(rng.integers(6, 11)))]
    if phrase:
        p = paragraphs[int(rng.integers(len(paragraphs)))]
        at = int(rng.integers(0, len(p) - 2))
        p[at], p[at + 1] = PHRASE_RANKS  # the phrase
    return Doc(paragraphs)


def syndicated(doc: Doc, rng: np.random.Generator, outlet: int) -> Doc:
    """A partner's copy: a short line on top, 5 % of the words replaced."""
    out = []
    for p in doc.paragraphs:
        q = p.copy()
        hit = rng.random(len(q)) < 0.05
        q[hit] = zipf_words(rng, int(hit.sum()))
        out.append(q)
    return Doc(out, header=f"From our partners at Outlet {outlet}")


def new_version(doc: Doc, rng: np.random.Generator) -> Doc:
    extra = zipf_words(rng, 40)
    return Doc([*doc.paragraphs, extra], header=doc.header)


def title_of(rng: np.random.Generator) -> str:
    words = [VOCAB[i] for i in zipf_words(rng, int(rng.integers(5, 10)))]
    return " ".join(words).capitalize()


def band_rows(docs: list[Doc | None], article_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """The story_index rows of these texts, as ``tasks.stories.fingerprint`` computes them: the
    paragraph words (the header line has fewer than 8 words: dropped), 4-word shingles, 32
    min-hashes. Vectorised over all the texts at once."""
    keep = [(d, a) for d, a in zip(docs, article_ids, strict=True) if d is not None]
    if not keep:
        return np.empty(0, np.int64), []
    words = [d.words() for d, _ in keep]
    lengths = np.array([len(w) for w in words])
    h = VOCAB_HASH[np.concatenate(words)]
    k = PARAMS.shingle
    n = len(h) - k + 1
    acc = np.zeros(n, dtype=np.uint64)
    poly = np.uint64(0x100000001B3)
    for j in range(k):
        acc = acc * poly + h[j : j + n]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # shingle p belongs to the text starting at s when s <= p <= s + length - k
    valid_counts = lengths - k + 1
    idx = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, valid_counts, strict=True)])
    shingles = _mix(acc[idx])
    seg = np.concatenate([[0], np.cumsum(valid_counts)[:-1]])
    seeds, salts = _band_seeds(PARAMS.bands)
    keys = np.empty((len(keep), PARAMS.bands), dtype=np.uint64)
    for b in range(PARAMS.bands):
        keys[:, b] = np.minimum.reduceat(_mix(shingles ^ seeds[b]), seg)
    keys = _mix(keys ^ salts[None, :]).view(np.int64)
    ids = [a for _, a in keep for _ in range(PARAMS.bands)]
    return keys.reshape(-1), ids


# --------------------------------------------------------------------------- rows


def plan(size: int) -> dict[str, np.ndarray]:
    """What each article row is: original, syndicated copy, exact copy, second version."""
    i = np.arange(size)
    kind = np.zeros(size, dtype=np.int8)  # 0 original
    kind[(i % 10 == 9)] = 1  # syndicated copy of row i - 4
    kind[(i % 50 == 24)] = 2  # exact copy of row i - 3
    kind[(i % 200 == 101)] = 3  # second version of row i - 1
    return {"i": i, "kind": kind}


def source_row(i: int, kind: int) -> int:
    return {1: i - 4, 2: i - 3, 3: i - 1}.get(kind, i)


def docs_for(start: int, stop: int, kinds: np.ndarray, cache: dict[int, Doc]) -> list[Doc]:
    """The texts of rows start..stop-1 (each row's generator is seeded by its number, so any row
    can be made again on its own)."""
    out = []
    for i in range(start, stop):
        out.append(doc_of(i, int(kinds[i]), cache))
    return out


def doc_of(i: int, kind: int, cache: dict[int, Doc] | None = None) -> Doc:
    if cache is not None and i in cache:
        return cache[i]
    rng = np.random.default_rng([11, i])
    if kind == 0:
        doc = random_doc(rng, phrase=i % PHRASE_EVERY == 0)
    else:
        src = source_row(i, kind)
        base = doc_of(src, 0 if kind != 3 else 0, cache)
        if kind == 1:
            doc = syndicated(base, rng, outlet=(i % FEEDS) // 2)
        elif kind == 2:
            doc = base
        else:
            doc = new_version(base, rng)
    if cache is not None:
        cache[i] = doc
    return doc


GEN_SCHEMA = pa.schema(
    [("i", pa.int64()), ("kind", pa.int8()), ("title", pa.string()), ("text", pa.string()),
     ("content_hash", pa.string())]
)  # fmt: skip
INDEX_SCHEMA = pa.schema([("band", pa.int64()), ("i", pa.int64())])

# Every column of `articles` from the generated texts (gen) and the row number. Ids use the same
# SHA-256 as tasks.dedup.article_id_for / entry_key_for (checked in build()).
SQL_ARTICLES = """
INSERT INTO articles BY NAME
WITH base AS (
    SELECT g.i, g.kind, g.title, g.text, g.content_hash,
           CASE WHEN g.kind = 3 THEN g.i - 1 ELSE g.i END AS url_row,
           CASE WHEN g.kind = 1 THEN g.i - 4 WHEN g.kind = 2 THEN g.i - 3 WHEN g.kind = 3 THEN g.i - 1 ELSE g.i END AS src,
           $end - to_microseconds(CAST(CAST($size - g.i AS DOUBLE) * $span_us / $size AS BIGINT)) AS fetched_at
    FROM gen g
), keyed AS (
    SELECT *, url_row % 200 AS feed_no, (url_row % 200) // 2 AS outlet,
           'https://outlet' || ((url_row % 200) // 2) || '.example/news/' || url_row || '-story' AS url_key
    FROM base
)
SELECT
    CASE WHEN kind = 3 THEN sha256(url_key || chr(10) || 'version 2')[:20] ELSE sha256(url_key)[:20] END AS article_id,
    sha256(url_key)[:20] AS article_key,
    CASE WHEN kind = 3 THEN 2 ELSE 1 END AS version,
    url_key || '?utm_source=rss' AS url,
    url_key,
    url_key AS final_url,
    url_key AS canonical_url,
    'https://outlet' || outlet || '.example/feeds/' || feed_no || '.xml' AS feed_url,
    sha256('https://outlet' || outlet || '.example/feeds/' || feed_no || '.xml' || chr(10) || 'guid-' || url_row)[:24] AS entry_key,
    'guid-' || url_row AS guid,
    title,
    'Reporter ' || (url_row % 977) AS author,
    fetched_at - INTERVAL 40 MINUTE AS published_at,
    'en' AS language,
    'Outlet ' || outlet AS sitename,
    left(text, 160) AS description,
    ['news'] AS categories,
    CAST([] AS VARCHAR[]) AS tags,
    'https://outlet' || outlet || '.example/img/' || url_row || '.jpg' AS image,
    text,
    length(text) AS text_chars,
    content_hash,
    CASE WHEN kind = 2 THEN sha256('https://outlet' || ((src % 200) // 2) || '.example/news/' || src || '-story')[:20] END AS duplicate_of,
    CASE WHEN kind = 2 THEN 'content_hash' END AS duplicate_reason,
    200 AS http_status,
    fetched_at,
    'raw/' || strftime(fetched_at, '%Y-%m-%d') || '/' || batch_id(i) || '.warc.gz' AS raw_path,
    1024 + (i % 200) * 9000 AS raw_offset,
    'trafilatura' AS extractor,
    'trafilatura 2.3.1' AS extractor_version,
    $options AS extractor_options,
    CAST(NULL AS VARCHAR) AS extraction_error,
    run_id(i) AS run_id,
    batch_id(i) AS load_batch,
    CAST(fetched_at AS DATE) AS ingest_date,
    sha256('https://outlet' || ((src % 200) // 2) || '.example/news/' || (CASE WHEN kind = 3 THEN src ELSE src END) || '-story')[:20] AS story_id
FROM keyed
"""
SQL_MACROS = """
CREATE OR REPLACE TEMP MACRO run_no(i) AS i // 1000;
CREATE OR REPLACE TEMP MACRO run_id(i) AS md5('run-' || (i // 1000));
CREATE OR REPLACE TEMP MACRO run_start(i) AS $end - to_microseconds(CAST(CAST($size - (i // 1000) * 1000 AS DOUBLE) * $span_us / $size AS BIGINT));
CREATE OR REPLACE TEMP MACRO batch_id(i) AS
    strftime(run_start(i), '%Y%m%dT%H%M%S') || '-' || md5('run-' || (i // 1000))[:8] || '-' || lpad(CAST((i % 1000) // 200 + 1 AS VARCHAR), 4, '0');
"""
SQL_ENTRIES = """
INSERT INTO entries BY NAME
SELECT entry_key, feed_url, guid, url AS link, url_key AS link_key, title, published_at,
       CAST(NULL AS TIMESTAMPTZ) AS updated_at, left(text, 200) AS summary, author, categories,
       CAST([] AS STRUCT(url VARCHAR, type VARCHAR, length BIGINT)[]) AS enclosures,
       article_id, NULL AS duplicate_of, NULL AS duplicate_reason, 'fetched' AS status,
       fetched_at - INTERVAL 2 SECOND AS first_seen_at, run_id, load_batch, ingest_date
FROM articles WHERE version = 1
"""
SQL_PAGE_FETCHES = """
INSERT INTO fetch_log BY NAME
SELECT load_batch || '-p' || lpad(CAST(row_number() OVER (PARTITION BY load_batch ORDER BY article_id) - 1 AS VARCHAR), 5, '0') AS fetch_id,
       run_id, 'page' AS kind, url, final_url, 200 AS status, 40000 + text_chars AS bytes, 120 AS elapsed_ms,
       1 AS attempts, CAST([] AS VARCHAR[]) AS redirects, NULL AS error_class, NULL AS error_message,
       fetched_at, raw_path, raw_offset, load_batch, ingest_date
FROM articles
"""
SQL_RUNS = """
INSERT INTO runs BY NAME
SELECT run_id(min(i)) AS run_id, 'poll' AS flow, run_start(min(i)) AS started_at,
       run_start(min(i)) + INTERVAL 3 MINUTE AS finished_at, 50 AS feeds_polled, 5 AS feeds_not_modified,
       0 AS feeds_failed, count(*) AS new_entries, count(*) AS pages_fetched, 0 AS pages_failed,
       count(*) AS articles_extracted, count(*) FILTER (WHERE kind = 2) AS duplicates, 'completed' AS status,
       200 AS feeds_listed, 50 AS feeds_due, 0 AS feeds_backed_off, 0 AS feeds_dead, 0 AS feeds_retired,
       0 AS entries_left_for_next_run, 0 AS skipped_known, count(*) FILTER (WHERE kind = 3) AS new_versions,
       0 AS refetched_unchanged
FROM gen_all GROUP BY i // 1000
"""
SQL_FEED_FETCHES = """
INSERT INTO fetch_log BY NAME
SELECT batch || '-f' || lpad(CAST(f AS VARCHAR), 5, '0') AS fetch_id, run_id, 'feed' AS kind,
       'https://outlet' || ((r * 50 + f) % 200 // 2) || '.example/feeds/' || ((r * 50 + f) % 200) || '.xml' AS url,
       'https://outlet' || ((r * 50 + f) % 200 // 2) || '.example/feeds/' || ((r * 50 + f) % 200) || '.xml' AS final_url,
       200 AS status, 60000 AS bytes, 90 AS elapsed_ms, 1 AS attempts, CAST([] AS VARCHAR[]) AS redirects,
       NULL AS error_class, NULL AS error_message, started_at + INTERVAL 170 SECOND AS fetched_at,
       'raw/' || strftime(started_at, '%Y-%m-%d') || '/' || batch || '.warc.gz' AS raw_path,
       1024 + f * 60000 AS raw_offset, batch AS load_batch, CAST(started_at + INTERVAL 170 SECOND AS DATE) AS ingest_date
FROM (
    SELECT run_id, started_at, row_number() OVER (ORDER BY started_at) - 1 AS r,
           strftime(started_at, '%Y%m%dT%H%M%S') || '-' || run_id[:8] || '-' || lpad(CAST(pages_batches + 1 AS VARCHAR), 4, '0') AS batch
    FROM (SELECT run_id, started_at, CAST(ceil(pages_fetched / 200) AS INTEGER) AS pages_batches FROM runs)
), range(50) t(f)
"""
SQL_LOAD_BATCHES = """
INSERT INTO load_batches
SELECT load_batch, any_value(run_id), max(fetched_at) + INTERVAL 1 SECOND,
       CASE WHEN any_value(kind) = 'feed' THEN ['fetch_log'] ELSE ['entries', 'articles', 'fetch_log'] END, true
FROM fetch_log GROUP BY load_batch
"""
SQL_FEEDS = """
INSERT INTO feeds BY NAME
SELECT 'https://outlet' || (f // 2) || '.example/feeds/' || f || '.xml' AS feed_url, 'Outlet ' || (f // 2) || ' ' || f AS name,
       ['news'] AS tags, 'Outlet ' || (f // 2) AS title, 'https://outlet' || (f // 2) || '.example/' AS site_url,
       'rss20' AS format, 'en' AS language, '"' || md5('etag' || f) || '"' AS etag, NULL AS last_modified,
       md5('body' || f) AS body_hash, 200 AS last_status, $end AS last_fetched_at, $end AS last_success_at,
       NULL AS last_error_class, NULL AS last_error, 0 AS consecutive_failures,
       (SELECT count(*) FROM entries e WHERE e.feed_url = 'https://outlet' || (f // 2) || '.example/feeds/' || f || '.xml') AS entries_seen,
       $end - INTERVAL 365 DAY AS added_at, 'active' AS state, $end - INTERVAL 30 DAY AS state_changed_at,
       $end + INTERVAL 1 HOUR AS next_due_at, 3600 AS poll_interval_s, NULL AS hint_interval_s, NULL AS fetch_url,
       NULL AS first_failure_at, $end - INTERVAL 1 HOUR AS last_new_entry_at, 13.5 AS new_per_day
FROM range(200) t(f)
UNION ALL
SELECT u AS feed_url, 'Bench site ' || n AS name, ['bench'] AS tags, 'Bench site ' || n AS title,
       replace(u, '/rss.xml', '/') AS site_url, 'rss20' AS format, 'en' AS language, '"stale"' AS etag, NULL AS last_modified,
       md5('stale' || n) AS body_hash, 200 AS last_status, $end AS last_fetched_at, $end AS last_success_at,
       NULL AS last_error_class, NULL AS last_error, 0 AS consecutive_failures, 0 AS entries_seen,
       $end - INTERVAL 365 DAY AS added_at, 'active' AS state, $end - INTERVAL 30 DAY AS state_changed_at,
       $end + INTERVAL 1 HOUR AS next_due_at, 3600 AS poll_interval_s, NULL AS hint_interval_s, NULL AS fetch_url,
       NULL AS first_failure_at, $end - INTERVAL 1 HOUR AS last_new_entry_at, 10.0 AS new_per_day
FROM (SELECT unnest($bench_feeds) AS u, generate_subscripts($bench_feeds, 1) AS n)
"""
SQL_FEED_EVENTS = """
INSERT INTO feed_events BY NAME
SELECT md5('event' || f || e) AS event_id, 'https://outlet' || (f // 2) || '.example/feeds/' || f || '.xml' AS feed_url,
       $end - to_days(CAST(100 - f - e AS INTEGER)) AS event_at, CASE e WHEN 0 THEN 'backoff' ELSE 'recovered' END AS event,
       CASE e WHEN 0 THEN 'http_5xx: HTTP 503' END AS detail, md5('run-0') AS run_id
FROM range(20) t(f), range(2) s(e)
"""


def _options_json() -> str:
    from tasks.extract import EXTRACTOR_OPTIONS_JSON

    return EXTRACTOR_OPTIONS_JSON


def build(path: Path, size: int, log=print) -> dict:
    """Generate the warehouse of ``size`` article rows into ``path`` (a new directory)."""
    started = time.perf_counter()
    path.mkdir(parents=True)
    con = connect(path / "newsflow.duckdb")
    migrate(con)
    params = {"end": END, "size": max(size, 1), "span_us": DAYS * 86400 * 10**6}
    _macros(con, params)
    if size:
        con.execute("DROP INDEX story_index_band")  # bulk load, then build the ART index once
        kinds = plan(size)["kind"]
        cache: dict[int, Doc] = {}
        checked = 0
        for start in range(0, size, CHUNK):
            stop = min(size, start + CHUNK)
            docs = docs_for(start, stop, kinds, cache)
            for i in [k for k in list(cache) if k < start - 10]:
                del cache[i]
            rng = np.random.default_rng([13, start])
            texts = [d.text() for d in docs]
            hashes = [hashlib.sha256(d.normalized().encode()).hexdigest() for d in docs]
            gen = pa.table(
                {
                    "i": pa.array(range(start, stop), pa.int64()),
                    "kind": pa.array(kinds[start:stop], pa.int8()),
                    "title": [title_of(rng) for _ in range(stop - start)],
                    "text": texts,
                    "content_hash": hashes,
                },
                schema=GEN_SCHEMA,
            )
            con.register("gen", gen)
            con.execute(SQL_ARTICLES, {**params, "options": _options_json()})
            con.unregister("gen")
            # story_index: the band keys of every text, by row number, then turned into article ids
            band, _ = band_rows(docs, [str(i) for i in range(start, stop)])
            rows_i = np.repeat(np.arange(start, stop), PARAMS.bands)
            con.register("bands", pa.table({"band": band, "i": rows_i}, schema=INDEX_SCHEMA))
            con.execute(SQL_INDEX_FROM_ROWS)
            con.unregister("bands")
            # the vectorised fingerprint must be tasks.stories.fingerprint: checked on a sample
            for j in [*range(0, stop - start, 997), *range(9, stop - start, 9973)]:
                expected = fingerprint(texts[j])
                assert (
                    expected is not None
                    and tuple(int(b) for b in band[j * 32 : j * 32 + 32]) == expected.bands
                ), f"generated band keys of row {start + j} differ from tasks.stories.fingerprint"
                assert content_hash(texts[j]) == hashes[j], f"content_hash of row {start + j} differs"
                if kinds[start + j] == 1:  # a syndicated copy is the same story as its original
                    assert same_story(texts[j], doc_of(start + j - 4, 0).text()), f"row {start + j}"
                checked += 1
            log(f"  {stop:,} / {size:,} articles ({time.perf_counter() - started:.0f} s)")
        con.execute("CREATE INDEX story_index_band ON story_index (band)")
        con.register(
            "gen_all", pa.table({"i": pa.array(range(size), pa.int64()), "kind": pa.array(kinds, pa.int8())})
        )
        con.execute(SQL_RUNS)
        con.unregister("gen_all")
        con.execute(SQL_ENTRIES)
        con.execute(SQL_PAGE_FETCHES)
        con.execute(SQL_FEED_FETCHES)
        con.execute(SQL_LOAD_BATCHES)
        _check_ids(con)
    bench_feeds = [bench_feed_url(n) for n in range(BENCH_SITES)]
    if size:
        con.execute(SQL_FEEDS, {"end": END, "bench_feeds": bench_feeds})
        con.execute(SQL_FEED_EVENTS, {"end": END})
    con.execute("CHECKPOINT")
    _export_parquet(con, path)
    con.close()
    as_maintenance_leaves_it(path)
    con = connect(path / "newsflow.duckdb")
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
        for t in ("articles", "entries", "fetch_log", "story_index", "runs", "feeds", "load_batches")
    }
    con.close()
    return {"size": size, "counts": counts, "build_seconds": round(time.perf_counter() - started, 1)}


SQL_INDEX_FROM_ROWS = """
INSERT INTO story_index
SELECT b.band, CASE WHEN g.kind = 3 THEN sha256(g.url_key || chr(10) || 'version 2')[:20] ELSE sha256(g.url_key)[:20] END
FROM bands b JOIN (
    SELECT i, CASE WHEN i % 200 = 101 THEN 3 ELSE 0 END AS kind,
           'https://outlet' || (((CASE WHEN i % 200 = 101 THEN i - 1 ELSE i END) % 200) // 2) || '.example/news/'
           || (CASE WHEN i % 200 = 101 THEN i - 1 ELSE i END) || '-story' AS url_key
    FROM (SELECT DISTINCT i FROM bands)
) g USING (i)
"""


def _macros(con, params: dict) -> None:
    end = f"TIMESTAMPTZ '{params['end'].isoformat()}'"
    # DuckDB takes no parameters in a macro's body: the constants are written in.
    sql = (
        SQL_MACROS.replace("$end", end)
        .replace("$size", str(params["size"]))
        .replace("$span_us", str(params["span_us"]))
    )
    con.execute(sql)


def _check_ids(con) -> None:
    """The SQL ids are the pipeline's: article_id_for and entry_key_for, on a few rows."""
    from tasks.dedup import article_id_for, entry_key_for

    for article_id, url_key, version, feed_url, guid, entry_key in con.execute(
        "SELECT article_id, url_key, version, feed_url, guid, entry_key FROM articles USING SAMPLE 20 ROWS"
    ).fetchall():
        assert article_id == article_id_for(url_key, version), (article_id, url_key, version)
        assert entry_key == entry_key_for(feed_url, guid), (entry_key, feed_url, guid)


def _export_parquet(con, path: Path) -> None:
    """Each append table's partitions as maintenance leaves them, and the snapshot files."""
    from warehouse.store import APPEND_TABLES, SNAPSHOT_TABLES

    parquet = path / "parquet"
    for table in APPEND_TABLES:
        days = [r[0] for r in con.execute(f"SELECT DISTINCT ingest_date FROM {table} ORDER BY 1").fetchall()]  # noqa: S608
        for day in days:
            part = parquet / table / f"ingest_date={day.isoformat()}"
            part.mkdir(parents=True, exist_ok=True)
            name = f"compacted-{hashlib.sha256(f'{table}{day}'.encode()).hexdigest()[:20]}.parquet"
            con.execute(
                f"COPY (SELECT * EXCLUDE (ingest_date) FROM {table} WHERE ingest_date = ? ORDER BY load_batch) "  # noqa: S608
                f"TO '{part / name}' (FORMAT parquet, COMPRESSION zstd)",
                [day],
            )
    for table in SNAPSHOT_TABLES:
        (parquet / table).mkdir(parents=True, exist_ok=True)
        con.execute(
            f"COPY (SELECT * FROM {table} ORDER BY 1) TO '{parquet / table / (table + '.parquet')}' (FORMAT parquet, COMPRESSION zstd)"  # noqa: S608 - a table name and a path of ours
        )


# Bump when the generated data changes: cached warehouses of another version are not reused.
GENERATOR_VERSION = 3  # 3: row groups of 16,384 rows, as newsflow's writers now append them


def cache_key() -> str:
    return f"v{GENERATOR_VERSION}"


def cached_warehouse(size: int, log=print) -> Path:
    """The generated warehouse of ``size`` articles (built once, then reused)."""
    path = CACHE_ROOT / f"{size}-{cache_key()}"
    if (path / "BUILT").exists():
        as_maintenance_leaves_it(path)
        return path
    if path.exists():
        shutil.rmtree(path)
    log(f"generating a warehouse of {size:,} articles into {path}")
    info = build(path, size, log)
    (path / "BUILT").write_text(repr(info))
    log(f"  done in {info['build_seconds']} s: {info['counts']}")
    return path


def as_maintenance_leaves_it(path: Path) -> None:
    """Newer migrations applied and the story band keys archived, as the daily maintenance run
    leaves a warehouse (a no-op when done already, or with code that has no archive)."""
    try:
        from warehouse.stories import archive_story_index  # noqa: F401 - present since migration 009
    except ImportError:  # code from before migration 009: nothing to do
        return
    con = connect(path / "newsflow.duckdb")
    try:
        migrate(con)
        if con.execute("SELECT count(*) FROM story_index").fetchone()[0]:
            # archive_story_index(con), in bulk: story_index's ART index made again once emptied
            for sql in (
                "DROP INDEX story_index_band",
                "INSERT INTO story_index_archive SELECT band, article_id FROM story_index",
                "DELETE FROM story_index",
                "CREATE INDEX story_index_band ON story_index (band)",
                "CHECKPOINT",
            ):
                con.execute(sql)
    finally:
        con.close()


def copy_warehouse(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("BUILT"))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(cached_warehouse(args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
