"""Queries at scale: the README's example queries over a warehouse of 1,000,000 articles, each
under 1 s here (target), and the phrase search through DuckDB's full-text index.

    python benchmarks/queries.py                                   # 1M articles (build cached in /tmp)
    python benchmarks/queries.py --size 100000 --output /tmp/q.json   # smoke run

The warehouse is ``growth_data.py``'s (cached under ``/tmp/newsflow-growth``), copied once more and
given what the daily maintenance leaves (``warehouse.maintenance.checkpoint``: the story band keys
archived, the full-text index built; the build's time is reported). Then every ```sql block of
the README runs as written (the Parquet one from a directory where ``data`` is the warehouse):

- in one process, on a read-only connection as ``newsflow sql`` opens it: the first run (cold:
  the page cache dropped before, as root) and the median of ``--repeat`` more (warm);
- as the whole command ``newsflow sql "<query>"`` (a new process: Python start-up included), once.

And the phrase search as ``newsflow search "security guarantee"`` runs it (``warehouse.search``),
with the index and with ``--scan`` (same articles, checked), in process and as the command.
Results in ``results/queries.json``; the 1-minute load average is kept with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_common import print_table, write_results
from feed_scale import _git_commit
from growth import drop_page_cache, load_average
from growth_data import CACHE_ROOT, cache_key, cached_warehouse, copy_warehouse

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.0
PHRASE = "security guarantee"


def readme_queries() -> list[tuple[str, str]]:
    """(name, sql) of every ```sql block of the README, named after its shipped file when there is
    one (warehouse/queries/*.sql with the same text), else after the paragraph before it."""
    readme = (REPO_ROOT / "README.md").read_text()

    def words(sql: str) -> str:
        return " ".join(
            " ".join(x for x in sql.splitlines() if not x.lstrip().startswith("--")).split()
        ).rstrip(";")

    shipped = {words(p.read_text()): p.stem for p in (REPO_ROOT / "warehouse" / "queries").glob("*.sql")}
    out = []
    for match in re.finditer(r"(?s)\n\n((?:(?!\n\n).)*?)\n\n```sql\n(.*?)```", readme):
        intro, sql = " ".join(match.group(1).split()).rstrip(":"), match.group(2)
        out.append((shipped.get(words(sql)) or intro[:70], sql))
    return out


def maintained_warehouse(size: int, log=print) -> tuple[Path, dict[str, Any]]:
    """The generated warehouse with the full-text index built (cached beside it)."""
    import duckdb

    from warehouse.maintenance import checkpoint
    from warehouse.search import index_built_at
    from warehouse.store import connect, migrate

    path = CACHE_ROOT / f"{size}-{cache_key()}-maintained"
    info_file = path / "MAINTAINED"
    if info_file.exists():
        con = connect(path / "newsflow.duckdb")
        try:
            migrate(con)  # migrations written since it was built (views: no data changes)
        finally:
            con.close()
        return path, json.loads(info_file.read_text())
    source = cached_warehouse(size, log)
    copy_warehouse(source, path)
    log(f"maintenance on {path} (story keys archived, full-text index built)")
    con = connect(path / "newsflow.duckdb")
    try:
        migrate(con)
        started = time.perf_counter()
        checkpoint(con)
        seconds = round(time.perf_counter() - started, 1)
        built = index_built_at(con) is not None
        terms = con.execute("SELECT count(*) FROM fts_main_articles.terms").fetchone()[0] if built else 0
    except duckdb.Error:
        shutil.rmtree(path)
        raise
    finally:
        con.close()
    info = {"maintenance_seconds": seconds, "fts_index_built": built, "fts_postings": terms,
            "database_bytes": (path / "newsflow.duckdb").stat().st_size}  # fmt: skip
    info_file.write_text(json.dumps(info))
    log(f"  done in {seconds} s: {info}")
    return path, info


def timed_runs(data_dir: Path, repeat: int, drop: bool, run) -> tuple[Any, str, dict[str, Any]]:
    """``run(con)`` on a fresh read-only connection (as ``newsflow sql`` opens one), ``1 + repeat``
    times, the page cache dropped first when ``drop``: the last result, where it read from, and
    the first (cold) and median of the others (warm) seconds."""
    from warehouse.queries import open_for_reading

    if drop:
        drop_page_cache()
    times, result, source = [], None, ""
    for _ in range(1 + repeat):
        con, source = open_for_reading(data_dir)
        try:
            started = time.perf_counter()
            result = run(con)
            times.append(time.perf_counter() - started)
        finally:
            con.close()
    seconds = {"cold_seconds": round(times[0], 3),
               "warm_seconds": round(statistics.median(times[1:]), 3) if repeat else None}  # fmt: skip
    return result, source, seconds


def time_in_process(data_dir: Path, sql: str, repeat: int, drop: bool, cwd: Path) -> dict[str, Any]:
    previous = os.getcwd()
    os.chdir(cwd)  # the README's Parquet paths are relative to where ./data is
    try:
        rows, source, seconds = timed_runs(
            data_dir, repeat, drop, lambda con: len(con.execute(sql).fetchall())
        )
        return {"source": source, "rows": rows, **seconds}
    finally:
        os.chdir(previous)


def time_command(args: list[str], cwd: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "newsflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"seconds": round(seconds, 3), "returncode": done.returncode}
    if done.returncode:
        out["stderr_tail"] = done.stderr[-1500:]
    else:
        out["stderr"] = done.stderr.strip()[-300:]
    return out


def time_search(data_dir: Path, repeat: int, drop: bool) -> dict[str, Any]:
    from warehouse.search import search

    out: dict[str, Any] = {}
    for label, use_index in (("fts", True), ("scan", False)):
        found, _source, seconds = timed_runs(
            data_dir, repeat, drop, lambda con, use_index=use_index: search(con, PHRASE, use_index=use_index)
        )
        out[label] = {"method": found.method, "rows": len(found.rows), **seconds,
                      "article_ids": [r[4] for r in found.rows]}  # fmt: skip
    out["same_articles"] = out["fts"].pop("article_ids") == out["scan"].pop("article_ids")
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    data_dir, maintenance = maintained_warehouse(args.size, log=lambda m: print(m, flush=True))
    cwd = Path(tempfile.mkdtemp(prefix="newsflow-queries-"))
    (cwd / "data").symlink_to(data_dir)
    drop = not args.no_drop_caches
    results: dict[str, Any] = {
        "benchmark": "queries",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "articles": args.size,
        "target_seconds": TARGET_SECONDS,
        "maintenance": maintenance,
        "load_average_1min_before": load_average(),
        "queries": [],
    }
    try:
        for name, sql in readme_queries():
            print(f"{name} ...", flush=True)
            entry = {"name": name, **time_in_process(data_dir, sql, args.repeat, drop, cwd)}
            entry["command"] = time_command(["sql", "--data-dir", "data", "--format", "csv", sql], cwd)
            results["queries"].append(entry)
        print("phrase search ...", flush=True)
        results["phrase_search"] = time_search(data_dir, args.repeat, drop)
        results["phrase_search"]["command_fts"] = time_command(["search", PHRASE, "--data-dir", "data"], cwd)
        results["phrase_search"]["command_scan"] = time_command(
            ["search", PHRASE, "--data-dir", "data", "--scan"], cwd
        )
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    results["load_average_1min_after"] = load_average()
    warm = [q["warm_seconds"] or q["cold_seconds"] for q in results["queries"]]
    results["over_target"] = [
        q["name"] for q, s in zip(results["queries"], warm, strict=True) if s >= TARGET_SECONDS
    ]
    return results


def print_report(results: dict[str, Any]) -> None:
    rows = [
        [q["name"], q["rows"], q["cold_seconds"], q["warm_seconds"], q["command"]["seconds"],
         "yes" if (q["warm_seconds"] or q["cold_seconds"]) < TARGET_SECONDS else "NO"]
        for q in results["queries"]
    ]  # fmt: skip
    ps = results["phrase_search"]
    for label in ("fts", "scan"):
        rows.append(
            [f"newsflow search ({label})", ps[label]["rows"], ps[label]["cold_seconds"], ps[label]["warm_seconds"],
             ps[f"command_{label}"]["seconds"], "yes" if ps[label]["warm_seconds"] < TARGET_SECONDS else "NO"]
        )  # fmt: skip
    print_table(
        f"README queries over {results['articles']:,} articles (s)",
        ["query", "rows", "cold", "warm (median)", "newsflow sql/search command", "< 1 s warm"],
        rows,
    )
    print(f"phrase search: index and scan found the same articles: {ps['same_articles']}")
    print(
        f"load average (1 min): {results['load_average_1min_before']} before, {results['load_average_1min_after']} after"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per query (median reported)")
    parser.add_argument("--no-drop-caches", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = measure(args)
    print_report(results)
    print(f"results: {write_results(results, 'queries.json', args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
