"""Unit tests for tasks/fetch.py against real loopback servers."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import brotli
import pytest

from newsflow.loopback import LoopbackSite, Route
from tasks.fetch import (
    ERROR_CLASSES,
    BoundedDecoder,
    Fetcher,
    FetchError,
    FetchRequest,
    FetchResult,
    address_allowed,
    fetch_all,
    retry_after_seconds,
)

MB = 1024 * 1024
REFUSALS = {"bad_url", "dns", "blocked_address"}
TEXT = ("The harbour wall collapsed overnight, officials said. " * 200).encode()


def fetch_one(url: str, settings, max_bytes: int = MB, **kwargs) -> FetchResult:
    (result,) = fetch_all([FetchRequest(url=url, max_bytes=max_bytes, **kwargs)], settings)
    assert result.error_class is None or result.error_class in ERROR_CLASSES
    return result


def timed(url: str, settings, **kwargs) -> tuple[FetchResult, float]:
    started = time.monotonic()
    result = fetch_one(url, settings, **kwargs)
    return result, time.monotonic() - started


def raw_handler(status: int, body: bytes, headers: dict[str, str], content_length: bool = True):
    """A handler that sends exactly these headers and bytes (no encoding done for us)."""

    def handle(h):
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if content_length:
            h.send_header("Content-Length", str(len(body)))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    return handle


@pytest.fixture(scope="module")
def _module_site():
    with LoopbackSite("127.0.0.1") as s:
        yield s


@pytest.fixture
def site(_module_site):
    """One loopback server for the module (stopping one costs half a second), reset per test."""
    with _module_site.lock:
        _module_site.routes.clear()
        _module_site.hits.clear()
        _module_site.requests.clear()
    return _module_site


@pytest.fixture
def release():
    """Set at teardown: stalling handlers wait on it, so no server thread outlives its test for long."""
    event = threading.Event()
    yield event
    event.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- plain success


def test_200_with_body_and_headers(site, settings):
    site.routes["/doc"] = Route(
        body=b"hello world", content_type="text/plain; charset=utf-8", headers={"X-Test": "yes"}
    )
    url = site.url("/doc")
    r = fetch_one(url, settings)
    assert r.ok and r.error_class is None and r.error_message is None
    assert r.status == 200
    assert r.body == b"hello world"
    assert r.url == url and r.final_url == url
    assert r.redirects == ()
    assert r.attempts == 1
    assert r.http_version == "HTTP/1.1"
    assert r.header("x-test") == "yes"
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert r.header("ETag") is not None
    assert 0 <= r.elapsed_ms < 5000
    assert abs(r.fetched_at - datetime.now(UTC)) < timedelta(seconds=10)
    assert site.hits["/doc"] == 1
    path, headers = site.requests[0]
    assert path == "/doc"
    assert headers["User-Agent"] == settings.user_agent
    assert {"gzip", "deflate", "br"} <= {e.strip() for e in headers["Accept-Encoding"].split(",")}
    assert "If-None-Match" not in headers


def test_custom_user_agent(site, settings):
    site.routes["/ua"] = Route(body=b"x")
    fetch_one(
        site.url("/ua"), settings.model_copy(update={"user_agent": "test-bot/9.9 (+https://t.example)"})
    )
    assert site.requests[0][1]["User-Agent"] == "test-bot/9.9 (+https://t.example)"


def test_results_come_back_in_request_order(site, settings):
    for i in range(5):
        site.routes[f"/n{i}"] = Route(body=f"body {i}".encode(), delay=0.05 * (5 - i))
    results = fetch_all([FetchRequest(site.url(f"/n{i}"), MB) for i in range(5)], settings)
    assert [r.body for r in results] == [f"body {i}".encode() for i in range(5)]
    assert fetch_all([], settings) == []


# --------------------------------------------------------------------------- content encodings


def test_gzip_is_decoded(site, settings):
    site.routes["/gz"] = Route(body=TEXT, gzip=True)
    r = fetch_one(site.url("/gz"), settings)
    assert r.ok
    assert r.body == TEXT
    assert r.header("content-encoding") == "gzip"
    assert int(r.header("content-length")) < len(TEXT)  # it really went compressed


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("deflate", lambda b: (lambda c: c.compress(b) + c.flush())(zlib.compressobj(6, zlib.DEFLATED, -15))),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("x-gzip", gzip.compress),
        ("identity", lambda b: b),
    ],
    ids=["raw-deflate", "zlib-deflate", "brotli", "x-gzip", "identity"],
)
def test_other_encodings_are_decoded(site, settings, encoding, compress):
    site.routes["/enc"] = Route(handler=raw_handler(200, compress(TEXT), {"Content-Encoding": encoding}))
    r = fetch_one(site.url("/enc"), settings)
    assert r.error_class is None, r.error_message
    assert r.body == TEXT


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip" * 10),
        ("br", b"\xff\xfe not brotli" * 10),
        ("zstdx", b"abc"),
    ],
    ids=["broken-gzip", "broken-brotli", "unknown-encoding"],
)
def test_broken_or_unknown_encoding_is_a_decoding_error(site, settings, encoding, body):
    site.routes["/bad"] = Route(handler=raw_handler(200, body, {"Content-Encoding": encoding}))
    r = fetch_one(site.url("/bad"), settings)
    assert r.error_class == "decoding"
    assert r.body is None
    assert r.attempts == 1


# --------------------------------------------------------------------------- size caps


def test_declared_content_length_over_cap(site, settings):
    site.routes["/big"] = Route(body=b"x" * (2 * MB))
    r, elapsed = timed(site.url("/big"), settings, max_bytes=MB)
    assert r.error_class == "too_large"
    assert "Content-Length" in r.error_message
    assert r.body is None and r.status is None
    assert r.attempts == 1
    assert elapsed < 2


def test_streamed_body_over_cap_without_content_length(site, settings):
    site.routes["/stream"] = Route(
        handler=raw_handler(200, b"y" * (3 * MB), {"Content-Type": "text/html"}, content_length=False)
    )
    r = fetch_one(site.url("/stream"), settings, max_bytes=MB)
    assert r.error_class == "too_large"
    assert r.body is None


def test_body_exactly_at_cap_is_accepted(site, settings):
    site.routes["/exact"] = Route(body=b"z" * 1000, gzip=True)
    r = fetch_one(site.url("/exact"), settings, max_bytes=1000)
    assert r.ok and r.body == b"z" * 1000
    r = fetch_one(site.url("/exact"), settings, max_bytes=999)
    assert r.error_class == "too_large"


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = b"\0" * (50 * MB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return {
        "gzip": gzip.compress(zeros, compresslevel=6),
        "deflate": c.compress(zeros) + c.flush(),
        "br": brotli.compress(zeros, quality=1),
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compression_bomb_is_stopped_at_the_cap(site, settings, bombs, encoding):
    bomb = bombs[encoding]
    assert len(bomb) < MB  # honest, small Content-Length: only the decoded size gives it away
    site.routes["/bomb"] = Route(handler=raw_handler(200, bomb, {"Content-Encoding": encoding}))
    r, elapsed = timed(site.url("/bomb"), settings, max_bytes=MB)
    assert r.error_class == "too_large"
    assert str(MB) in r.error_message
    assert r.body is None
    assert elapsed < 2.0


def test_bounded_decoder_directly():
    bomb = gzip.compress(b"\0" * (20 * MB))
    d = BoundedDecoder("gzip", 64 * 1024)
    with pytest.raises(FetchError) as info:
        for i in range(0, len(bomb), 1024):
            d.feed(bomb[i : i + 1024])
    assert info.value.error_class == "too_large"
    assert d.size <= 64 * 1024 + 1024 * 1024  # stopped within one bounded step of the cap
    ok = BoundedDecoder("gzip, identity", 10_000)
    ok.feed(gzip.compress(b"abc" * 100))
    assert ok.finish() == b"abc" * 100
    with pytest.raises(FetchError) as info:
        BoundedDecoder("gzip, br", 100)
    assert info.value.error_class == "decoding"
    with pytest.raises(FetchError) as info:
        BoundedDecoder("compress", 100)
    assert info.value.error_class == "decoding"


# --------------------------------------------------------------------------- lying Content-Length


def test_content_length_shorter_than_body(site, settings):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "5")
        h.end_headers()
        h.wfile.write(b"hello world")

    site.routes["/short"] = Route(handler=handle)
    site.routes["/next"] = Route(body=b"fine")

    async def sequence():
        fetcher = Fetcher(settings)
        try:
            first = await fetcher.fetch(FetchRequest(site.url("/short"), MB))
            second = await fetcher.fetch(FetchRequest(site.url("/next"), MB))
            return first, second
        finally:
            await fetcher.aclose()

    started = time.monotonic()
    first, second = asyncio.run(sequence())
    assert time.monotonic() - started < settings.request_deadline
    assert first.ok and first.body == b"hello"  # the declared length wins; the rest is not body
    # the extra bytes left on the connection do not leak into the next response
    assert second.ok and second.body == b"fine"


def test_content_length_longer_than_body_then_close(site, settings):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"0123456789")
        h.close_connection = True

    site.routes["/long"] = Route(handler=handle)
    r, elapsed = timed(site.url("/long"), settings)
    assert r.error_class in ("protocol", "connect")
    assert r.body is None
    assert elapsed < settings.request_deadline


def test_content_length_longer_than_body_then_silence(site, settings, release):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b"0123456789")
        h.wfile.flush()
        release.wait(15)

    site.routes["/long"] = Route(handler=handle)
    quick = settings.model_copy(update={"read_timeout": 1, "request_deadline": 3})
    r, elapsed = timed(site.url("/long"), quick)
    assert r.error_class == "timeout"
    assert r.body is None
    assert elapsed < quick.request_deadline + 1.5


# --------------------------------------------------------------------------- conditional GET


def test_conditional_get_with_etag(site, settings):
    site.routes["/feed"] = Route(body=b"<rss/>", content_type="application/rss+xml")
    first = fetch_one(site.url("/feed"), settings)
    etag = first.header("etag")
    assert first.status == 200 and etag and etag.startswith('"')
    second = fetch_one(site.url("/feed"), settings, etag=etag)
    assert second.status == 304
    assert second.not_modified and not second.ok
    assert second.body is None
    assert second.error_class is None
    assert site.requests[-1][1].get("If-None-Match") == etag
    assert "If-None-Match" not in site.requests[0][1]
    # a stale ETag gets the full body again
    third = fetch_one(site.url("/feed"), settings, etag='"stale"')
    assert third.status == 200 and third.body == b"<rss/>"


def test_conditional_get_with_last_modified(site, settings):
    site.routes["/feed"] = Route(body=b"<rss/>")
    first = fetch_one(site.url("/feed"), settings)
    lm = first.header("last-modified")
    assert lm == site.last_modified
    second = fetch_one(site.url("/feed"), settings, last_modified=lm)
    assert second.status == 304 and second.body is None
    assert site.requests[-1][1].get("If-Modified-Since") == lm


# --------------------------------------------------------------------------- redirects


def _chain(site: LoopbackSite, name: str, hops: int, status: int = 302) -> str:
    for i in range(hops):
        site.routes[f"/{name}{i}"] = Route(
            status=status, headers={"Location": f"/{name}{i + 1}"}, conditional=False
        )
    site.routes[f"/{name}{hops}"] = Route(body=f"end of {name}".encode())
    return site.url(f"/{name}0")


def test_three_redirects_are_followed(site, settings):
    url = _chain(site, "r", 3)
    r = fetch_one(url, settings, etag='"v1"')
    assert r.ok and r.body == b"end of r"
    assert r.url == url
    assert r.final_url == site.url("/r3")
    assert r.redirects == (site.url("/r1"), site.url("/r2"), site.url("/r3"))
    assert [p for p, _ in site.requests] == ["/r0", "/r1", "/r2", "/r3"]
    # validators belong to the first URL only
    assert site.requests[0][1].get("If-None-Match") == '"v1"'
    assert all("If-None-Match" not in h for _, h in site.requests[1:])


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_every_redirect_status_is_followed(site, settings, status):
    url = _chain(site, "s", 1, status=status)
    r = fetch_one(url, settings)
    assert r.ok and r.final_url == site.url("/s1")


def test_max_redirects_exactly_is_fine(site, settings):
    url = _chain(site, "m", settings.max_redirects)
    r = fetch_one(url, settings)
    assert r.ok and len(r.redirects) == settings.max_redirects


def test_six_redirects_are_too_many(site, settings):
    url = _chain(site, "t", 6)
    r = fetch_one(url, settings)
    assert r.error_class == "too_many_redirects"
    assert r.body is None
    assert site.hits["/t6"] == 0
    assert site.hits["/t5"] == 1
    assert r.attempts == 1


def test_redirect_loop(site, settings):
    site.routes["/a"] = Route(status=302, headers={"Location": "/b"}, conditional=False)
    site.routes["/b"] = Route(status=301, headers={"Location": "/a"}, conditional=False)
    site.routes["/self"] = Route(status=302, headers={"Location": "/self"}, conditional=False)
    loop, elapsed = timed(site.url("/a"), settings)
    assert loop.error_class == "too_many_redirects"
    assert "loop" in loop.error_message
    assert site.hits["/a"] == 1 and site.hits["/b"] == 1
    assert elapsed < 2
    itself = fetch_one(site.url("/self"), settings)
    assert itself.error_class == "too_many_redirects"
    assert site.hits["/self"] == 1


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "ftp://127.0.0.1/pub/file", "gopher://127.0.0.1/", "javascript:alert(1)"],
)
def test_redirect_to_a_bad_scheme(site, settings, location):
    site.routes["/go"] = Route(status=302, headers={"Location": location}, conditional=False)
    r = fetch_one(site.url("/go"), settings)
    # httpx itself refuses some Locations as invalid URLs before our scheme check runs
    expected = {"bad_scheme", "bad_url"} if location.startswith("javascript") else {"bad_scheme"}
    assert r.error_class in expected
    assert r.body is None
    assert r.attempts == 1


@pytest.mark.parametrize(
    ("url", "error_class"),
    [
        ("ftp://127.0.0.1/x", "bad_scheme"),
        ("file:///etc/passwd", "bad_scheme"),
        ("http://", "bad_url"),
        ("http:///path-only", "bad_url"),
        ("not a url", "bad_scheme"),
        ("http://[::1/", "bad_url"),
    ],
)
def test_bad_first_url(settings, url, error_class):
    r = fetch_one(url, settings)
    assert r.error_class == error_class
    assert r.status is None and r.body is None
    assert r.final_url == url


def test_redirect_to_another_loopback_host(site, site_factory, settings):
    other = site_factory("127.0.0.2", {"/landing": Route(body=b"on the other host")})
    site.routes["/away"] = Route(status=302, headers={"Location": other.url("/landing")}, conditional=False)
    r = fetch_one(site.url("/away"), settings)
    assert r.ok and r.body == b"on the other host"
    assert r.final_url == other.url("/landing")
    assert r.final_url.startswith("http://127.0.0.2:")
    assert other.hits["/landing"] == 1


# --------------------------------------------------------------------------- address checks


@pytest.fixture
def public_only(settings):
    return settings.model_copy(update={"allow_private_networks": False})


def test_loopback_is_blocked_when_private_networks_are_not_allowed(site, public_only):
    site.routes["/x"] = Route(body=b"secret")
    r = fetch_one(site.url("/x"), public_only)
    assert r.error_class == "blocked_address"
    assert "127.0.0.1" in r.error_message
    assert r.attempts == 1
    assert site.hits["/x"] == 0


@pytest.mark.parametrize(
    "spelling",
    [
        "http://0x7f.0.0.1:{port}/x",
        "http://2130706433:{port}/x",
        "http://0177.0.0.1:{port}/x",
        "http://[::ffff:127.0.0.1]:{port}/x",
        "http://127.1:{port}/x",
        "http://localhost:{port}/x",
        "http://LOCALHOST.:{port}/x",
        "http://[::ffff:7f00:1]:{port}/x",
        "http://0.0.0.0:{port}/x",
    ],
)
def test_other_spellings_of_loopback_are_refused(site, public_only, spelling):
    site.routes["/x"] = Route(body=b"secret")
    port = site._server.server_address[1]
    r = fetch_one(spelling.format(port=port), public_only)
    assert r.error_class in REFUSALS, (r.error_class, r.error_message)
    assert r.body is None
    assert site.hits["/x"] == 0


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("not-an-address", False),
    ],
)
def test_address_allowed(address, allowed):
    assert address_allowed(address, False) is allowed


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::1", True),
        ("fc00::1", True),
        ("8.8.8.8", True),
        ("0.0.0.0", False),  # unspecified and multicast never
        ("224.0.0.1", False),
    ],
)
def test_address_allowed_with_private_networks(address, allowed):
    assert address_allowed(address, True) is allowed


# --------------------------------------------------------------------------- timeouts


def test_stall_after_headers_times_out(site, settings, release):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.flush()
        release.wait(15)

    site.routes["/stall"] = Route(handler=handle)
    r, elapsed = timed(site.url("/stall"), settings)
    assert r.error_class == "timeout"
    assert r.body is None and r.status is None
    assert r.attempts == 1
    assert elapsed < settings.request_deadline + 1.5


def test_stall_before_headers_times_out(site, settings, release):
    site.routes["/silent"] = Route(handler=lambda h: release.wait(15))
    quick = settings.model_copy(update={"read_timeout": 1})
    r, elapsed = timed(site.url("/silent"), quick)
    assert r.error_class == "timeout"
    assert 0.9 <= elapsed < quick.request_deadline + 1.5


def test_trickling_server_hits_the_total_deadline(site, settings, release):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        try:
            for _ in range(1000):
                h.wfile.write(b"x")
                h.wfile.flush()
                if release.wait(0.3):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return

    site.routes["/trickle"] = Route(handler=handle)
    s = settings.model_copy(update={"read_timeout": 2, "request_deadline": 2})
    r, elapsed = timed(site.url("/trickle"), s)
    assert r.error_class == "timeout"
    assert "deadline" in r.error_message
    assert r.body is None
    assert 1.8 <= elapsed < 3.5


# --------------------------------------------------------------------------- retries


def _sequence_handler(responses: list[tuple[int, dict[str, str], bytes]]):
    calls = {"n": 0}
    lock = threading.Lock()

    def handle(h):
        with lock:
            i = min(calls["n"], len(responses) - 1)
            calls["n"] += 1
        status, headers, body = responses[i]
        raw_handler(status, body, headers)(h)

    return handle


def test_503_then_200_is_retried(site, settings):
    site.routes["/flaky"] = Route(handler=_sequence_handler([(503, {}, b"busy"), (200, {}, b"ok now")]))
    r = fetch_one(site.url("/flaky"), settings)
    assert r.ok and r.body == b"ok now"
    assert r.attempts == 2
    assert site.hits["/flaky"] == 2


def test_retries_are_limited(site, settings):
    site.routes["/down"] = Route(handler=_sequence_handler([(503, {}, b"busy")]))
    r = fetch_one(site.url("/down"), settings)
    assert r.error_class == "http_5xx"
    assert r.status == 503
    assert r.attempts == settings.retries + 1
    assert site.hits["/down"] == settings.retries + 1
    assert "503" in r.error_message


def test_429_is_transient(site, settings):
    site.routes["/rate"] = Route(
        handler=_sequence_handler([(429, {"Retry-After": "0"}, b""), (200, {}, b"ok")])
    )
    r = fetch_one(site.url("/rate"), settings)
    assert r.ok and r.attempts == 2


@pytest.mark.parametrize(("status", "error_class"), [(404, "http_4xx"), (410, "gone"), (500, "http_5xx")])
def test_permanent_errors_are_not_retried(site, settings, status, error_class):
    site.routes["/gone"] = Route(status=status, body=b"nope")
    r = fetch_one(site.url("/gone"), settings)
    assert r.error_class == error_class
    assert r.status == status
    assert r.body is None
    assert r.attempts == 1
    assert site.hits["/gone"] == 1


def test_unknown_path_is_404(site, settings):
    r = fetch_one(site.url("/nothing-here"), settings)
    assert (r.status, r.error_class, r.attempts) == (404, "http_4xx", 1)


def test_retry_after_over_the_cap_means_no_long_wait(site, settings):
    site.routes["/later"] = Route(
        handler=_sequence_handler([(503, {"Retry-After": "3600"}, b""), (200, {}, b"too late")])
    )
    r, elapsed = timed(site.url("/later"), settings.model_copy(update={"retry_after_cap": 1}))
    assert r.error_class == "http_5xx" and r.status == 503
    assert r.attempts == 1
    assert elapsed < 1
    assert site.hits["/later"] == 1


def test_retry_after_within_the_cap_is_honoured(site, settings):
    site.routes["/soon"] = Route(
        handler=_sequence_handler([(503, {"Retry-After": "1"}, b""), (200, {}, b"ok")])
    )
    r, elapsed = timed(site.url("/soon"), settings)
    assert r.ok and r.attempts == 2
    assert 0.9 <= elapsed < 3


def test_retry_wait_stays_within_the_deadline(site, settings):
    site.routes["/slowretry"] = Route(
        handler=_sequence_handler([(503, {"Retry-After": "3"}, b""), (200, {}, b"ok")])
    )
    r, elapsed = timed(site.url("/slowretry"), settings.model_copy(update={"request_deadline": 2}))
    assert elapsed < 2 + 0.5
    assert r.error_class == "http_5xx" and r.status == 503


def test_retry_after_with_a_unicode_digit_does_not_crash_fetch_all(site, settings):
    # http.server writes header values as Latin-1: '\xb2' goes out as one byte, httpx reads it back as '²'
    site.routes["/odd"] = Route(handler=raw_handler(503, b"", {"Retry-After": "\xb2"}))
    r = fetch_one(site.url("/odd"), settings)
    assert r.status == 503 and r.error_class == "http_5xx"


def test_connection_refused(settings):
    url = f"http://127.0.0.1:{free_port()}/feed"
    r, elapsed = timed(url, settings)
    assert r.error_class == "connect"
    assert r.status is None and r.body is None
    assert r.attempts == settings.retries + 1  # transient: retried
    assert elapsed < 3


def test_no_retries_when_disabled(settings):
    r = fetch_one(f"http://127.0.0.1:{free_port()}/", settings.model_copy(update={"retries": 0}))
    assert r.error_class == "connect" and r.attempts == 1


def test_retry_after_seconds():
    now = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None


def test_retry_after_seconds_unicode_digit():
    assert retry_after_seconds("²") is None


# --------------------------------------------------------------------------- politeness


def test_host_concurrency_is_respected(site, settings):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def handle(h):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.3)
        with lock:  # leave before the response goes out, so the client cannot be faster than us
            state["now"] -= 1
        raw_handler(200, b"slow", {})(h)

    site.routes["/slow"] = Route(handler=handle)
    s = settings.model_copy(update={"host_concurrency": 2})
    started = time.monotonic()
    results = fetch_all([FetchRequest(site.url("/slow"), MB) for _ in range(6)], s)
    elapsed = time.monotonic() - started
    assert [r.body for r in results] == [b"slow"] * 6
    assert state["max"] == 2
    assert elapsed >= 3 * 0.3 - 0.05
    assert site.hits["/slow"] == 6


def test_host_concurrency_one_serialises(site, settings):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def handle(h):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        raw_handler(200, b"one", {})(h)

    site.routes["/one"] = Route(handler=handle)
    results = fetch_all(
        [FetchRequest(site.url("/one"), MB) for _ in range(4)],
        settings.model_copy(update={"host_concurrency": 1}),
    )
    assert all(r.ok for r in results)
    assert state["max"] == 1


def test_host_min_delay_spaces_request_starts(site, settings):
    starts: list[float] = []
    lock = threading.Lock()

    def handle(h):
        with lock:
            starts.append(time.monotonic())
        raw_handler(200, b"ok", {})(h)

    site.routes["/spaced"] = Route(handler=handle)
    s = settings.model_copy(update={"host_min_delay": 0.2})
    results = fetch_all([FetchRequest(site.url("/spaced"), MB) for _ in range(4)], s)
    assert all(r.ok for r in results)
    assert len(starts) == 4
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g >= 0.2 - 0.03 for g in gaps), gaps


def test_min_delay_is_per_host(site, site_factory, settings):
    other = site_factory("127.0.0.2")
    starts: dict[str, list[float]] = {"a": [], "b": []}

    def recorder(name):
        def handle(h):
            starts[name].append(time.monotonic())
            raw_handler(200, name.encode(), {})(h)

        return handle

    site.routes["/p"] = Route(handler=recorder("a"))
    other.routes["/p"] = Route(handler=recorder("b"))
    s = settings.model_copy(update={"host_min_delay": 0.6})
    started = time.monotonic()
    results = fetch_all([FetchRequest(site.url("/p"), MB), FetchRequest(other.url("/p"), MB)], s)
    assert [r.body for r in results] == [b"a", b"b"]
    assert abs(starts["a"][0] - starts["b"][0]) < 0.4  # two hosts do not wait for each other
    assert time.monotonic() - started < 1.5


def test_politeness_queueing_does_not_eat_the_request_deadline(site, settings):
    site.routes["/queued"] = Route(body=b"ok")
    s = settings.model_copy(update={"host_min_delay": 0.5, "request_deadline": 1.2})
    results = fetch_all([FetchRequest(site.url("/queued"), MB) for _ in range(5)], s)
    assert [r.error_class for r in results] == [None] * 5
    assert site.hits["/queued"] == 5
