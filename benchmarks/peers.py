"""Peers on the same pages: newspaper4k and news-please extracting the corpus HTML, pages/s and F1,
side by side with newsflow's own extraction and its end-to-end ``newsflow poll`` figure.

    python benchmarks/peers.py                          # every installed peer, 3 timed runs each
    python benchmarks/peers.py --max-pages 40 --repeat 1 --output /tmp/peers.json   # smoke run
    python benchmarks/peers.py --news-please-python /path/to/other/venv/bin/python

Each setting gets the same 974 pages, already in memory, and the page's original URL; nothing is
fetched (every worker refuses any connection or name lookup that is not loopback, and counts the
attempts). Each setting runs on its own warmed-up spawn pool of ``--workers`` processes (the pattern
of ``bench_common.warm_pool``: every worker imported its extractor and extracted one page before the
clock starts); only the map over the pages is timed; scoring happens afterwards, in this process,
with ``extraction_quality.py``'s functions (the same metrics as there).

news-please is not in the ``bench`` extra: it brings faust-cchardet, and trafilatura uses
``cchardet`` for encoding detection whenever it is importable, which would change newsflow's own
extraction in the same environment. Install it in a virtualenv of its own and pass that
interpreter with ``--news-please-python`` (see README.md); that setting then runs in a child
process of this script under that interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any

from bench_common import _BARRIER_TIMEOUT, _WARM_UP_PAGE, environment, print_table, write_results
from corpus_sites import CORPORA, HTML_CONTENT_TYPE, CorpusMissing, CorpusPage, load_corpus
from extraction_quality import PageScore, shingle_tp_fp_fn, summarize, word_prf

REPO_ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_JSON = Path(__file__).resolve().parent / "results" / "throughput.json"

# setting -> (what runs, the distribution whose version is reported, the module it needs)
SETTINGS: dict[str, tuple[str, str, str]] = {
    "newsflow": ("tasks.extract.extract_article (bare_extraction, metadata on)", "trafilatura", "trafilatura"),
    "trafilatura": ("trafilatura.extract(include_comments=False), no metadata", "trafilatura", "trafilatura"),
    "newspaper4k": ("newspaper.Article(fetch_images=False).download(input_html=...).parse()", "newspaper4k", "newspaper"),
    "news-please": ("NewsPlease.from_html(html, url, fetch_images=False)", "news-please", "newsplease"),
}  # fmt: skip

# --------------------------------------------------------------------------- in the workers

_setting = ""
_blocked: list[str] = []


def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def guard_network() -> None:
    """No peer may fetch: any connection or name lookup that is not loopback fails (OSError)
    and is counted. newspaper4k would otherwise try the public suffix list, images, meta refresh."""
    import socket

    if getattr(socket, "_peers_guarded", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _blocked.append(f"connect {address!r}")
            raise OSError(f"peers benchmark: no network ({address!r})")

    def connect(self, address):  # noqa: ANN001
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):  # noqa: ANN001
        _check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001
        name = host.decode() if isinstance(host, bytes) else host
        if not _loopback(name):
            _blocked.append(f"resolve {name!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"peers benchmark: no network ({name!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket._peers_guarded = True  # type: ignore[attr-defined]


def _offline_tldextract() -> None:
    """newspaper4k calls ``tldextract.extract``, whose default extractor downloads the public
    suffix list on first use: use the snapshot bundled with tldextract instead."""
    try:
        from tldextract import tldextract
    except ImportError:
        return
    tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())


def _html_text(body: bytes) -> str:
    # The loopback sites serve every page as charset=utf-8: what a fetcher would hand a peer.
    return body.decode("utf-8", "replace")


def run_setting(setting: str, key: str, url: str, body: bytes) -> str:
    """One page through one setting: the main text ('' when nothing came out)."""
    if setting == "newsflow":
        from tasks.extract import ExtractJob, extract_article

        ex = extract_article(ExtractJob(key=key, url=url, body=body, content_type=HTML_CONTENT_TYPE))
        return ex.text or ""
    if setting == "trafilatura":
        import trafilatura

        return trafilatura.extract(body, url=url, include_comments=False) or ""
    if setting == "newspaper4k":
        from newspaper import Article

        article = Article(url, fetch_images=False, follow_meta_refresh=False)
        article.download(input_html=_html_text(body))
        article.parse()
        return article.text or ""
    if setting == "news-please":
        from newsplease import NewsPlease

        article = NewsPlease.from_html(_html_text(body), url=url, fetch_images=False)
        return (getattr(article, "maintext", None) or "") if article else ""
    raise ValueError(f"unknown setting {setting!r}")


def _init_worker(setting: str, barrier: Any) -> None:
    """Pool initializer: no network, the peer imported and run once, then wait for the others."""
    global _setting
    _setting = setting
    guard_network()
    _offline_tldextract()
    import logging
    import warnings

    logging.disable(logging.WARNING)  # peers log a line per odd page
    warnings.simplefilter("ignore")  # newspaper4k without [nlp], dateutil's unknown time zones
    run_setting(setting, "warm-up", "http://127.0.0.1/warm-up", _WARM_UP_PAGE)
    try:
        barrier.wait(_BARRIER_TIMEOUT)
    except BrokenBarrierError:
        pass


def _ready(n: int) -> int:
    return n


def extract_one(item: tuple[str, str, bytes]) -> tuple[str, float, str | None, int]:
    """(text, seconds, error, blocked network attempts) of one page, in a worker."""
    key, url, body = item
    before = len(_blocked)
    started = time.perf_counter()
    try:
        text, error = run_setting(_setting, key, url, body), None
    except Exception as exc:  # one bad page must not end the run
        text, error = "", f"{exc.__class__.__name__}: {exc}"[:300]
    return text, time.perf_counter() - started, error, len(_blocked) - before


def warm_setting_pool(setting: str, workers: int) -> ProcessPoolExecutor:
    """bench_common.warm_pool's pattern with the setting's own warm-up."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(setting, ctx.Barrier(workers)),
    )
    list(pool.map(_ready, range(workers)))
    return pool


def pipeline_chunksize(n_jobs: int, workers: int) -> int:
    """The chunk size ``tasks.extract.ExtractorPool.map`` uses (as throughput.py)."""
    return max(1, min(8, n_jobs // (workers * 4) or 1))


# --------------------------------------------------------------------------- one setting


def measure(setting: str, pages: Sequence[CorpusPage], workers: int, repeat: int) -> dict[str, Any]:
    """``repeat`` timed maps of the setting over all pages on one warm pool; the texts of the
    first (every setting is deterministic)."""
    items = [(p.key, p.url, p.html) for p in pages]
    chunksize = pipeline_chunksize(len(items), workers)
    walls: list[float] = []
    first: list[tuple[str, float, str | None, int]] = []
    blocked = 0
    with warm_setting_pool(setting, workers) as pool:
        for n in range(repeat):
            started = time.perf_counter()
            out = list(pool.map(extract_one, items, chunksize=chunksize))
            walls.append(time.perf_counter() - started)
            blocked += sum(r[3] for r in out)
            if n == 0:
                first = out
            print(f"  {setting}: run {n + 1}/{repeat}, {len(items)} pages in {walls[-1]:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    return {
        "walls": walls,
        "blocked_network_attempts": blocked,
        "pages": [
            {"key": p.key, "text": r[0], "seconds": r[1], "error": r[2]}
            for p, r in zip(pages, first, strict=True)
        ],
    }


def measure_in_child(
    python: str, setting: str, workers: int, repeat: int, max_pages: int | None, corpora: Sequence[str]
) -> dict[str, Any]:
    """The same measure under another interpreter (a virtualenv where the peer is installed)."""
    with tempfile.TemporaryDirectory(prefix="newsflow-peers-") as tmp:
        out = Path(tmp) / "child.json"
        cmd = [python, str(Path(__file__).resolve()), "--child", setting, "--child-output", str(out),
               "--workers", str(workers), "--repeat", str(repeat), "--corpora", *corpora]  # fmt: skip
        if max_pages is not None:
            cmd += ["--max-pages", str(max_pages)]
        # The other virtualenv may not have newsflow installed editable: the repository on the path
        # (after PYTHONPATH, so that a private worktree given there still wins).
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO_ROOT)])),
        }
        proc = subprocess.run(cmd, env=env, stderr=None, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{setting} under {python} failed (exit {proc.returncode}): {proc.stdout[-2000:]}"
            )
        return json.loads(out.read_text(encoding="utf-8"))


def code_measured() -> dict[str, Any]:
    """Which newsflow code ran: the checkout the ``tasks`` package is imported from (a private
    worktree via PYTHONPATH, or this repository), its commit, and whether it had local changes."""
    import importlib.util

    spec = importlib.util.find_spec("tasks")
    where = Path(spec.origin).resolve().parents[1] if spec and spec.origin else REPO_ROOT

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "path": str(where),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "local_changes": bool(status),
    }


def _child_versions(python: str, dist: str) -> dict[str, str]:
    code = (
        "import json, sys; from importlib.metadata import version; "
        f"print(json.dumps({{'python': sys.version.split()[0], {dist!r}: version({dist!r})}}))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


# --------------------------------------------------------------------------- scoring, report


def score(setting: str, pages: Sequence[CorpusPage], measured: dict[str, Any]) -> dict[str, Any]:
    """extraction_quality.py's metrics over the first run's texts; pages/s over every run."""
    scores: list[PageScore] = []
    for page, r in zip(pages, measured["pages"], strict=True):
        text = r["text"]
        s = PageScore(setting, page.corpus, page.page_id, r["seconds"], not text.strip(), r["error"])
        if page.corpus == "scrapinghub":
            s.shingles = shingle_tp_fp_fn(page.main_text, text)
        else:
            s.words = word_prf(page.main_text, text)
        scores.append(s)
    walls = measured["walls"]
    summary = summarize(scores, statistics.median(walls))
    rates = sorted(len(pages) / w for w in walls)
    summary.update(
        {
            "runs": len(walls),
            "run_seconds": [round(w, 2) for w in walls],
            "pages_per_second": round(statistics.median(rates), 2),
            "pages_per_second_min": round(rates[0], 2),
            "pages_per_second_max": round(rates[-1], 2),
            "blocked_network_attempts": measured["blocked_network_attempts"],
        }
    )
    summary.pop("wall_seconds", None)
    errors = [(p.key, r["error"]) for p, r in zip(pages, measured["pages"], strict=True) if r["error"]]
    summary["error_examples"] = [{"page": k, "error": e} for k, e in errors[:5]]
    summary["median_wall_seconds"] = round(statistics.median(walls), 2)
    return summary


def end_to_end(path: Path = THROUGHPUT_JSON) -> dict[str, Any] | None:
    """newsflow poll's figure as throughput.py last measured it (its results file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    nf = data.get("newsflow") or {}
    if "pages_per_second" not in nf:
        return None
    return {
        "source": str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
        "date": data.get("environment", {}).get("date"),
        "articles": nf.get("articles"),
        "seconds": nf.get("seconds"),
        "pages_per_second": nf["pages_per_second"],
        "pages_per_second_without_startup": data.get("derived", {}).get(
            "newsflow_pages_per_second_without_startup"
        ),
    }


def relative(settings: dict[str, Any]) -> None:
    """Each setting's median pages/s over newsflow's (the settings run one after the other: a
    change of load on the machine between them shows here too)."""
    base = settings.get("newsflow", {}).get("pages_per_second")
    for s in settings.values():
        if base and "pages_per_second" in s:
            s["pages_per_second_over_newsflow"] = round(s["pages_per_second"] / base, 3)


def table_rows(settings: dict[str, Any], poll: dict[str, Any] | None) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, s in settings.items():
        if "skipped" in s:
            rows.append([name, None, None, None, None, None, None, None, "skipped: " + s["skipped"][:60]])
            continue
        sh, wc = s["scrapinghub"] or {}, s["wcxb"] or {}
        spread = f"{s['pages_per_second_min']:.1f}-{s['pages_per_second_max']:.1f}"
        rows.append([f"{name} {s['version']}", s["pages_per_second"], spread, s.get("pages_per_second_over_newsflow"), sh.get("f1"),
                     wc.get("f1"), s["empty_predictions"], s["errors"], s["blocked_network_attempts"]])  # fmt: skip
    if poll:
        label = f"newsflow poll, end to end ({Path(poll['source']).name})"
        rows.append(
            [label, poll["pages_per_second"], None, None, "= newsflow", "= newsflow", None, None, None]
        )
    return rows


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Peers (newspaper4k, news-please) on the corpus pages.")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--max-pages", type=int, help="only this many pages (both corpora interleaved)")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--workers", type=int, default=2, help="processes per pool (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per setting (default 3)")
    parser.add_argument(
        "--news-please-python",
        help="interpreter of a virtualenv where news-please is installed (default: this one, if it has it)",
    )
    parser.add_argument("--output", type=Path, help="results JSON (default benchmarks/results/peers.json)")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child_main(args: argparse.Namespace) -> int:
    pages = load_corpus(args.corpora, args.max_pages)
    measured = measure(args.child, pages, args.workers, args.repeat)
    args.child_output.write_text(json.dumps(measured), encoding="utf-8")
    return 0


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        return _child_main(args)
    try:
        pages = load_corpus(args.corpora, args.max_pages)
    except CorpusMissing as exc:
        print(f"skipped: {exc}")
        return 0
    print(f"peers: {len(pages)} pages, {len(args.settings)} settings, {args.workers} processes, "
          f"{args.repeat} timed runs each", file=sys.stderr, flush=True)  # fmt: skip
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    for setting in args.settings:
        what, dist, module = SETTINGS[setting]
        other = args.news_please_python if setting == "news-please" else None
        if other:
            versions = _child_versions(other, dist)
            if dist not in versions:
                results[setting] = {"what": what, "skipped": f"{dist} is not importable by {other}"}
                continue
            measured = measure_in_child(
                other, setting, args.workers, args.repeat, args.max_pages, args.corpora
            )
            results[setting] = {"what": what, "version": versions[dist], "interpreter": other}
        elif importlib.util.find_spec(module) is None:
            reason = f"{dist} is not installed here"
            if setting == "news-please":
                reason += " (see README: a virtualenv of its own, --news-please-python)"
            results[setting] = {"what": what, "skipped": reason}
            print(f"  {setting}: skipped ({reason})", file=sys.stderr)
            continue
        else:
            measured = measure(setting, pages, args.workers, args.repeat)
            results[setting] = {"what": what, "version": _version(dist)}
        results[setting].update(score(setting, pages, measured))
    relative(results)
    poll = end_to_end()
    print_table(
        f"Peers on the same {len(pages)} pages ({args.workers} processes; pages/s median of "
        f"{args.repeat} runs; F1 as extraction_quality.py)",
        ["setting", "pages/s", "min-max", "x newsflow", "SH F1", "WCXB F1", "empty", "errors", "net blocked"],
        table_rows(results, poll),
    )
    data = {
        "benchmark": "peers",
        "environment": environment(),
        "newsflow_code": code_measured(),
        "workers": args.workers,
        "repeat": args.repeat,
        "max_pages": args.max_pages,
        # other work on the machine lowers pages/s: the 1-minute load average before and after
        "loadavg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "settings": results,
        "newsflow_poll_end_to_end": poll,
    }
    print(f"results: {write_results(data, 'peers.json', args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
