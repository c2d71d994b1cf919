"""Shared parts of the hostile-input tests (one module per family in this directory).

- :class:`VirtualNet`: a network made of loopback servers. Names resolve through a table (no DNS
  query ever leaves the process) and connections to "virtual" addresses (a public one, the cloud
  metadata address, CGNAT, unique-local, NAT64 ...) are carried to loopback servers. The fetcher's
  own address check runs unchanged on the addresses a real resolver would give, with private
  networks disallowed; only the two lowest layers are simulated: the resolver
  (``socket.getaddrinfo``) and the wire (the httpcore backend under the fetcher's guarded one). A request that
  got past the check lands on the loopback server standing in for the forbidden address, where
  it is counted.
- :func:`run_child`: one hostile case in a child process under an address-space limit, reporting
  its result and how far its peak resident memory rose above what it used before the case.
- :func:`poll_once` / :func:`fetch_log`: a real poll run (the Prefect flow, in process) and what
  it recorded.
"""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builders import measured  # noqa: E402,F401 - re-exported for the family modules

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Global unicast addresses the virtual network routes to loopback servers. Never contacted.
PUBLIC_IP = "93.184.215.14"
PUBLIC_IP_2 = "93.184.215.15"

# Forbidden destinations, by kind: where the tests point feeds, entry links and redirects.
FORBIDDEN_ADDRESSES = {
    "loopback": "127.0.0.1",
    "private-10": "10.0.0.7",
    "private-192": "192.168.1.20",
    "link-local-metadata": "169.254.169.254",
    "cgnat": "100.64.0.9",
    "unique-local": "fd12:3456:789a::1",
    "ipv6-loopback": "::1",
    "nat64-of-metadata": "64:ff9b::a9fe:a9fe",
    "ipv4-mapped-loopback": "::ffff:127.0.0.1",
    "ipv4-mapped-metadata": "::ffff:169.254.169.254",
    "6to4-of-private": "2002:a00:7::1",
}


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --------------------------------------------------------------------------- the virtual network


@dataclass
class VirtualNet:
    """Names -> addresses (``dns``; a list of answers is given out one per lookup, the last one
    repeated: a rebinding resolver), and addresses -> loopback servers (``routes``)."""

    dns: dict[str, list[list[str]]] = field(default_factory=dict)
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    lookups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    connections: list[tuple[str, str]] = field(default_factory=list)  # (host asked, address reached)
    _answered: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def name(self, host: str, *answers: list[str] | str) -> None:
        self.dns[host.lower()] = [[a] if isinstance(a, str) else list(a) for a in answers]

    def route(self, address: str, server) -> None:
        """Connections to ``address`` (any port) reach ``server`` (a LoopbackSite or (host, port))."""
        target = server if isinstance(server, tuple) else server._server.server_address[:2]
        self.routes[str(ipaddress.ip_address(address))] = (target[0], target[1])

    # ----------------------------------------------------------------- the two simulated layers

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's names
        name = (host.decode() if isinstance(host, bytes) else str(host)).lower().rstrip(".")
        with self._lock:
            answers = self.dns.get(name)
            if answers is not None:
                answer = answers[min(self._answered[name], len(answers) - 1)]
                self._answered[name] += 1
                self.lookups.append((name, tuple(answer)))
        if answers is None:
            # Literal addresses, in every spelling the C library accepts; never a DNS query.
            infos = _REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            with self._lock:
                self.lookups.append((name, tuple(i[4][0] for i in infos)))
            return infos
        out = []
        for address in answer:
            v6 = ":" in address
            sockaddr = (address, port or 0, 0, 0) if v6 else (address, port or 0)
            out.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    def backend(self):
        """httpcore's network backend with the virtual wire under it: installed as the backend
        the fetcher builds its guarded backend on, and nowhere else (Prefect's own client, in the
        same process, keeps the real one)."""
        import httpcore

        net = self

        class WiredBackend(httpcore.AnyIOBackend):
            async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
                address = host
                try:
                    ipaddress.ip_address(host.split("%", 1)[0])
                except ValueError:  # a name: what a naive client does, resolve it (again) here
                    address = net.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
                address = str(ipaddress.ip_address(address.split("%", 1)[0]))
                with net._lock:
                    net.connections.append((host, address))
                target = net.routes.get(address)
                if target is None:
                    if not ipaddress.ip_address(address).is_loopback:
                        raise httpcore.ConnectError(f"{address} is not part of the virtual network")
                    target = (address, port)
                return await super().connect_tcp(target[0], target[1], timeout, local_address, socket_options)

        return WiredBackend

    def install(self, monkeypatch) -> None:
        import httpcore

        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(httpcore, "AnyIOBackend", self.backend())

    def install_for_good(self) -> None:
        """In a child process (no monkeypatch to undo)."""
        import httpcore

        socket.getaddrinfo = self.getaddrinfo
        httpcore.AnyIOBackend = self.backend()

    def reached(self, address: str) -> int:
        """Connections made to ``address``."""
        address = str(ipaddress.ip_address(address))
        return sum(1 for _, a in self.connections if a == address)

    def config(self) -> dict:
        return {"dns": self.dns, "routes": {k: list(v) for k, v in self.routes.items()}}

    @classmethod
    def from_config(cls, config: dict) -> VirtualNet:
        net = cls(dns=config["dns"])
        net.routes = {k: (v[0], v[1]) for k, v in config["routes"].items()}
        return net


_REAL_GETADDRINFO = socket.getaddrinfo


# --------------------------------------------------------------------------- child processes

MB = 1024 * 1024


@dataclass(frozen=True)
class ChildReport:
    result: object
    peak_growth_mb: float  # peak resident memory during the case, above the resident size before it
    elapsed_s: float


def run_child(
    case: str,
    args: dict,
    *,
    address_space_mb: int = 3072,
    timeout: float = 120,
    net: VirtualNet | None = None,
) -> ChildReport:
    """Run one case (see :data:`_CASES`) in a fresh interpreter whose address space is capped
    (a runaway allocation fails there instead of taking the machine), and report its peak
    memory above the resident size it had before the case began."""
    payload = json.dumps({"case": case, "args": args, "net": net.config() if net else None})

    def limit() -> None:
        cap = address_space_mb * MB
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests")])
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-c", "import hostile_kit; hostile_kit.child_main()"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=limit,  # noqa: PLW1509 - no threads in between that could deadlock
        cwd=str(REPO),
    )
    if proc.returncode != 0:
        raise AssertionError(f"child {case} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return ChildReport(out["result"], out["peak_growth_kb"] / 1024, out["elapsed_s"])


def _status_kb(field_name: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process image, in KiB. Not
    ``ru_maxrss``: Linux carries that over from the pytest process this child was forked from."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def child_main() -> None:
    request = json.loads(sys.stdin.read())
    if request["net"]:
        VirtualNet.from_config(request["net"]).install_for_good()
    prepare, run = _CASES[request["case"]]
    state = prepare(request["args"])  # imports and inputs: not part of the case's memory
    before = _status_kb("VmRSS")
    started = time.monotonic()
    result = run(state)
    elapsed = time.monotonic() - started
    peak = _status_kb("VmHWM")
    print(json.dumps({"result": result, "peak_growth_kb": max(0, peak - before), "elapsed_s": elapsed}))


def _prepare_fetch(args: dict):
    from newsflow.settings import Settings
    from tasks.fetch import FetchRequest, fetch_all

    settings = Settings(**args["settings"])
    requests = [FetchRequest(**r) for r in args["requests"]]
    fetch_all([], settings)  # nothing, but every import is done
    return settings, requests


def _run_fetch(state) -> list[dict]:
    from tasks.fetch import fetch_all

    settings, requests = state
    return [
        {
            "url": r.url,
            "error_class": r.error_class,
            "error_message": r.error_message,
            "status": r.status,
            "body_bytes": len(r.body) if r.body is not None else None,
            "elapsed_ms": r.elapsed_ms,
            "attempts": r.attempts,
        }
        for r in fetch_all(requests, settings)
    ]


def _prepare_parse(args: dict):
    from tasks.parse import parse_feed

    parse_feed(b'<rss version="2.0"><channel><title>warm</title></channel></rss>', "https://w.example/")
    return Path(args["path"]).read_bytes(), args["url"], args.get("headers") or {}


def _run_parse(state) -> dict:
    from tasks.parse import FeedParseError, parse_feed

    body, url, headers = state
    try:
        parsed = parse_feed(body, url, headers)
    except FeedParseError as exc:
        return {"error_class": exc.error_class, "error": str(exc)[:300]}
    fields = [parsed.title or ""] + [
        v or "" for e in parsed.entries for v in (e.title, e.summary, e.link, e.guid, e.author)
    ]
    return {"format": parsed.format, "entries": len(parsed.entries), "longest_field": max(map(len, fields))}


def _prepare_extract(args: dict):
    from tasks.extract import ExtractJob, _warm_up, extract_article

    _warm_up()
    extract_article(ExtractJob("warm", "http://w.example/", b"<html><body><p>warm up</p></body></html>"))
    return ExtractJob("k", args["url"], Path(args["path"]).read_bytes(), args.get("content_type"))


def _run_extract(job) -> dict:
    from tasks.extract import extract_article

    got = extract_article(job)
    return {"error": got.error, "text_chars": len(got.text or "")}


def _prepare_extract_each(args: dict):
    from tasks.extract import ExtractJob

    _prepare_extract({"path": args["jobs"][0]["path"], "url": "http://w.example/"})
    return [
        ExtractJob(str(n), j["url"], Path(j["path"]).read_bytes(), j.get("content_type"))
        for n, j in enumerate(args["jobs"])
    ]


def _run_extract_each(jobs) -> list[dict]:
    """Each page on its own: time, and peak memory above the resident size before it (the peak
    is reset between pages through /proc/self/clear_refs)."""
    from tasks.extract import extract_article

    out = []
    for job in jobs:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS
        before = _status_kb("VmRSS")
        started = time.monotonic()
        got = extract_article(job)
        out.append(
            {
                "error": got.error,
                "text_chars": len(got.text or ""),
                "elapsed_s": time.monotonic() - started,
                "peak_growth_mb": max(0, _status_kb("VmHWM") - before) / 1024,
            }
        )
    return out


_CASES: dict[str, tuple[Callable, Callable]] = {
    "fetch": (_prepare_fetch, _run_fetch),
    "parse": (_prepare_parse, _run_parse),
    "extract": (_prepare_extract, _run_extract),
    "extract_each": (_prepare_extract_each, _run_extract_each),
}


def child_fetch(requests: list[dict], settings: dict, **kwargs) -> ChildReport:
    """``fetch_all`` of these requests in a child; ``settings`` are Settings fields."""
    return run_child("fetch", {"requests": requests, "settings": settings}, **kwargs)


# --------------------------------------------------------------------------- a real poll


def poll_once(tmp_path: Path, feed_urls: list[str], data_dir: Path) -> dict:
    """One run of the poll flow (every listed feed), in this process: monkeypatched layers
    (a :class:`VirtualNet`) apply to its fetches."""
    from builders import feeds_toml

    from flows.poll import poll_flow

    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml(feed_urls))
    return poll_flow(feeds_file=str(feeds_file), data_dir=str(data_dir), all_feeds=True)


def query(data_dir: Path, sql: str, params=None) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def fetch_log(data_dir: Path) -> dict[str, tuple[str, str | None, str | None]]:
    """url -> (kind, error_class, error_message) of every fetch the warehouse recorded."""
    rows = query(data_dir, "SELECT url, kind, error_class, error_message FROM fetch_log")
    return {url: (kind, cls, msg) for url, kind, cls, msg in rows}


# --------------------------------------------------------------------------- raw TCP


class ConnectionCounter:
    """A loopback TCP listener that only counts the connections it accepts (and closes them):
    the stand-in for an FTP, gopher or any other non-HTTP service a URL may point at."""

    def __init__(self, host: str = "127.0.0.3"):
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="connection-counter")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
