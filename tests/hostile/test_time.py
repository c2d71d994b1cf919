"""Time: servers that never accept, never answer, answer the headers and stall, trickle their
headers or body a byte at a time, or slow every hop of a redirect chain; a resolver that hangs.

Every request gives up at its total deadline (``request_deadline``: redirects, retries and the
name lookup included), not only per read: each case asserts the recorded class (``timeout``) and
the time it took to give up. Settings here: connect and read timeouts 0.8 s, deadline 1.5 s.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from builders import RSS, make_story, page_route, rss_feed
from hostile_kit import PUBLIC_IP, VirtualNet, child_fetch, fetch_log, measured, poll_once

from newsflow.loopback import LoopbackSite, Route
from tasks.fetch import FetchRequest, fetch_all

KB = 1024
DEADLINE = 1.5
SLACK = 1.0  # scheduling on a loaded 2-core machine, thread start-up
QUICK = {
    "connect_timeout": 0.8,
    "read_timeout": 0.8,
    "request_deadline": DEADLINE,
    "retries": 1,
    "retry_backoff": 0.05,
    "host_min_delay": 0,
    "allow_private_networks": True,
}


@pytest.fixture(scope="module")
def release():
    """Set at the end of the module: every stalling handler waits on it, then returns."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture(scope="module")
def never_accepts():
    """A listener whose accept queue is full: the next connect hangs (SYN not answered)."""
    listener = socket.socket()
    listener.bind(("127.0.0.4", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=2)  # takes the one slot
    yield "http://{}:{}/feed.xml".format(*listener.getsockname())
    filler.close()
    listener.close()


def stalling_routes(release: threading.Event) -> dict[str, Route]:
    def never_answer(h):
        release.wait(30)

    def headers_then_stall(h):
        h.send_response(200)
        h.send_header("Content-Type", RSS)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.flush()
        release.wait(30)

    def trickle(data: bytes, raw_headers: bool):
        def handle(h):
            if not raw_headers:
                h.send_response(200)
                h.send_header("Content-Type", RSS)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.flush()
            try:
                for i in range(len(data)):
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                    if release.wait(0.2):  # 5 bytes a second: every read well inside its timeout
                        return
            except OSError:
                return

        return handle

    endless_headers = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100_000
    body = rss_feed([(make_story(1, seed=64), "http://127.0.0.1/x", "t")])
    routes = {
        "/never-answers": Route(handler=never_answer),
        "/headers-then-stall": Route(handler=headers_then_stall),
        "/trickled-body": Route(handler=trickle(body, raw_headers=False)),
        "/trickled-headers": Route(handler=trickle(endless_headers, raw_headers=True)),
    }
    for i in range(6):  # each hop answers in 0.4 s: inside the read timeout, not the deadline
        routes[f"/slow-hop-{i}"] = Route(
            status=302, headers={"Location": f"/slow-hop-{i + 1}"}, delay=0.4, conditional=False
        )
    routes["/slow-hop-6"] = Route(body=body, content_type=RSS)
    return routes


@pytest.fixture(scope="module")
def slow_site(release):
    with LoopbackSite("127.0.0.5", routes=stalling_routes(release)) as s:
        yield s


SLOW_PATHS = ["/never-answers", "/headers-then-stall", "/trickled-body", "/trickled-headers", "/slow-hop-0"]


def test_a_resolver_that_hangs_is_given_up_at_the_deadline(settings, monkeypatch):
    """A lookup that never returns (a dead DNS server) ends with the request's deadline; the
    lookup used to hold the request until the resolver itself gave up (here: 10 s)."""
    net = VirtualNet()
    net.name("slow-dns.test", PUBLIC_IP)
    resolve = net.getaddrinfo
    hanging = threading.Event()

    def hang_then_answer(host, *args, **kwargs):
        if str(host).startswith("slow-dns"):
            hanging.wait(10)
        return resolve(host, *args, **kwargs)

    net.getaddrinfo = hang_then_answer
    net.install(monkeypatch)
    quick = settings.model_copy(update={**QUICK, "allow_private_networks": False})
    started = time.monotonic()
    try:
        (r,) = fetch_all([FetchRequest("http://slow-dns.test/feed.xml", 64 * KB)], quick)
    finally:
        took = time.monotonic() - started
        hanging.set()
    assert r.error_class == "timeout", (r.error_class, r.error_message)
    assert took < DEADLINE + SLACK, took


def test_retries_share_the_deadline(settings):
    """A server that resets every connection (transient, retried) costs at most the deadline."""
    listener = socket.socket()
    listener.bind(("127.0.0.4", 0))
    listener.listen(8)
    accepted = []

    def reset_all():
        listener.settimeout(0.1)
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(1)
            time.sleep(0.5)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    quick = settings.model_copy(update={**QUICK, "retries": 10, "retry_backoff": 0.3})
    started = time.monotonic()
    (r,) = fetch_all([FetchRequest("http://{}:{}/".format(*listener.getsockname()), 64 * KB)], quick)
    took = time.monotonic() - started
    listener.close()
    assert r.error_class in ("connect", "timeout", "protocol"), (r.error_class, r.error_message)
    assert 2 <= r.attempts <= 10
    assert took < DEADLINE + SLACK, took


def test_poll_with_slow_feeds_completes_and_records_timeouts(
    prefect_api, newsflow_env, tmp_path, monkeypatch, site, slow_site, never_accepts
):
    """Slow feeds (the trickle and the slow chain, which no read timeout catches, and a host that
    never accepts) are fetched side by side with the good one: the run waits for one deadline,
    not their sum, records each as ``timeout`` and stores the good article."""
    for key, value in QUICK.items():
        monkeypatch.setenv(f"NEWSFLOW_{key.upper()}", str(value))
    good = make_story(1, seed=64)
    site.routes["/good.html"] = page_route(good)
    site.routes["/good.xml"] = Route(
        body=rss_feed([(good, site.url("/good.html"), "good")]), content_type=RSS
    )
    slow = [slow_site.url("/trickled-body"), slow_site.url("/slow-hop-0"), never_accepts]
    started = time.monotonic()
    result = poll_once(tmp_path, [site.url("/good.xml"), *slow], newsflow_env)
    took = time.monotonic() - started
    logged = fetch_log(newsflow_env)
    assert {u: logged[u][1] for u in slow} == dict.fromkeys(slow, "timeout")
    assert logged[site.url("/good.xml")][1] is None and logged[site.url("/good.html")][1] is None
    assert result["articles_extracted"] == 1 and result["feeds_failed"] == len(slow)
    assert took < DEADLINE + 15, took  # (the run's own work: the 15 s)


def test_slow_servers_are_given_up_at_the_deadline(slow_site, never_accepts):
    """All the slow cases at once, in a fresh process: each is a ``timeout`` within the deadline
    (a trickle of 5 bytes a second and a chain of slow hops too, though no single read is slow),
    and waiting costs no memory."""
    report = child_fetch(
        [{"url": slow_site.url(p), "max_bytes": 1024 * KB} for p in SLOW_PATHS]
        + [{"url": never_accepts, "max_bytes": 64 * KB}],
        QUICK,
    )
    assert {r["error_class"] for r in report.result} == {"timeout"}, report.result
    measured("time", f"{len(report.result)} slow servers, deadline {DEADLINE} s", peak_mb=report.peak_growth_mb,
             seconds=max(r["elapsed_ms"] for r in report.result) / 1000)  # fmt: skip
    assert max(r["elapsed_ms"] for r in report.result) <= (DEADLINE + 0.2) * 1000
    # the slow paths share one host, fetched two at a time (politeness): three rounds at most
    assert report.elapsed_s < 3 * DEADLINE + SLACK
    assert report.peak_growth_mb < 32, report
