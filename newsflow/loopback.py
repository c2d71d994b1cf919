"""A tiny threaded HTTP server for loopback sites: the demo, the tests and the benchmarks.

It serves fixed routes with ETag / Last-Modified (so conditional GET can answer 304), optional
gzip, per-route delays and custom handlers (a stalling or garbage-spewing server), and counts
the hits on each path. It binds only to loopback addresses (127.0.0.0/8, ::1).
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts
    conditional: bool = True  # send ETag/Last-Modified and honour If-None-Match/If-Modified-Since
    gzip: bool = False  # gzip the body when the client accepts it
    handler: Callable[[BaseHTTPRequestHandler], None] | None = None  # full control instead


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        site = self.server.site
        path = urlsplit(self.path).path
        with site.lock:
            site.hits[path] += 1
            site.requests.append((path, dict(self.headers)))
            site.request_times.append((time.monotonic(), path))
        route = site.routes.get(path) or site.routes.get(self.path)
        if route is None:
            self._send(404, b"not found", "text/plain", {})
            return
        if route.delay:
            time.sleep(route.delay)
        if route.handler is not None:
            route.handler(self)
            return
        body = route.body.replace(b"{{BASE_URL}}", site.base_url.encode())
        headers = dict(route.headers)
        if route.conditional and route.status == 200:
            etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
            headers.setdefault("ETag", etag)
            headers.setdefault("Last-Modified", site.last_modified)
            if self.headers.get("If-None-Match") == headers["ETag"] or (
                self.headers.get("If-None-Match") is None
                and self.headers.get("If-Modified-Since") == headers["Last-Modified"]
            ):
                self._send(304, b"", None, headers)
                return
        if route.gzip and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._send(route.status, body, route.content_type, headers)

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str]):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    site: LoopbackSite

    def handle_error(self, request, client_address):
        # A client that gives up early (a timeout, a size cap) is expected here: no traceback.
        pass


class LoopbackSite:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, routes: dict[str, Route] | None = None):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"loopback sites bind to loopback addresses only, not {host}")
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.request_times: list[tuple[float, str]] = []  # (time.monotonic() on arrival, path)
        self.lock = threading.Lock()
        self.last_modified = formatdate(time.time() - 3600, usegmt=True)
        self._server = _Server((host, port), _Handler)
        self._server.site = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> LoopbackSite:
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-site", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackSite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
