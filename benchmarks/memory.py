"""Memory: the peak resident memory of a long backfill's whole process tree, against run size.

    python benchmarks/memory.py                                  # 5,000 then 50,000 pages
    python benchmarks/memory.py --pages 2000 --output /tmp/m.json   # smoke run

Target (issue 7): bounded by the batch size, not by the run size; at most 1.5 GiB here. (The peak
of benchmark 1, the poll of the corpus, is measured by ``throughput.py``.)

Each run is the real command ``newsflow backfill --urls FILE`` into a fresh data dir, against a
``prefect server start`` already running (as a deployed backfill runs; the temporary server
would add its own ~150 MiB to the tree and nothing that depends on the run's size). The pages:
``growth.py``'s generated article pages (6-10 paragraphs of made-up words, each text different),
on 10 loopback sites, each page made when it is requested, so the benchmark process holds none
of them. ``NEWSFLOW_HOST_MIN_DELAY=0``, default batch size (``NEWSFLOW_BATCH_SIZE``).

Reported per run: the whole command's seconds and pages/s, the peak resident memory of the
command and every process under it (sampled from /proc every 0.5 s: extraction workers, feed
parsing), and the peak within each tenth of the run: flat tenths mean memory does not grow with
the pages done. The runs' peaks side by side (5,000 vs 50,000 pages) say the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from bench_common import environment, print_table, run_command, write_results
from feed_scale import PrefectServer, TreeRss, _git_commit
from growth import NEW_ROW_BASE, article_html
from growth_data import doc_of, title_of

from newsflow.loopback import LoopbackSite, Route

REPO_ROOT = Path(__file__).resolve().parents[1]
SITES = 10
PORT = 18461
TARGET_MIB = 1536
ENV = {
    "NEWSFLOW_ALLOW_PRIVATE_NETWORKS": "1",  # the sites are on loopback
    "NEWSFLOW_HOST_MIN_DELAY": "0",  # our own servers: no politeness delay
    "NEWSFLOW_LOCK_TIMEOUT": "60",
}
# Page numbers of each run: far from growth.py's and from each other's, so no text repeats.
ROW_OFFSET = {5_000: 1_000_000, 50_000: 2_000_000}


def host(s: int) -> str:
    return f"127.79.0.{s + 1}"


class GeneratedPages(dict):
    """The routes of one site: ``/a/<n>.html`` is made when it is requested (LoopbackSite looks
    routes up with ``.get``)."""

    def __init__(self, base: str, published: datetime):
        super().__init__()
        self.base, self.published = base, published

    def get(self, path, default=None):
        if path.startswith("/a/") and path.endswith(".html"):
            n = int(path[3:-5])
            doc = doc_of(NEW_ROW_BASE + n, 0)
            title = title_of(np.random.default_rng([23, n]))
            return Route(article_html(title, doc, self.base + path, self.published - timedelta(seconds=n)))
        return super().get(path, default)


class TimedTreeRss(TreeRss):
    """TreeRss that also keeps every sample, to see whether memory grows along the run."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(pid, interval)
        self.samples: list[tuple[float, int, int]] = []  # (seconds, whole tree, the command's own process)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                total = sum(self._rss(p) for p in self._tree())
            except OSError:
                continue
            self.samples.append((time.perf_counter() - self._t0, total, self._rss(self.pid)))
            if total > self.peak_bytes:
                self.peak_bytes = total


def run_backfill(n_pages: int, server: PrefectServer, work: Path, timeout: float) -> dict[str, Any]:
    offset = ROW_OFFSET.get(n_pages, 3_000_000)
    now = datetime.now(UTC)
    sites = [LoopbackSite(host(s), PORT) for s in range(SITES)]
    for s, site in enumerate(sites):
        site.routes = GeneratedPages(f"http://{host(s)}:{PORT}", now)
        site.start()
    urls = work / f"urls-{n_pages}.txt"
    urls.write_text("".join(f"http://{host(n % SITES)}:{PORT}/a/{offset + n}.html\n" for n in range(n_pages)))
    data_dir = work / f"data-{n_pages}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSFLOW_")}
    env.update(ENV, PREFECT_API_URL=server.api_url, PREFECT_HOME=str(work / "prefect-home"))
    cmd = [sys.executable, "-m", "newsflow.cli", "backfill", "--urls", str(urls), "--data-dir", str(data_dir)]
    try:
        run = run_command(cmd, env, timeout, cwd=REPO_ROOT, watch=TimedTreeRss)
    finally:
        for site in sites:
            site.stop()
    stdout, stderr, seconds = run.stdout, run.stderr, run.seconds
    rss = run.watcher
    (work / f"backfill-{n_pages}.stderr").write_text(stderr)
    out: dict[str, Any] = {
        "pages": n_pages,
        "returncode": run.returncode,
        "seconds": round(seconds, 1),
        "pages_per_second": round(n_pages / seconds, 1),
        "peak_rss_mib_process_tree": round(rss.peak_bytes / 2**20, 1),
        "peak_rss_mib_by_tenth_of_the_run": tenths([(t, total) for t, total, _ in rss.samples], seconds),
        "peak_rss_mib_of_the_command_process_by_tenth": tenths(
            [(t, own) for t, _, own in rss.samples], seconds
        ),
        "articles": stored_articles(data_dir) if run.returncode == 0 else None,
    }
    if run.returncode != 0:
        out["stderr_tail"] = stderr[-3000:]
        out["stdout_tail"] = stdout[-2000:]
    return out


def tenths(samples: list[tuple[float, int]], seconds: float) -> list[float | None]:
    peaks: list[float | None] = [None] * 10
    for t, total in samples:
        i = min(9, int(10 * t / seconds))
        mib = round(total / 2**20, 1)
        peaks[i] = mib if peaks[i] is None else max(peaks[i], mib)
    return peaks


def stored_articles(data_dir: Path) -> int:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM articles").fetchone()[0]
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[5_000, 50_000], help="pages per run")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--output", type=Path, help="results JSON (default benchmarks/results/memory.json)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "benchmark": "memory",
        "environment": environment(),
        "commit": _git_commit(),
        "target_mib": TARGET_MIB,
        "batch_size": int(os.environ.get("NEWSFLOW_BATCH_SIZE", "0")) or "default",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="newsflow-bench-memory-") as tmp:
        work = Path(tmp)
        (work / "prefect-home").mkdir()
        server = PrefectServer(work / "prefect-home")
        try:
            for n in args.pages:
                print(f"backfill of {n:,} pages", file=sys.stderr, flush=True)
                results["runs"].append(run_backfill(n, server, work, args.timeout))
        finally:
            server.stop()
    runs = results["runs"]
    print_table(
        "Backfill memory (whole process tree)",
        ["pages", "seconds", "pages/s", "articles", "peak RSS MiB", "peak per tenth of the run (MiB)"],
        [
            [
                r["pages"],
                r["seconds"],
                r["pages_per_second"],
                r["articles"],
                r["peak_rss_mib_process_tree"],
                " ".join(str(x) for x in r["peak_rss_mib_by_tenth_of_the_run"]),
            ]
            for r in runs
        ],  # fmt: skip
    )
    peak = max(r["peak_rss_mib_process_tree"] for r in runs)
    results["verdict"] = (
        f"peak {peak} MiB: {'PASS' if peak <= TARGET_MIB else 'FAIL'} (target <= {TARGET_MIB} MiB)"
    )
    print(results["verdict"])
    print(f"results: {write_results(results, 'memory.json', args.output)}")
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
