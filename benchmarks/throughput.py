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
  (counted in the warehouse afterwards) / wall time. Peak resident memory of the command's whole
  process tree (the poll, its extraction workers, Prefect's temporary server) sampled from /proc.
- ``newsflow_with_server`` (and ``startup_with_server``): the same against a ``prefect server
  start`` already running, as a deployed poll runs (a worker and a server up for months): no
  temporary server to start. Its flow and task runs are read back from that server to name where
  the time goes (``breakdown``: start-up, the feeds, the first batch's fetch before any
  extraction, the extraction's span, what follows the last extraction, exit; and the summed
  seconds of each task).

The loopback servers run in this process, on the same 2 cores as the poll: serving is part of
the cost measured (it is small: the pages are in memory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
from bench_common import environment, print_table, run_command, warm_pool, write_results
from corpus_sites import (
    CORPORA,
    HTML_CONTENT_TYPE,
    CorpusMissing,
    CorpusPage,
    CorpusSites,
    load_corpus,
    serve_corpus,
)
from feed_scale import PrefectServer, TreeRss

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
    peak_rss_mib: float
    started_at: float  # time.time() at start and end, to place the Prefect runs on the timeline
    ended_at: float


def newsflow_command() -> str:
    beside = Path(sys.executable).parent / "newsflow"
    found = str(beside) if beside.exists() else shutil.which("newsflow")
    if not found:
        raise FileNotFoundError("the newsflow command is not installed (pip install -e .)")
    return found


def run_poll(feeds_file: Path, data_dir: Path, timeout: float, api_url: str | None = None) -> PollRun:
    """The command in its own session: on timeout the whole group (Prefect's server too) is killed.
    ``api_url``: a running Prefect server's API; None starts Prefect's temporary server."""
    cmd = [newsflow_command(), "poll", "--feeds", str(feeds_file), "--data-dir", str(data_dir)]
    env = {**os.environ, **POLL_ENV}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    run = run_command(cmd, env, timeout, watch=TreeRss)
    stdout, stderr, seconds = run.stdout, run.stderr, run.seconds
    (data_dir / "poll.stdout").write_text(stdout)
    (data_dir / "poll.stderr").write_text(stderr)
    peak = round(run.watcher.peak_bytes / 2**20, 1)
    return PollRun(run.returncode, seconds, stdout, stderr, peak, run.started_at, run.started_at + seconds)


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
    out: dict[str, Any] = {
        "seconds": round(poll.seconds, 2),
        "returncode": poll.returncode,
        "peak_rss_mib_process_tree": poll.peak_rss_mib,
    }
    if poll.returncode != 0:
        out["stderr_tail"] = poll.stderr[-_TAIL:]
        out["stdout_tail"] = poll.stdout[-_TAIL:]
    return out


def measure_startup(timeout: float, keep: bool, server: PrefectServer | None = None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="newsflow-bench-empty-"))
    feeds_file = data_dir / "feeds.toml"
    feeds_file.write_text("# no feeds: measures the fixed cost of one poll run\n")
    try:
        return _poll_result(run_poll(feeds_file, data_dir, timeout, server and server.api_url))
    finally:
        _cleanup(data_dir, keep)


def measure_newsflow(
    pages: Sequence[CorpusPage], n_sites: int, timeout: float, keep: bool, server: PrefectServer | None = None
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="newsflow-bench-"))
    try:
        with serve_corpus(n_sites, pages=pages) as corpus:
            feeds_file = corpus.write_feeds_toml(data_dir / "feeds.toml")
            poll = run_poll(feeds_file, data_dir, timeout, server and server.api_url)
            served = _pages_served(corpus)
        out = {
            "sites": n_sites,
            "prefect": "a running server" if server else "the temporary server the command starts",
            "pages_served": len(corpus.pages),
            "page_requests": served,
            **_poll_result(poll),
        }
        if poll.returncode == 0:
            out.update(warehouse_counts(data_dir))
            out["pages_per_second"] = round(out["articles"] / poll.seconds, 2)
            if server:
                out["breakdown"] = breakdown(server.api_url, poll)
        if keep:
            out["data_dir"] = str(data_dir)
        return out
    finally:
        _cleanup(data_dir, keep)


def _when(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def breakdown(api_url: str, poll: PollRun) -> dict[str, Any]:
    """Where the poll's time went, from its flow run and task runs on the server: the phases of
    the timeline (they add up to the whole command) and the summed seconds of each task (tasks
    overlap: the next batch is fetched while the current one is extracted)."""
    flow = httpx.post(
        api_url + "/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}, timeout=30
    ).json()[0]
    tasks: list[dict[str, Any]] = []
    while True:  # the API gives at most 200 at a time
        page = httpx.post(
            api_url + "/task_runs/filter",
            json={
                "flow_runs": {"id": {"any_": [flow["id"]]}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 200,
                "offset": len(tasks),
            },  # fmt: skip
            timeout=30,
        )
        page.raise_for_status()
        tasks += page.json()
        if len(page.json()) < 200:
            break
    runs = [
        (t["name"].rsplit("-", 1)[0], _when(t["start_time"]), _when(t["end_time"]))
        for t in tasks
        if t.get("start_time") and t.get("end_time")
    ]
    flow_start, flow_end = _when(flow["start_time"]), _when(flow["end_time"])
    summed: dict[str, dict[str, float]] = {}
    for name, start, end in runs:
        entry = summed.setdefault(name, {"seconds": 0.0, "runs": 0})
        entry["seconds"] = round(entry["seconds"] + end - start, 2)
        entry["runs"] += 1
    fetches = [r for r in runs if r[0] == "fetch-pages"]
    extracts = [r for r in runs if r[0] == "extract-pages"]
    phases: dict[str, float] = {"start-up (command start to flow run start)": flow_start - poll.started_at}
    if fetches and extracts:
        first_fetch, first_extract = fetches[0][1], min(r[1] for r in extracts)
        last_extract = max(r[2] for r in extracts)
        phases["feeds (fetch, parse, plan entries)"] = first_fetch - flow_start
        phases["first batch fetched, nothing to extract yet"] = first_extract - first_fetch
        phases["extraction (first to last extract-pages, fetch and load overlapped)"] = (
            last_extract - first_extract
        )
        phases["after the last extraction (dedup, load, run record)"] = flow_end - last_extract
    else:
        phases["flow run"] = flow_end - flow_start
    phases["exit (flow run end to process exit)"] = poll.ended_at - flow_end
    return {
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()},
        "task_runs": summed,
        "task_runs_total": len(runs),
    }


def _pages_served(corpus: CorpusSites) -> int:
    return sum(n for site in corpus.sites for path, n in site.hits.items() if path.startswith("/articles/"))


def _cleanup(data_dir: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def derived(results: dict[str, Any]) -> dict[str, Any]:
    limit, plain = results.get("limit"), results.get("limit_plain_trafilatura")
    out: dict[str, Any] = {}
    for poll_key, startup_key, suffix in (
        ("newsflow", "startup", ""),
        ("newsflow_with_server", "startup_with_server", "_with_running_server"),
    ):
        nf, startup = results.get(poll_key), results.get(startup_key)
        if not nf or "pages_per_second" not in nf:
            continue
        if limit:
            out[f"newsflow{suffix}_over_limit"] = round(nf["pages_per_second"] / limit["pages_per_second"], 3)
        if plain:
            out[f"newsflow{suffix}_over_plain_trafilatura"] = round(
                nf["pages_per_second"] / plain["pages_per_second"], 3
            )
        if startup and startup["returncode"] == 0 and nf["seconds"] > startup["seconds"]:
            steady = nf["articles"] / (nf["seconds"] - startup["seconds"])
            out[f"newsflow{suffix}_pages_per_second_without_startup"] = round(steady, 2)
            if limit:
                out[f"newsflow{suffix}_without_startup_over_limit"] = round(
                    steady / limit["pages_per_second"], 3
                )
    return out


def table_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    if limit := results.get("limit"):
        label = f"limit: extract_article, {limit['workers']} procs"
        rows.append([label, limit["pages"], limit["seconds"], limit["pages_per_second"], None])
    if plain := results.get("limit_plain_trafilatura"):
        label = f"trafilatura.extract alone (no metadata), {plain['workers']} procs"
        rows.append([label, plain["pages"], plain["seconds"], plain["pages_per_second"], None])
    for key, label in (
        ("startup", "start-up: newsflow poll, no feeds (temporary Prefect server)"),
        ("newsflow", "newsflow poll (temporary Prefect server)"),
        ("startup_with_server", "start-up: newsflow poll, no feeds (running Prefect server)"),
        ("newsflow_with_server", "newsflow poll (running Prefect server)"),
    ):
        if run := results.get(key):
            rows.append([label, run.get("articles", 0), run["seconds"], run.get("pages_per_second"),
                         run.get("peak_rss_mib_process_tree")])  # fmt: skip
    return rows


def _print_report(results: dict[str, Any]) -> None:
    print_table(
        "Throughput (pages/s)",
        ["measure", "pages", "seconds", "pages/s", "peak RSS MiB (tree)"],
        table_rows(results),
    )
    for key, value in results["derived"].items():
        print(f"{key.replace('_', ' ')}: {value}")
    for key in ("newsflow", "newsflow_with_server"):
        nf = results.get(key)
        if nf and nf["returncode"] != 0:
            print(f"\n{key} FAILED (exit code {nf['returncode']}); end of its stderr:\n{nf['stderr_tail']}")
        elif nf:
            print(f"{key}: {nf['articles']} articles ({nf['articles_with_text']} with text), "
                  f"run summary {nf['run_summary']}, fetch failures {nf['fetch_failures'] or 'none'}")  # fmt: skip
        if nf and (b := nf.get("breakdown")):
            rows = [[k, v] for k, v in b["phases_seconds"].items()]
            print_table(f"Where the {nf['seconds']} s went ({key})", ["phase", "seconds"], rows)
            rows = [[k, v["runs"], v["seconds"]] for k, v in b["task_runs"].items()]
            print_table("Task runs (summed; they overlap)", ["task", "runs", "seconds"], rows)


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
    parser.add_argument(
        "--no-server", action="store_true", help="skip the polls against a running Prefect server"
    )
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
        if not args.no_server:
            with tempfile.TemporaryDirectory(prefix="newsflow-bench-prefect-") as home:
                server = PrefectServer(Path(home))
                try:
                    print("the same against a running Prefect server", file=sys.stderr, flush=True)
                    if not args.no_startup:
                        results["startup_with_server"] = measure_startup(args.timeout, args.keep_data, server)
                    results["newsflow_with_server"] = measure_newsflow(
                        pages, args.sites, args.timeout, args.keep_data, server
                    )
                finally:
                    server.stop()
    results["derived"] = derived(results)
    _print_report(results)
    print(f"results: {write_results(results, 'throughput.json', args.output)}")
    failed = [k for k in ("newsflow", "newsflow_with_server") if results.get(k, {}).get("returncode", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
