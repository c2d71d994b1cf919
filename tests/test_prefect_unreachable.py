"""The Prefect API unreachable mid-run: a bounded wait, a clear error, nothing lost or corrupted.

The poll runs as a real ``newsflow poll`` process whose PREFECT_API_URL goes through a TCP relay to
the session's Prefect server; the relay is cut (listener and every connection closed) once the
poll is fetching pages, so the API vanishes in the middle of the run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from builders import RSS, feeds_toml, make_story, measured, page_route, rss_feed
from conftest import subprocess_env
from conftest import warehouse_rows as _rows

from newsflow.loopback import Route

NEWSFLOW = [sys.executable, "-m", "newsflow.cli"]
EX_TEMPFAIL = 75
GIVE_UP_WITHIN = 90.0  # seconds from the cut to the process's exit


class Relay:
    """A TCP relay on loopback to ``target``; ``cut()`` makes it vanish like a dead server."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut_done = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.cut_done:
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            self.cut_done = True
            self.listener.close()
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def test_prefect_api_gone_mid_run(prefect_api, tmp_path, site):
    stories = [make_story(i, seed=13) for i in range(20)]
    for s in stories:
        site.routes[f"/a/{s.slug}.html"] = page_route(s)
        site.routes[f"/a/{s.slug}.html"].delay = 0.15
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/a/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([site.url("/rss.xml")]))
    api = urlsplit(prefect_api)
    relay = Relay((api.hostname, api.port))
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_BATCH_SIZE="4")
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{relay.port}{api.path}"
    proc = subprocess.Popen(
        NEWSFLOW + ["poll", "--all", "--feeds", str(feeds), "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(p.startswith("/a/") for p in site.hits) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the poll ended before it fetched a page"
    relay.cut()
    cut_at = time.monotonic()
    out, err = proc.communicate(timeout=GIVE_UP_WITHIN + 60)
    took = time.monotonic() - cut_at

    measured("prefect_api_gone", "API cut mid-poll: seconds to exit 75", seconds=took)
    assert took < GIVE_UP_WITHIN, f"{took:.0f} s from the API's loss to the exit"
    assert proc.returncode == EX_TEMPFAIL, (proc.returncode, err[-3000:])
    assert "the Prefect API" in err and "could not be reached" in err
    # The work itself did not depend on the API: every page stored once, the run recorded, consistent.
    assert _rows(data, "SELECT count(*), count(DISTINCT url_key) FROM articles") == [(20, 20)]
    assert _rows(data, "SELECT status FROM runs") == [("completed",)]
    check = subprocess.run(
        NEWSFLOW + ["warehouse", "check", "--data-dir", str(data)],
        env=subprocess_env(prefect_api, data), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
