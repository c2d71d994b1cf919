"""Feed scale: 5,000 feeds over 50 loopback hosts, polled with the default politeness settings.

    python benchmarks/feed_scale.py                                   # 5,000 feeds, 50 hosts
    python benchmarks/feed_scale.py --feeds 40 --hosts 4 --output /tmp/fs.json   # smoke run

Each host is a ``newsflow.loopback.LoopbackSite`` on its own loopback address (127.0.1.1,
127.0.1.2, ...), one politeness bucket each, serving ``/feeds/<n>.xml`` (RSS 2.0, a few dated
entries without links), ``/robots.txt`` and, once they are linked, small article pages. Half the
feeds (even ``n``) answer conditional GETs (ETag / Last-Modified, 304); the other half ignore
validators and send the same bytes again (newsflow's "same hash" path).

Runs of the real command ``python -m newsflow.cli poll --feeds F --data-dir D`` in a subprocess,
one after the other on the same data dir, with newsflow's default politeness
(``NEWSFLOW_HOST_MIN_DELAY`` 1 s, ``NEWSFLOW_HOST_CONCURRENCY`` 2), all against one
``prefect server start`` on loopback:

- ``empty``: an empty feed list (the fixed cost of one command); ``empty_ephemeral``: the same
  without the shared server (the command starts Prefect's temporary one);
- ``cold``: every feed new (``--all``);
- ``unchanged``: ``--all`` with nothing changed (304 or the same bytes);
- ``changed_1pct``: ``--all`` after 1% of the feeds (one per host, round-robin) gained one entry
  whose link is a small article page on the same host: pages fetched, extracted and loaded;
- ``due_only``: right after, without ``--all``: no feed is due (the 15-minute cron's common case);
- ``unchanged_grouped``: ``--all``, nothing changed, the same feeds listed host by host instead
  of the hosts in turn (``--order`` picks the order of the others).

For each: wall time and CPU time, the requests each host received (feeds, pages, robots.txt)
and the TCP connections opened, the rows the run added to the warehouse (an unchanged feed must
add no ``fetch_log`` row), the peak RSS of the poll's process tree, the most requests any host
received in any ``host_min_delay`` window (the budget is 1: see ``window_check``), timed by the
kernel (``WireTimes``) and by the server threads, and the durations of the run's task runs,
read from the Prefect server (where the time goes).

The sites run in this process and share the 2 cores with the poll. The command is run from the
repository this file belongs to (``PYTHONPATH`` set to it), so a copy in a clean worktree measures
that worktree's code.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import duckdb
import httpx
from bench_common import environment, run_command, write_results
from rich.console import Console
from rich.table import Table

from newsflow.loopback import LoopbackSite, Route

REPO_ROOT = Path(__file__).resolve().parents[1]
RSS_CONTENT_TYPE = "application/rss+xml; charset=utf-8"
ROBOTS_TXT = b"User-agent: *\nAllow: /\n"
SITES_NETWORK = ipaddress.IPv4Network("127.0.1.0/24")  # site n listens on 127.0.1.(n + 1)
FIRST_HOST = SITES_NETWORK[1]
# Defaults of newsflow/settings.py, written down to check the measured spacing against them.
DEFAULT_HOST_MIN_DELAY = 1.0
DEFAULT_HOST_CONCURRENCY = 2
POLL_ENV = {
    "NEWSFLOW_ALLOW_PRIVATE_NETWORKS": "1",  # the sites are on loopback
    "NEWSFLOW_LOCK_TIMEOUT": "60",  # one writer at a time here: a wait can only be a bug
}
# How much closer than min_delay two requests to a host may arrive and still count as spaced.
# The kernel's packet timestamps (WireTimes) are exact; 10 ms is left for the path from
# newsflow's limiter letting a request go to its first byte on the wire (pool, connect, write).
# The server threads' own arrival times (the fallback without AF_PACKET) also wait for this
# process's GIL, shared by every site: at 5,000 feeds they were off the wire by up to 0.1 s,
# either way, so a verdict from them is a loose one.
WIRE_TOLERANCE_S = 0.01
SERVER_TOLERANCE_S = 0.1
_TAIL = 3000
_WORDS = (
    "harbour council budget ferry storm school river bridge market festival library museum election "
    "hospital station tram cyclist fishermen lighthouse quay warehouse mayor tenants rent housing "
    "parliament minister report inquiry court verdict strike union wages factory exports harvest "
    "drought rainfall forecast coastline erosion volunteers charity concert theatre gallery stadium "
    "match season coach injury transfer airport runway airline passengers delays timetable"
).split()


# --------------------------------------------------------------------------- the sites


@dataclass
class Feed:
    host: int  # index of the site
    number: int  # index within the site
    conditional: bool  # answers If-None-Match / If-Modified-Since with 304
    entries: list[str] = field(default_factory=list)  # RSS <item> elements

    @property
    def path(self) -> str:
        return f"/feeds/{self.number}.xml"

    def document(self) -> bytes:
        items = "\n".join(self.entries)
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
            f"<title>Host {self.host} feed {self.number}</title><link>{{{{BASE_URL}}}}/</link>"
            f"<description>Benchmark feed {self.number} of host {self.host}</description>\n{items}\n"
            "</channel></rss>\n"
        ).encode()

    def route(self) -> Route:
        return Route(body=self.document(), content_type=RSS_CONTENT_TYPE, conditional=self.conditional)


def entry_item(guid: str, title: str, published: datetime, link_path: str | None) -> str:
    link = f"<link>{{{{BASE_URL}}}}{link_path}</link>" if link_path else ""
    return (
        f'<item><title>{escape(title)}</title><guid isPermaLink="false">{guid}</guid>{link}'
        f"<pubDate>{format_datetime(published, usegmt=True)}</pubDate>"
        f"<description>{escape(title)}, in brief.</description></item>"
    )


def article_page(title: str, seed: str) -> bytes:
    """A small article page with its own text (distinct pages: no duplicates, no shared story)."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(5):
        sentences = []
        for _ in range(4):
            words = rng.sample(_WORDS, 12)
            sentences.append(" ".join(words).capitalize() + ".")
        paragraphs.append("<p>" + " ".join(sentences) + "</p>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="author" content="Benchmark Desk"></head><body><header><nav><a href="/">Home</a>'
        f"</nav></header><article><h1>{escape(title)}</h1>{''.join(paragraphs)}</article>"
        "<footer>Copyright the benchmark</footer></body></html>"
    ).encode()


ORDERS = ("interleaved", "grouped")


@dataclass
class FeedSites:
    sites: list[LoopbackSite]
    per_host: list[list[Feed]]  # site n's feeds

    @property
    def feeds(self) -> list[Feed]:
        return [f for feeds in self.per_host for f in feeds]

    def ordered(self, order: str) -> list[Feed]:
        """The feeds as listed in feeds.toml: ``grouped``, a host's feeds together (a list sorted
        by URL, or exported site by site), or ``interleaved``, the hosts in turn."""
        if order == "grouped":
            return self.feeds
        longest = max(map(len, self.per_host))
        return [feeds[i] for i in range(longest) for feeds in self.per_host if i < len(feeds)]

    def feed_url(self, feed: Feed) -> str:
        return self.sites[feed.host].url(feed.path)

    def write_feeds_toml(self, path: Path, order: str) -> Path:
        lines = ["# feed_scale.py: one table per feed\n"]
        for feed in self.ordered(order):
            lines.append(
                f'[[feeds]]\nurl = "{self.feed_url(feed)}"\nname = "host {feed.host} feed {feed.number}"\n'
            )
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    def add_linked_entries(self, fraction: float, now: datetime) -> list[Feed]:
        """One new entry, linking to a new article page on the same host, in ``fraction`` of the
        feeds: chosen round-robin over the hosts, half of them conditional, half not."""
        n_changed = max(1, round(len(self.feeds) * fraction))
        chosen: list[Feed] = []
        rank = 0
        while len(chosen) < n_changed:
            for host, feeds in enumerate(self.per_host):
                if rank < len(feeds) and len(chosen) < n_changed:
                    # Alternate the feed picked in each host so both validator kinds change.
                    chosen.append(feeds[(rank * 7 + host) % len(feeds)])
            rank += 1
        for feed in chosen:
            site = self.sites[feed.host]
            page_path = f"/articles/{feed.number}-new.html"
            title = f"Host {feed.host} feed {feed.number}: the new story"
            site.routes[page_path] = Route(body=article_page(title, page_path + str(feed.host)))
            feed.entries.insert(0, entry_item(f"h{feed.host}-f{feed.number}-new", title, now, page_path))
            site.routes[feed.path] = feed.route()
        return chosen

    def stop(self) -> None:
        for site in self.sites:
            site.stop()


def host_address(n: int) -> str:
    return str(FIRST_HOST + n)


def serve_feeds(n_feeds: int, n_hosts: int, entries_per_feed: int, now: datetime) -> FeedSites:
    """``n_feeds`` feeds dealt evenly over ``n_hosts`` sites, each with ``entries_per_feed``
    entries dated a day apart (so each feed's schedule says daily: none is due again soon)."""
    if n_hosts < 1 or n_feeds < n_hosts:
        raise ValueError("need at least one host and one feed per host")
    sites: list[LoopbackSite] = []
    per_host: list[list[Feed]] = [[] for _ in range(n_hosts)]
    for n in range(n_feeds):
        host, number = n % n_hosts, n // n_hosts
        feed = Feed(host=host, number=number, conditional=number % 2 == 0)
        for k in range(entries_per_feed):
            # No <link>: the warm-up poll stores the entries without fetching pages (see README).
            published = now - timedelta(days=k + 1, minutes=n % 997)
            title = f"Host {host} feed {number} item {k}"
            feed.entries.append(entry_item(f"h{host}-f{number}-e{k}", title, published, None))
        per_host[host].append(feed)
    try:
        for host, feeds in enumerate(per_host):
            routes = {"/robots.txt": Route(body=ROBOTS_TXT, content_type="text/plain; charset=utf-8")}
            routes.update({f.path: f.route() for f in feeds})
            sites.append(LoopbackSite(host=host_address(host), routes=routes).start())
    except BaseException:
        for site in sites:
            site.stop()
        raise
    return FeedSites(sites=sites, per_host=per_host)


# --------------------------------------------------------------------------- Prefect


class PrefectServer:
    """One ``prefect server start`` on loopback for all the polls (instead of an ephemeral server
    started by each command)."""

    def __init__(self, home: Path, timeout: float = 120.0):
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_ENABLED": "false"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        self.log = open(home / "server.log", "w")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        while True:
            try:
                if httpx.get(self.api_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - started > timeout:
                self.stop()
                raise RuntimeError(f"prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        self.startup_seconds = round(time.perf_counter() - started, 2)

    def task_runs(self) -> list[dict[str, Any]]:
        """The task runs of the latest flow run: name, seconds, in start order."""
        flows = httpx.post(
            self.api_url + "/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}, timeout=30
        ).json()
        if not flows:
            return []
        tasks = httpx.post(
            self.api_url + "/task_runs/filter",
            json={
                "flow_runs": {"id": {"any_": [flows[0]["id"]]}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 200,
            },
            timeout=30,
        ).json()
        out = [{"task": "(flow run)", "seconds": round(flows[0].get("total_run_time") or 0.0, 2)}]
        for t in tasks:
            out.append({"task": t["name"], "seconds": round(t.get("total_run_time") or 0.0, 2)})
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- wire times

_ETH_P_ALL = 0x0003
_SO_TIMESTAMPNS = 35  # kernel receive timestamp of each packet (CLOCK_REALTIME), <linux/socket.h>
_SO_RCVBUFFORCE = 33
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_OUTGOING = 4  # on lo each packet is seen twice, going out and coming in: keep one


def _capture_requests(out_path: str, network: str, stop: Any, ready: Any) -> None:
    """Child process: write ``time ip:port path`` for every HTTP request sent into ``network``
    (a /24) on lo, and ``time ip:port <connect>`` for every TCP connection opened to it, timed by
    the kernel when the packet was sent (not when a busy Python server got to it)."""
    prefix = ipaddress.IPv4Network(network).network_address.packed[:3]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 64 * 2**20)
    sock.bind(("lo", 0))
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sock.settimeout(0.2)
    ready.set()
    with open(out_path, "w", encoding="utf-8") as out:
        last_flush = time.monotonic()
        while not stop.is_set():
            try:
                data, ancillary, _, address = sock.recvmsg(512, socket.CMSG_SPACE(16))
            except TimeoutError:
                data = b""
            if data and address[2] == _PACKET_OUTGOING:
                row = _request_row(data, ancillary, prefix)
                if row:
                    out.write(row)
            if time.monotonic() - last_flush > 0.2:
                out.flush()
                last_flush = time.monotonic()
        packets, drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
        out.write(f"# packets {packets} drops {drops}\n")


CONNECT = "<connect>"  # the path written for a TCP SYN


def _request_row(frame: bytes, ancillary: list, prefix: bytes) -> str | None:
    """``time ip:port path`` when ``frame`` (Ethernet, as lo gives it) starts an HTTP GET to an
    address starting with ``prefix``, ``time ip:port <connect>`` when it opens a connection."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6 or frame[30:33] != prefix:
        return None  # not IPv4 + TCP to the sites
    tcp = 14 + (frame[14] & 0x0F) * 4
    payload = frame[tcp + (frame[tcp + 12] >> 4) * 4 :]
    opens = frame[tcp + 13] & 0x12 == 0x02  # SYN without ACK
    if not opens and not payload.startswith(b"GET "):
        return None
    stamp = next(
        (c for lvl, typ, c in ancillary if lvl == socket.SOL_SOCKET and typ == _SO_TIMESTAMPNS), None
    )
    if stamp is None:
        return None
    seconds, nanoseconds = struct.unpack("qq", stamp[:16])
    path = CONNECT if opens else payload[4:].split(b" ", 1)[0].decode("ascii", "replace")
    port = int.from_bytes(frame[tcp + 2 : tcp + 4], "big")
    return f"{seconds + nanoseconds / 1e9:.6f} {ipaddress.IPv4Address(frame[30:34])}:{port} {path}\n"


class WireTimes:
    """The requests sent to the sites, as the kernel saw them on lo (an AF_PACKET socket in a
    child process: Linux, root). The server threads' own arrival times include the wait for
    this process's GIL, shared by 50 sites: up to a few hundred ms when every host is asked at
    once. The kernel's timestamps do not."""

    def __init__(self, path: Path, network: str):
        self.path = path
        ctx = multiprocessing.get_context("spawn")
        self._stop, ready = ctx.Event(), ctx.Event()
        self._proc = ctx.Process(
            target=_capture_requests, args=(str(path), network, self._stop, ready), daemon=True
        )
        self._proc.start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.2):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("packet capture did not start")

    def requests(self, since: float, until: float) -> tuple[dict[str, list[tuple[float, str]]], Counter[str]]:
        """Between ``since`` and ``until`` (time.time()): ``ip:port`` -> [(time, path)] of the
        requests sent, and ``ip:port`` -> connections opened. Others may run servers in the same
        network at the same time (another benchmark): pick the sites by ``ip:port``."""
        time.sleep(0.6)  # the child flushes every 0.2 s
        requests: dict[str, list[tuple[float, str]]] = {}
        connects: Counter[str] = Counter()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                continue
            stamp, address, path = line.split(" ", 2)
            if not since <= float(stamp) <= until:
                continue
            if path == CONNECT:
                connects[address] += 1
            else:
                requests.setdefault(address, []).append((float(stamp), path))
        return requests, connects

    def close(self) -> dict[str, int] | None:
        """Stop the capture; the kernel's packet counts (drops must be 0)."""
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        if lines and lines[-1].startswith("# packets"):
            _, _, packets, _, drops = lines[-1].split()
            return {"packets": int(packets), "drops": int(drops)}
        return None


def start_wire_times(path: Path, network: str) -> tuple[WireTimes | None, str | None]:
    """A capture, or None and why not (not Linux, not root)."""
    if not hasattr(socket, "AF_PACKET"):
        return None, "no AF_PACKET sockets (not Linux)"
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        probe.close()
    except PermissionError:
        return None, "AF_PACKET needs root (CAP_NET_RAW)"
    return WireTimes(path, network), None


# --------------------------------------------------------------------------- one poll


class TreeRss:
    """Peak resident memory of a process and its descendants, sampled from /proc (Linux)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pids = self._tree()
                total = sum(self._rss(p) for p in pids)
            except OSError:
                continue
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, len(pids)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                return int(fh.read().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0


@dataclass
class PollRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    peak_rss_mib: float
    peak_processes: int
    cpu_seconds: float  # user + system of the poll and every process it waited for


def poll_env(prefect_home: Path, api_url: str | None) -> dict[str, str]:
    """The environment of each poll: newsflow's defaults (every inherited NEWSFLOW_* removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSFLOW_")}
    env.update(POLL_ENV)
    env["PREFECT_HOME"] = str(prefect_home)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def run_poll(
    feeds_file: Path, data_dir: Path, env: dict[str, str], all_feeds: bool, timeout: float, label: str,
    profile_dir: Path | None = None,
) -> PollRun:  # fmt: skip
    """The command in its own session: on timeout the whole group is killed."""
    cmd = [
        sys.executable,
        "-m",
        "newsflow.cli",
        "poll",
        "--feeds",
        str(feeds_file),
        "--data-dir",
        str(data_dir),
    ]
    if all_feeds:
        cmd.append("--all")
    if profile_dir is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        out = profile_dir / f"{label}.speedscope.json"
        cmd = [str(py_spy), "record", "--subprocesses", "--idle", "--rate", "50", "--format", "speedscope",
               "-o", str(out), "--", *cmd]  # fmt: skip
    cpu_before = _children_cpu()
    run = run_command(cmd, env, timeout, cwd=REPO_ROOT, watch=TreeRss)
    stdout, stderr, seconds, rss = run.stdout, run.stderr, run.seconds, run.watcher
    cpu = _children_cpu() - cpu_before
    (data_dir / f"poll-{label}.stdout").write_text(stdout)
    (data_dir / f"poll-{label}.stderr").write_text(stderr)
    return PollRun(
        run.returncode,
        seconds,
        stdout,
        stderr,
        round(rss.peak_bytes / 2**20, 1),
        rss.peak_processes,
        round(cpu, 2),
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- what the run did


COUNTED_TABLES = ("runs", "feeds", "entries", "articles", "fetch_log", "feed_events")


def warehouse_counts(data_dir: Path) -> dict[str, Any]:
    """Row counts of the tables a poll writes (the DuckDB file opened read-only)."""
    path = data_dir / "newsflow.duckdb"
    if not path.exists():
        return {t: 0 for t in COUNTED_TABLES} | {"fetch_log_feed": 0, "fetch_log_page": 0, "raw_files": 0}
    con = duckdb.connect(str(path), read_only=True)
    try:
        # Table names from the constant above, not from input.
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED_TABLES}  # noqa: S608
        by_kind = dict(con.execute("SELECT kind, count(*) FROM fetch_log GROUP BY kind").fetchall())
    finally:
        con.close()
    counts["fetch_log_feed"] = by_kind.get("feed", 0)
    counts["fetch_log_page"] = by_kind.get("page", 0)
    raw = data_dir / "raw"
    counts["raw_files"] = sum(len(files) for _, _, files in os.walk(raw)) if raw.exists() else 0
    return counts


def last_run_summary(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "newsflow.duckdb"
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
    finally:
        con.close()
    if row is None:
        return None
    keep = ("status", "feeds_listed", "feeds_due", "feeds_polled", "feeds_not_modified", "feeds_failed",
            "new_entries", "pages_fetched", "pages_failed", "articles_extracted", "duplicates")  # fmt: skip
    return {k: v for k, v in zip(names, row, strict=True) if k in keep}


def request_kind(path: str) -> str:
    if path.startswith("/feeds/"):
        return "feeds"
    if path.startswith("/articles/"):
        return "pages"
    if path == "/robots.txt":
        return "robots"
    return "other"


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most arrivals in any half-open window [t, t + window) (times sorted)."""
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def server_arrivals(sites: Sequence[LoopbackSite], marks: Sequence[int]) -> list[list[tuple[float, str]]]:
    """Per site, the requests its threads recorded since ``marks`` (time.monotonic, path)."""
    out = []
    for site, mark in zip(sites, marks, strict=True):
        with site.lock:
            out.append(sorted(site.request_times[mark:]))
    return out


def feed_answers(sites: Sequence[LoopbackSite], marks: Sequence[int]) -> dict[str, int]:
    """How the feed requests since ``marks`` were answered: 304 (a conditional feed sent the
    validator it now has), or the whole document by a conditional feed (new or changed) or by a
    feed that ignores validators (newsflow then compares the bytes)."""
    answers: Counter[str] = Counter()
    for site, mark in zip(sites, marks, strict=True):
        with site.lock:
            requests = site.requests[mark:]
        for path, headers in requests:
            route = site.routes.get(path)
            if route is None or not path.startswith("/feeds/"):
                continue
            if not route.conditional:
                answers["200_validators_ignored"] += 1
            elif _header(headers, "if-none-match") == _etag(route.body, site.base_url):
                answers["304"] += 1
            else:
                answers["200_conditional"] += 1
    return {k: answers[k] for k in ("304", "200_conditional", "200_validators_ignored")}


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _etag(body: bytes, base_url: str) -> str:
    """The ETag ``LoopbackSite`` sends for ``body`` (newsflow/loopback.py)."""
    return '"' + hashlib.sha1(body.replace(b"{{BASE_URL}}", base_url.encode())).hexdigest()[:16] + '"'


def host_traffic(
    hosts: Sequence[str],
    requests: Sequence[Sequence[tuple[float, str]]],
    min_delay: float,
    poll_started: float,
    tolerance: float,
) -> dict[str, Any]:
    """What each host received during one poll: ``requests[i]`` are host ``i``'s (time, path)
    arrivals, on the clock of ``poll_started`` (the poll's start). ``tolerance``: how much
    closer than ``min_delay`` two arrivals may be and still count as spaced (clock noise)."""
    per_host = []
    all_gaps: list[float] = []
    busy_seconds: Counter[int] = Counter()  # second of the poll -> hosts that received a request
    for host, host_requests in zip(hosts, requests, strict=True):
        arrivals = sorted(host_requests)
        kinds = Counter(request_kind(path) for _, path in arrivals)
        times = [t for t, _ in arrivals]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        all_gaps += gaps
        busy_seconds.update({int(t - poll_started) for t in times})
        closest = min(range(len(gaps)), key=gaps.__getitem__) if gaps else None
        per_host.append(
            {
                "host": host,
                "closest_pair": None
                if closest is None
                else {
                    "gap": round(gaps[closest], 4),
                    "paths": [arrivals[closest][1], arrivals[closest + 1][1]],
                },
                "total": len(times),
                **{k: kinds.get(k, 0) for k in ("feeds", "pages", "robots", "other")},
                "max_in_window": max_in_window(times, min_delay),
                "max_in_window_tolerant": max_in_window(times, min_delay - tolerance),
                "min_gap": min(gaps) if gaps else None,
                "span": times[-1] - times[0] if len(times) > 1 else 0.0,
                # Seconds after the poll started: when this host was first and last asked.
                "first": round(times[0] - poll_started, 2) if times else None,
                "last": round(times[-1] - poll_started, 2) if times else None,
            }
        )
    totals = {k: sum(h[k] for h in per_host) for k in ("total", "feeds", "pages", "robots", "other")}
    gaps = [h["min_gap"] for h in per_host if h["min_gap"] is not None]
    busiest = max(per_host, key=lambda h: h["total"]) if per_host else None
    tightest = min(
        (h for h in per_host if h["min_gap"] is not None), key=lambda h: h["min_gap"], default=None
    )
    return {
        "requests": totals,
        "per_host_total": {
            "min": min(h["total"] for h in per_host),
            "max": max(h["total"] for h in per_host),
        },
        "busiest_host": busiest,
        "max_in_window": max(h["max_in_window"] for h in per_host),
        "max_in_window_tolerant": max(h["max_in_window_tolerant"] for h in per_host),
        "tolerance_seconds": tolerance,
        "min_gap_seconds": round(min(gaps), 4) if gaps else None,
        "tightest_host": tightest,
        # Beyond the arrival noise: which requests came too close, on which host (at most 20).
        "too_close": sorted(
            (
                (h["host"], h["closest_pair"])
                for h in per_host
                if h["min_gap"] is not None and h["min_gap"] < min_delay - tolerance
            ),
            key=lambda pair: pair[0],
        )[:20],
        "hosts_with_gap_under_min_delay": sum(g < min_delay for g in gaps),
        "longest_host_span_seconds": round(max(h["span"] for h in per_host), 2),
        "gap_seconds": {
            q: None if (v := percentile(all_gaps, f)) is None else round(v, 4)
            for q, f in (("p0", 0.0), ("p0.1", 0.001), ("p1", 0.01), ("p50", 0.5), ("p99", 0.99))
        },
        # How many hosts newsflow kept busy: hosts that received a request, per second of the
        # poll that saw any request (the politeness floor needs every host busy every second).
        "hosts_active_per_second": {
            "mean": round(sum(busy_seconds.values()) / len(busy_seconds), 1) if busy_seconds else 0,
            "max": max(busy_seconds.values(), default=0),
        },
        # Per host, seconds after the poll started: "first..last" request.
        "per_host_first_last": [f"{h['first']}..{h['last']}" for h in per_host],
    }


def window_check(traffic: dict[str, Any], min_delay: float) -> dict[str, Any]:
    """The politeness invariant: within any ``min_delay`` seconds a host receives at most one
    request. newsflow spaces every request *start* to a host by ``min_delay`` whatever the
    concurrency (2 in flight is about overlap, not a burst of starts), so no burst allowance:
    the budget is exactly 1 per window (1/min_delay per second). Judged on the window shortened
    by the clock's tolerance; the strict count is kept beside it."""
    budget = 1
    measured = traffic["max_in_window_tolerant"]
    return {
        "window_seconds": min_delay,
        "budget_per_window": budget,
        "max_per_window_strict": traffic["max_in_window"],
        "max_per_window": measured,
        "tolerance_seconds": traffic["tolerance_seconds"],
        "clock": traffic["clock"],
        "pass": measured <= budget,
    }


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Phase:
    name: str
    all_feeds: bool
    feeds_file: Path


@dataclass
class Bench:
    """What every poll of one benchmark shares."""

    sites: FeedSites
    data_dir: Path
    server: PrefectServer | None
    wire: WireTimes | None
    timeout: float
    profile_dir: Path | None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="newsflow-feedscale-"))
    data_dir, prefect_home = work / "data", work / "prefect"
    data_dir.mkdir()
    prefect_home.mkdir()
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "feed_scale",
        "environment": environment() | {"commit": _git_commit(), "repo": str(REPO_ROOT)},
        "feeds": args.feeds,
        "hosts": args.hosts,
        "entries_per_feed": args.entries,
        "feeds_toml_order": args.order,
        "changed_fraction": args.changed,
        "politeness": {
            "host_min_delay": DEFAULT_HOST_MIN_DELAY,
            "host_concurrency": DEFAULT_HOST_CONCURRENCY,
        },
        "poll_env": POLL_ENV,
        "prefect": args.prefect,
        "phases": {},
    }
    server: PrefectServer | None = None
    wire: WireTimes | None = None
    print(f"serving {args.feeds} feeds on {args.hosts} loopback hosts", file=sys.stderr, flush=True)
    sites = serve_feeds(args.feeds, args.hosts, args.entries, now)
    try:
        wire, results["wire_times_unavailable"] = start_wire_times(work / "wire.txt", str(SITES_NETWORK))
        if args.prefect == "server":
            server = PrefectServer(prefect_home)
            results["prefect_server_startup_seconds"] = server.startup_seconds
        bench = Bench(sites, data_dir, server, wire, args.timeout, profile_dir)
        env = poll_env(prefect_home, server.api_url if server else None)
        feeds_file = sites.write_feeds_toml(work / "feeds.toml", args.order)
        empty_file = work / "empty.toml"
        empty_file.write_text("# no feeds: the fixed cost of one poll command\n")
        results["conditional_feeds"] = sum(f.conditional for f in sites.feeds)
        results["same_bytes_feeds"] = sum(not f.conditional for f in sites.feeds)
        phases = [
            Phase("empty", False, empty_file),
            Phase("cold", True, feeds_file),
            Phase("unchanged", True, feeds_file),
            Phase("changed_1pct", True, feeds_file),
            Phase("due_only", False, feeds_file),
        ]
        if args.other_order:
            # The same feeds, nothing changed, listed in the other order: the order matters.
            other = next(o for o in ORDERS if o != args.order)
            other_file = sites.write_feeds_toml(work / f"feeds-{other}.toml", other)
            phases.append(Phase(f"unchanged_{other}", True, other_file))
            results["other_order"] = other
        if args.ephemeral_startup and server is not None:
            # The fixed cost without the shared server: Prefect starts a temporary one itself.
            phases.insert(1, Phase("empty_ephemeral", False, empty_file))
        for phase in phases:
            if phase.name == "changed_1pct":
                changed = sites.add_linked_entries(args.changed, datetime.now(UTC))
                results["changed_feeds"] = {
                    "count": len(changed),
                    "conditional": sum(f.conditional for f in changed),
                    "same_bytes": sum(not f.conditional for f in changed),
                    "hosts": len({f.host for f in changed}),
                }
            phase_env = env
            if phase.name == "empty_ephemeral":
                phase_env = poll_env(prefect_home, None)
            results["phases"][phase.name] = run_phase(bench, phase, phase_env)
            if results["phases"][phase.name]["returncode"] != 0:
                break
    finally:
        sites.stop()
        if server is not None:
            server.stop()
        if wire is not None:
            results["wire_capture"] = wire.close()
        if args.keep_data:
            results["work_dir"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def run_phase(bench: Bench, phase: Phase, env: dict[str, str]) -> dict[str, Any]:
    print(f"{phase.name}: newsflow poll{' --all' if phase.all_feeds else ''}", file=sys.stderr, flush=True)
    sites, data_dir, server, wire = bench.sites, bench.data_dir, bench.server, bench.wire
    before = warehouse_counts(data_dir)
    marks = [len(site.request_times) for site in sites.sites]
    load_before = round(os.getloadavg()[0], 2)
    poll_started, poll_started_wall = time.monotonic(), time.time()
    poll = run_poll(
        phase.feeds_file, data_dir, env, phase.all_feeds, bench.timeout, phase.name, bench.profile_dir
    )
    poll_ended_wall = time.time()
    out: dict[str, Any] = {
        "command": f"newsflow poll --feeds F --data-dir D{' --all' if phase.all_feeds else ''}",
        "returncode": poll.returncode,
        "seconds": round(poll.seconds, 2),
        "cpu_seconds": poll.cpu_seconds,
        "peak_rss_mib": poll.peak_rss_mib,
        "peak_processes": poll.peak_processes,
        # Others share the machine: its load (1-minute average) before and after the poll.
        "load_average": [load_before, round(os.getloadavg()[0], 2)],
    }
    if poll.returncode != 0:
        out["stderr_tail"] = poll.stderr[-_TAIL:]
        out["stdout_tail"] = poll.stdout[-_TAIL:]
        return out
    after = warehouse_counts(data_dir)
    out["rows_added"] = {k: after[k] - before[k] for k in after}
    out["run_summary"] = last_run_summary(data_dir)
    out["feed_answers"] = feed_answers(sites.sites, marks)
    hosts = [site.base_url for site in sites.sites]
    at_servers = host_traffic(
        hosts, server_arrivals(sites.sites, marks), DEFAULT_HOST_MIN_DELAY, poll_started, SERVER_TOLERANCE_S
    )
    at_servers["clock"] = "server threads (time.monotonic on arrival)"
    if wire is not None:
        sent, connects = wire.requests(poll_started_wall, poll_ended_wall)
        addresses = [site.base_url.removeprefix("http://") for site in sites.sites]
        on_wire = [sent.get(address, []) for address in addresses]
        out["traffic"] = host_traffic(
            hosts, on_wire, DEFAULT_HOST_MIN_DELAY, poll_started_wall, WIRE_TOLERANCE_S
        )
        out["traffic"]["clock"] = "kernel packet timestamps on lo"
        out["traffic"]["connections_opened"] = sum(connects[address] for address in addresses)
        out["traffic_at_server_threads"] = {  # the summary, to compare with the wire
            k: v for k, v in at_servers.items() if k not in ("per_host_first_last", "busiest_host")
        }
        out["politeness"] = window_check(out["traffic"], DEFAULT_HOST_MIN_DELAY)
        if out["traffic"]["requests"] != at_servers["requests"]:
            out["politeness"]["pass"] = False  # a request the capture missed: no verdict from it
            out["politeness"]["note"] = "the capture and the servers counted different requests"
    else:
        out["traffic"] = at_servers
        out["politeness"] = window_check(at_servers, DEFAULT_HOST_MIN_DELAY)
    if server is not None and phase.name != "empty_ephemeral":
        out["task_runs"] = server.task_runs()
    return out


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- report


def expected_seconds(feeds: int, hosts: int, min_delay: float) -> float:
    """The politeness floor of a poll of every feed: one host's feeds one spacing apart."""
    return (-(-feeds // hosts) - 1) * min_delay


def _print_report(results: dict[str, Any]) -> None:
    rows = []
    for name, p in results["phases"].items():
        t = p.get("traffic", {})
        req = t.get("requests", {})
        rows.append(
            [
                name,
                p["seconds"],
                p.get("cpu_seconds"),
                req.get("total"),
                req.get("feeds"),
                req.get("pages"),
                req.get("robots"),
                t.get("connections_opened"),
                (p.get("run_summary") or {}).get("feeds_due"),
                (p.get("run_summary") or {}).get("feeds_not_modified"),
                (p.get("feed_answers") or {}).get("304"),
                (p.get("rows_added") or {}).get("fetch_log"),
                (p.get("rows_added") or {}).get("entries"),
                (p.get("rows_added") or {}).get("articles"),
                (t.get("hosts_active_per_second") or {}).get("mean"),
                t.get("min_gap_seconds"),
                _window_cell(p.get("politeness")),
                p["peak_rss_mib"],
            ]
        )
    headers = ["poll", "seconds", "CPU s", "requests", "feeds", "pages", "robots", "connects", "due", "not modified", "of which 304",
               "fetch_log +", "entries +", "articles +", "hosts busy/s", "min gap s", "max/1s window", "peak RSS MiB"]  # fmt: skip
    title = (
        f"newsflow poll: {results['feeds']} feeds on {results['hosts']} loopback hosts "
        f"(feeds.toml {results['feeds_toml_order']}, Prefect {results['prefect']})"
    )
    table = Table(title=title)
    for n, header in enumerate(headers):
        table.add_column(header, justify="left" if n == 0 else "right", no_wrap=n in (0, len(headers) - 2))
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    Console(width=max(230, Console().width)).print(table)
    floor = expected_seconds(results["feeds"], results["hosts"], DEFAULT_HOST_MIN_DELAY)
    print(f"politeness floor of a poll of every feed: {floor:.0f} s ({-(-results['feeds'] // results['hosts'])} "
          f"feeds per host x {DEFAULT_HOST_MIN_DELAY:g} s)")  # fmt: skip
    if "prefect_server_startup_seconds" in results:
        print(f"prefect server start-up (once): {results['prefect_server_startup_seconds']} s")
    for name, p in results["phases"].items():
        if p["returncode"] != 0:
            print(
                f"\n{name}: newsflow poll FAILED (exit code {p['returncode']}); end of its stderr:\n{p['stderr_tail']}"
            )
        elif p.get("task_runs"):
            slow = sorted(p["task_runs"], key=lambda r: -r["seconds"])[:4]
            print(f"{name}: slowest task runs: " + ", ".join(f"{r['task']} {r['seconds']} s" for r in slow))
        if p.get("traffic_at_server_threads", {}).get("min_gap_seconds") is not None:
            wire, threads = p["traffic"]["gap_seconds"], p["traffic_at_server_threads"]["gap_seconds"]
            print(
                f"{name}: gaps between two requests to a host, p0/p1/p50: on the wire "
                f"{wire['p0']}/{wire['p1']}/{wire['p50']} s, as the server threads saw them "
                f"{threads['p0']}/{threads['p1']}/{threads['p50']} s"
            )
    verdicts = [p["politeness"]["pass"] for p in results["phases"].values() if "politeness" in p]
    results["politeness_pass"] = all(verdicts)
    clocks = {p["politeness"]["clock"] for p in results["phases"].values() if "politeness" in p}
    print(
        f"at most 1 request per host in any {DEFAULT_HOST_MIN_DELAY:g} s window ({', '.join(sorted(clocks))}): "
        f"{'PASS' if all(verdicts) else 'FAIL'}"
    )
    if results.get("wire_times_unavailable"):
        print(
            f"kernel packet times unavailable ({results['wire_times_unavailable']}): judged on server threads' times"
        )


def _window_cell(check: dict[str, Any] | None) -> str | None:
    if not check:
        return None
    verdict = "PASS" if check["pass"] else "FAIL"
    return f"{check['max_per_window']} ({check['max_per_window_strict']} strict) {verdict}"


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="newsflow poll of thousands of feeds on loopback hosts.")
    parser.add_argument("--feeds", type=int, default=5000, help="feeds in all (default 5000)")
    parser.add_argument("--hosts", type=int, default=50, help="loopback hosts to deal them over (default 50)")
    parser.add_argument("--entries", type=int, default=3, help="entries per feed at the start (default 3)")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of feeds that change (0.01)")
    parser.add_argument(
        "--order", choices=ORDERS, default="interleaved",
        help="feeds.toml order: the hosts in turn (default) or a host's feeds together",
    )  # fmt: skip
    parser.add_argument(
        "--no-other-order", dest="other_order", action="store_false",
        help="skip the last poll: nothing changed, feeds listed in the other order (grouped: ~1 h at 5,000)",
    )  # fmt: skip
    parser.add_argument(
        "--prefect", choices=("server", "ephemeral"), default="server",
        help="one `prefect server start` for all polls (default), or each command's temporary server",
    )  # fmt: skip
    parser.add_argument(
        "--no-ephemeral-startup", dest="ephemeral_startup", action="store_false",
        help="with --prefect server, skip the empty poll on a temporary server",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, help="run each poll under py-spy record, profiles into this dir"
    )
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds before a poll is killed")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    parser.add_argument(
        "--output", type=Path, help="results JSON (default benchmarks/results/feed_scale.json)"
    )
    args = parser.parse_args(argv)
    if args.hosts > 254:
        parser.error("at most 254 hosts (127.0.1.1 ... 127.0.1.254)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.perf_counter()
    results = measure(args)
    results["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    _print_report(results)
    print(f"results: {write_results(results, 'feed_scale.json', args.output)}")
    failed = any(p["returncode"] != 0 for p in results["phases"].values())
    return 1 if failed or not results["politeness_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
