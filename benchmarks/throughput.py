"""Throughput: pages per second of the whole ``newsflow poll`` against the extraction-only limit.

    python benchmarks/throughput.py                    # all corpus pages (974), 20 sites
    python benchmarks/throughput.py --max-pages 40     # a quick smoke run

Three measures:
- ``limit``: ``tasks.extract.extract_article`` (what the pipeline runs per page) over all pages
  already in memory, in a warmed-up spawn ``ProcessPoolExecutor`` of ``--workers`` processes;
  only the extraction is timed. No pipeline on this machine can beat it.
- ``startup``: ``newsflow poll`` on an empty feed list (Python and Prefect start-up, warehouse
  creation, Prefect's ephemeral API, flow bookkeeping): the fixed cost of one run.
- ``newsflow``: the corpus served on loopback as ``--sites`` sites with a feed each
  (``corpus_sites.py``), then the real command ``newsflow poll --feeds ... --data-dir ...`` in a
  subprocess on a fresh data dir, timed from start to exit; pages/s = article rows stored
  (counted in the warehouse afterwards) / wall time.

The loopback servers run in this process, on the same 2 cores as the poll: serving is part of
the cost measured (it is small: the pages are in memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from bench_common import environment, print_table, warm_pool, write_results
from corpus_sites import (
    CORPORA,
    HTML_CONTENT_TYPE,
    CorpusMissing,
    CorpusPage,
    CorpusSites,
    load_corpus,
    serve_corpus,
)

from tasks.extract import ExtractJob, extract_article

POLL_ENV = {
    "NEWSFLOW_ALLOW_PRIVATE_NETWORKS": "1",  # the sites are on loopback
    "NEWSFLOW_HOST_MIN_DELAY": "0",  # our own servers: no politeness delay
    "NEWSFLOW_MAX_ENTRIES_PER_FEED": "10000",  # every entry in one run
    "NEWSFLOW_LOCK_TIMEOUT": "60",  # a fresh data dir has no other writer: waiting is a bug, not load
}
_TAIL = 3000


# --------------------------------------------------------------------------- limit


def pipeline_chunksize(n_jobs: int, workers: int) -> int:
    """The chunk size ``tasks.extract.ExtractorPool.map`` uses."""
    return max(1, min(8, n_jobs // (workers * 4) or 1))


def plain_trafilatura(job: ExtractJob) -> str | None:
    """trafilatura alone: main text only, the pipeline's text options, no metadata."""
    import trafilatura

    return trafilatura.extract(job.body, url=job.url, include_comments=False)


def measure_limit(pages: Sequence[CorpusPage], workers: int, fn=extract_article) -> dict[str, Any]:
    jobs = [ExtractJob(key=p.key, url=p.url, body=p.html, content_type=HTML_CONTENT_TYPE) for p in pages]
    with warm_pool(workers) as pool:
        started = time.perf_counter()
        results = list(pool.map(fn, jobs, chunksize=pipeline_chunksize(len(jobs), workers)))
        wall = time.perf_counter() - started
    return {
        "pages": len(jobs),
        "with_text": sum(bool(r if r is None or isinstance(r, str) else r.text) for r in results),
        "workers": workers,
        "seconds": round(wall, 2),
        "pages_per_second": round(len(jobs) / wall, 2),
    }


# --------------------------------------------------------------------------- newsflow poll


@dataclass
class PollRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str


def newsflow_command() -> str:
    beside = Path(sys.executable).parent / "newsflow"
    found = str(beside) if beside.exists() else shutil.which("newsflow")
    if not found:
        raise FileNotFoundError("the newsflow command is not installed (pip install -e .)")
    return found


def run_poll(feeds_file: Path, data_dir: Path, timeout: float) -> PollRun:
    """The command in its own session: on timeout the whole group (Prefect's server too) is killed."""
    cmd = [newsflow_command(), "poll", "--feeds", str(feeds_file), "--data-dir", str(data_dir)]
    env = {**os.environ, **POLL_ENV}
    started = time.perf_counter()
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += f"\n[benchmark] killed after {timeout:.0f} s\n"
    seconds = time.perf_counter() - started
    (data_dir / "poll.stdout").write_text(stdout)
    (data_dir / "poll.stderr").write_text(stderr)
    return PollRun(proc.returncode, seconds, stdout, stderr)


def warehouse_counts(data_dir: Path) -> dict[str, Any]:
    """What the run stored, read back from the DuckDB file (read-only)."""
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        articles, with_text, duplicates = con.execute(
            "SELECT count(*), count(text), count(duplicate_of) FROM articles"
        ).fetchone()
        run = con.execute(
            "SELECT pages_fetched, pages_failed, articles_extracted, duplicates FROM runs "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        failures = con.execute(
            "SELECT kind || ':' || error_class, count(*) FROM fetch_log "
            "WHERE error_class IS NOT NULL GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    finally:
        con.close()
    names = ("pages_fetched", "pages_failed", "articles_extracted", "duplicates")
    return {
        "articles": articles,
        "articles_with_text": with_text,
        "articles_marked_duplicate": duplicates,
        "run_summary": dict(zip(names, run, strict=True)) if run else None,
        "fetch_failures": dict(failures),
    }


def _poll_result(poll: PollRun) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": round(poll.seconds, 2), "returncode": poll.returncode}
    if poll.returncode != 0:
        out["stderr_tail"] = poll.stderr[-_TAIL:]
        out["stdout_tail"] = poll.stdout[-_TAIL:]
    return out


def measure_startup(timeout: float, keep: bool) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="newsflow-bench-empty-"))
    feeds_file = data_dir / "feeds.toml"
    feeds_file.write_text("# no feeds: measures the fixed cost of one poll run\n")
    try:
        return _poll_result(run_poll(feeds_file, data_dir, timeout))
    finally:
        _cleanup(data_dir, keep)


def measure_newsflow(pages: Sequence[CorpusPage], n_sites: int, timeout: float, keep: bool) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="newsflow-bench-"))
    try:
        with serve_corpus(n_sites, pages=pages) as corpus:
            feeds_file = corpus.write_feeds_toml(data_dir / "feeds.toml")
            poll = run_poll(feeds_file, data_dir, timeout)
            served = _pages_served(corpus)
        out = {
            "sites": n_sites,
            "pages_served": len(corpus.pages),
            "page_requests": served,
            **_poll_result(poll),
        }
        if poll.returncode == 0:
            out.update(warehouse_counts(data_dir))
            out["pages_per_second"] = round(out["articles"] / poll.seconds, 2)
        if keep:
            out["data_dir"] = str(data_dir)
        return out
    finally:
        _cleanup(data_dir, keep)


def _pages_served(corpus: CorpusSites) -> int:
    return sum(n for site in corpus.sites for path, n in site.hits.items() if path.startswith("/articles/"))


def _cleanup(data_dir: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def derived(results: dict[str, Any]) -> dict[str, Any]:
    limit, nf, startup = results.get("limit"), results.get("newsflow"), results.get("startup")
    plain = results.get("limit_plain_trafilatura")
    out: dict[str, Any] = {}
    if not nf or "pages_per_second" not in nf:
        return out
    if limit:
        out["newsflow_over_limit"] = round(nf["pages_per_second"] / limit["pages_per_second"], 3)
    if plain:
        out["newsflow_over_plain_trafilatura"] = round(nf["pages_per_second"] / plain["pages_per_second"], 3)
    if startup and startup["returncode"] == 0 and nf["seconds"] > startup["seconds"]:
        steady = nf["articles"] / (nf["seconds"] - startup["seconds"])
        out["newsflow_pages_per_second_without_startup"] = round(steady, 2)
        if limit:
            out["newsflow_without_startup_over_limit"] = round(steady / limit["pages_per_second"], 3)
    return out


def table_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    if limit := results.get("limit"):
        label = f"limit: extract_article, {limit['workers']} procs"
        rows.append([label, limit["pages"], limit["seconds"], limit["pages_per_second"]])
    if plain := results.get("limit_plain_trafilatura"):
        label = f"trafilatura.extract alone (no metadata), {plain['workers']} procs"
        rows.append([label, plain["pages"], plain["seconds"], plain["pages_per_second"]])
    if startup := results.get("startup"):
        rows.append(["startup: newsflow poll, no feeds", 0, startup["seconds"], None])
    if nf := results.get("newsflow"):
        label = f"newsflow poll, {nf['sites']} loopback sites"
        rows.append([label, nf.get("articles"), nf["seconds"], nf.get("pages_per_second")])
    return rows


def _print_report(results: dict[str, Any]) -> None:
    print_table("Throughput (pages/s)", ["measure", "pages", "seconds", "pages/s"], table_rows(results))
    for key, value in results["derived"].items():
        print(f"{key.replace('_', ' ')}: {value}")
    nf = results.get("newsflow")
    if nf and nf["returncode"] != 0:
        print(
            f"\nnewsflow poll FAILED (exit code {nf['returncode']}); end of its stderr:\n{nf['stderr_tail']}"
        )
    elif nf:
        print(f"warehouse: {nf['articles']} articles ({nf['articles_with_text']} with text), "
              f"run summary {nf['run_summary']}, fetch failures {nf['fetch_failures'] or 'none'}")  # fmt: skip


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="newsflow poll throughput against the extraction limit.")
    parser.add_argument("--sites", type=int, default=20, help="loopback sites to spread the pages over")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--limit-only", action="store_true", help="only the extraction limit")
    only.add_argument("--pipeline-only", action="store_true", help="only newsflow poll (and its start-up)")
    parser.add_argument("--max-pages", type=int, help="use only this many pages (both corpora interleaved)")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--workers", type=int, default=2, help="processes for the limit (default 2)")
    parser.add_argument("--no-startup", action="store_true", help="skip the empty-poll start-up measure")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a poll is killed")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dirs")
    parser.add_argument(
        "--output", type=Path, help="results JSON (default benchmarks/results/throughput.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        pages = load_corpus(args.corpora, args.max_pages)
    except CorpusMissing as exc:
        print(f"skipped: {exc}")
        return 0
    results: dict[str, Any] = {
        "benchmark": "throughput",
        "environment": environment(),
        "max_pages": args.max_pages,
    }
    if not args.pipeline_only:
        print(
            f"limit: extracting {len(pages)} pages on {args.workers} processes", file=sys.stderr, flush=True
        )
        results["limit"] = measure_limit(pages, args.workers)
        results["limit_plain_trafilatura"] = measure_limit(pages, args.workers, plain_trafilatura)
    if not args.limit_only:
        results["poll_env"] = POLL_ENV
        if not args.no_startup:
            print("startup: newsflow poll with no feeds", file=sys.stderr, flush=True)
            results["startup"] = measure_startup(args.timeout, args.keep_data)
        print(f"newsflow: poll of {len(pages)} pages on {args.sites} sites", file=sys.stderr, flush=True)
        results["newsflow"] = measure_newsflow(pages, args.sites, args.timeout, args.keep_data)
    results["derived"] = derived(results)
    _print_report(results)
    print(f"results: {write_results(results, 'throughput.json', args.output)}")
    nf = results.get("newsflow")
    return 1 if nf and nf["returncode"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
