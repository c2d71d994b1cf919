"""Story assignment cost per article, against an empty index and against 1,000,000 stored
fingerprints (``story_index`` rows of 1M articles: 32M band keys).

    python benchmarks/story_lookup.py                       # 0 and 1,000,000 (about 3 minutes)
    python benchmarks/story_lookup.py --sizes 0 100000 --output /tmp/sl.json   # a quick run

What is timed is exactly what ``Warehouse.load_batch`` runs for a batch of new articles:
``warehouse.stories.assign_story_ids`` (fingerprints, one indexed lookup of all the batch's band
keys, the candidates' texts by primary key, the decisions) and ``insert_story_index`` (the new
index rows), inside a transaction that is rolled back so that every batch meets the same
warehouse. Batches of 200 articles (``NEWSFLOW_BATCH_SIZE``).

The stored fingerprints are synthetic, generated with SQL into a temporary DuckDB file created by
the real migrations: 1M articles rows (the primary key and unique indexes as in production), 32
band keys each, 30 % of the articles in clusters of three copies sharing 24 of their 32 keys (so
that some keys have several postings, as syndicated stories do). Half of the incoming articles
have a syndicated copy stored among them, so the candidate fetch and the verification run too.
The incoming texts are the corpus's ground-truth texts when the corpus is there, else generated
ones (the cost hardly depends on which).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from bench_common import environment, print_table, write_results
from corpus_sites import CorpusMissing, load_corpus

import warehouse.stories as ws
from tasks.dedup import article_id_for
from tasks.stories import PARAMS, fingerprint
from warehouse.store import connect, migrate
from warehouse.stories import SQL_POSTINGS, _keys, assign_story_ids, insert_story_index

BATCH = 200
T0 = datetime(2026, 1, 1, tzinfo=UTC)

SQL_FAKE_ARTICLES = """
    INSERT INTO articles (article_id, url, url_key, final_url, canonical_url, published_at, text,
                          story_id, fetched_at, run_id, load_batch, ingest_date)
    SELECT md5('a' || i)[:20], u, u, u, u, ts, 'stored article ' || i, md5('a' || (i - i % 3))[:20],
           ts, 'bench', 'bench', CAST(ts AS DATE)
    FROM (
        SELECT i, 'https://outlet' || (i % 5000) || '.example/news/' || i AS u,
               TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_seconds(i * 20) AS ts
        FROM range(?) r(i)
    )
"""
# Articles below 30 % of the range come in clusters of three (i // 3) sharing bands 0-23.
SQL_FAKE_INDEX = """
    INSERT INTO story_index
    SELECT (hash(CASE WHEN b < 24 AND i < ? * 0.3 THEN (i // 3) * 64 + b ELSE i * 64 + b + 7 END) >> 1)::BIGINT
               * (CASE WHEN (i + b) % 2 = 0 THEN 1 ELSE -1 END),
           md5('a' || i)[:20]
    FROM range(?) r(i), range(32) s(b)
"""


def incoming_texts(n: int) -> tuple[list[str], str]:
    try:
        pages = load_corpus()
        texts = [p.main_text for p in pages if len(p.main_text.split()) >= 80]
        source = "corpus ground truth"
    except CorpusMissing:
        rng = random.Random(1)
        vocab = [f"w{i}" for i in range(20000)]
        texts = [
            "\n".join(" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(12)) for _ in range(n)
        ]
        source = "generated"
    return (texts * (n // max(1, len(texts)) + 1))[:n], source


def syndicated(text: str) -> str:
    lines = [x for x in text.split("\n") if x.strip()]
    return "\n".join(["From our partners", "A new headline for the copy", *lines[1:], "All rights reserved"])


def incoming_rows(texts: list[str], start: datetime) -> list[dict]:
    rows = []
    for i, text in enumerate(texts):
        url = f"https://incoming.example/news/{i}"
        ts = start + timedelta(minutes=i)
        rows.append(
            {
                "article_id": article_id_for(url),
                "url": url,
                "text": text,
                "published_at": ts,
                "fetched_at": ts,
            }
        )
    return rows


def build(path: Path, stored: int, planted: list[str]) -> dict:
    """A warehouse with ``stored`` synthetic fingerprints plus the planted copies."""
    started = time.perf_counter()
    con = connect(path)
    migrate(con)
    if stored:
        con.execute("DROP INDEX story_index_band")  # bulk load, then build the ART index once
        con.execute(SQL_FAKE_ARTICLES, [stored])
        con.execute(SQL_FAKE_INDEX, [stored, stored])
        con.execute("CREATE INDEX story_index_band ON story_index (band)")
    if planted:
        rows = incoming_rows(planted, T0 - timedelta(days=1))
        for r in rows:
            r["article_id"] = "planted-" + r["article_id"][:12]
            r.update(
                url=r["url"] + "-copy",
                url_key=r["url"] + "-copy",
                run_id="bench",
                load_batch="bench",
                ingest_date=r["fetched_at"].date(),
            )
        index_rows = assign_story_ids(con, rows)
        con.register("planted", _arrow(rows))
        con.execute("INSERT INTO articles BY NAME SELECT * FROM planted")
        con.unregister("planted")
        insert_story_index(con, index_rows)
    con.execute("CHECKPOINT")
    counts = con.execute(
        "SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM story_index)"
    ).fetchone()
    con.close()
    return {
        "articles": counts[0],
        "index_rows": counts[1],
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def _arrow(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


class _Timed:
    """Wraps the steps of ``warehouse.stories`` to time them separately (benchmark only)."""

    STEPS = {"postings": "lookup", "stored_articles": "candidates", "insert_story_index": "insert"}

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.STEPS.values(), 0.0)
        self._saved: dict[str, object] = {}

    def __enter__(self) -> _Timed:
        for name, step in self.STEPS.items():
            original = getattr(ws, name)
            self._saved[name] = original

            def timed(*args, _f=original, _step=step, **kwargs):
                started = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    self.seconds[_step] += time.perf_counter() - started

            setattr(ws, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(ws, name, original)


def measure(path: Path, rows: list[dict], repeat: int) -> dict:
    """``repeat`` passes over ``rows`` in batches; the first pass (cold: the ART index is read from
    disk as it is used) is reported apart from the others."""
    con = connect(path)
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    passes: list[list[float]] = []
    matched = 0
    timed = _Timed()
    for n in range(repeat):
        per_batch = []
        for batch in batches:
            copies = [dict(r) for r in batch]
            started = time.perf_counter()
            con.execute("BEGIN TRANSACTION")
            if n:
                with timed:
                    index_rows = ws.assign_story_ids(con, copies)
                    ws.insert_story_index(con, index_rows)
            else:
                index_rows = ws.assign_story_ids(con, copies)
                ws.insert_story_index(con, index_rows)
            per_batch.append(time.perf_counter() - started)
            con.execute("ROLLBACK")
            matched += sum(1 for r in copies if r["story_id"] != r["article_id"])
        passes.append(per_batch)
    started = time.perf_counter()
    for r in rows:
        fingerprint(r["text"])
    fp_ms = (time.perf_counter() - started) / len(rows) * 1000
    fps = [fingerprint(r["text"]) for r in batches[0]]
    keys = sorted({b for fp in fps if fp is not None for b in fp.bands})
    with _keys(con, keys, pa.int64()):
        plan = con.execute("EXPLAIN ANALYZE " + SQL_POSTINGS).fetchall()[0][1]
    con.close()
    warm = [t for p in passes[1:] for t in p]
    n_warm = len(rows) * (repeat - 1)
    return {
        "articles_assigned": len(rows) * repeat,
        "ms_per_article": round(sum(warm) / n_warm * 1000, 3),
        "ms_per_article_cold_first_pass": round(sum(passes[0]) / len(rows) * 1000, 3),
        "breakdown_ms_per_article": {
            "fingerprint": round(fp_ms, 3),
            "index_lookup": round(timed.seconds["lookup"] / n_warm * 1000, 3),
            "candidates_fetch_and_fingerprint": round(timed.seconds["candidates"] / n_warm * 1000, 3),
            "index_insert": round(timed.seconds["insert"] / n_warm * 1000, 3),
        },
        "band_keys_per_batch": len(keys),
        "index_scan": "Index Scan" in plan,
        "matched_to_stored_story": round(matched / (len(rows) * repeat), 3),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cost of story assignment per article vs stored fingerprints."
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000], help="stored fingerprints"
    )
    parser.add_argument("--articles", type=int, default=400, help="incoming articles per measurement")
    parser.add_argument(
        "--repeat", type=int, default=4, help="passes over the incoming articles (the first is cold)"
    )
    parser.add_argument("--dir", type=Path, help="where the temporary DuckDB files go (default: a temp dir)")
    parser.add_argument(
        "--output", type=Path, help="results file (default: benchmarks/results/story_lookup.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    texts, source = incoming_texts(args.articles)
    rows = incoming_rows(texts, T0)
    planted = [syndicated(t) for t in texts[::2]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="story-lookup-", dir=args.dir) as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"w{size}.duckdb"
            print(f"building {size:,} stored fingerprints ...", file=sys.stderr)
            built = build(path, size, planted if size else [])
            print(f"measuring {len(rows)} articles x {args.repeat} ...", file=sys.stderr)
            results[str(size)] = {"stored_fingerprints": size, **built, **measure(path, rows, args.repeat)}
            path.unlink()
    print_table(
        f"Story assignment per article (batches of {BATCH}, {source} texts, {PARAMS.bands} band keys each), ms",
        [
            "stored fingerprints",
            "index rows",
            "ms/article",
            "cold",
            "fingerprint",
            "lookup",
            "candidates",
            "insert",
            "index scan",
            "matched",
        ],
        [
            (
                f"{r['stored_fingerprints']:,}",
                f"{r['index_rows']:,}",
                r["ms_per_article"],
                r["ms_per_article_cold_first_pass"],
                *r["breakdown_ms_per_article"].values(),
                r["index_scan"],
                r["matched_to_stored_story"],
            )
            for r in results.values()
        ],
    )
    data = {
        "benchmark": "story_lookup",
        "environment": environment(),
        "batch_size": BATCH,
        "incoming_texts": source,
        "params": dict(PARAMS.__dict__),
        "results": results,
    }
    print(f"results: {write_results(data, 'story_lookup.json', args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
