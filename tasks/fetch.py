"""Fetch: the one guarded HTTP client every byte of newsflow comes through.

Nothing else fetches: feedparser and trafilatura are handed the bytes this module returns.

What it guarantees, per request:
- only http and https, on the first URL and on every redirect hop (at most ``max_redirects``);
- the host is resolved here, every resolved address is checked (not global -> refused unless
  ``allow_private_networks``; IPv4-mapped / NAT64 / 6to4 forms are unwrapped first), and the
  connection goes to the checked address: there is no second lookup that could answer differently;
- connect and read timeouts, and a total deadline for the whole request, redirects included;
- gzip / deflate / brotli decoded here, streamed, with a cap on the *decoded* size;
- retries with exponential backoff and jitter on transient failures only (connect errors,
  429/502/503/504, Retry-After honoured up to a cap);
- politeness: at most ``host_concurrency`` requests in flight per host and at least
  ``host_min_delay`` seconds between the starts of two requests to one host (longer when the
  host's robots.txt asks for a Crawl-delay, up to ``max_crawl_delay``); with a run's
  :class:`~tasks.robots.PolitenessState`, the spacing holds across every call of that run;
- robots.txt (RFC 9309, :mod:`tasks.robots`) for requests marked ``check_robots`` (article pages):
  fetched once per host per run (or taken from the cache of earlier runs the flows seed the
  state with), a disallowed URL is not requested;
- a 429/503 whose Retry-After exceeds ``retry_after_cap`` postpones the host: no further request
  is sent to it this run, and the flows keep the postponement for the next runs.

Failures never raise out of :func:`fetch_all`: each comes back as a :class:`FetchResult` with an
``error_class`` (see :data:`ERROR_CLASSES`) and a message, ready for ``fetch_log``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from urllib.parse import urljoin, urlsplit

import anyio
import brotli
import httpcore
import httpx

from newsflow.settings import Settings
from tasks.robots import (
    ROBOTS_MAX_BYTES,
    PolitenessState,
    RobotsRules,
    product_token,
    robots_key,
    robots_url,
    rules_from_result,
)

ERROR_CLASSES = (
    "bad_url",  # not parseable, or no host
    "bad_scheme",  # anything but http/https, first URL or redirect
    "blocked_address",  # resolves to a non-global address while private networks are not allowed
    "dns",  # name does not resolve
    "connect",  # refused, reset, unreachable
    "tls",  # certificate or handshake failure (never retried without verification)
    "timeout",  # connect/read timeout or the total deadline
    "too_large",  # decoded body over the cap, or a declared Content-Length over it
    "too_many_redirects",
    "decoding",  # broken gzip/deflate/brotli stream
    "protocol",  # malformed HTTP
    "gone",  # 410 Gone: the resource is gone for good (a feed answering it is retired)
    "http_4xx",  # any other 4xx
    "http_5xx",
    "http_other",
    "robots_disallowed",  # robots.txt disallows the URL for newsflow: not requested (final)
    "robots_unavailable",  # robots.txt answered 5xx/429 or was unreachable: host not crawled this run
    "host_postponed",  # the host asked (Retry-After) for a pause longer than the cap: not requested
)

ACCEPT_FEED = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, "
    "text/xml;q=0.9, application/json;q=0.8, text/html;q=0.5, */*;q=0.1"
)
ACCEPT_PAGE = "text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.5"
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
POSTPONING_STATUSES = frozenset({429, 503})
ACCEPT_ROBOTS = "text/plain, */*;q=0.5"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECTS = frozenset({301, 308})  # a feed that answers these has moved for good
_READ_CHUNK = 64 * 1024


class FetchError(Exception):
    """A failure with a class for ``fetch_log``; ``transient`` ones may be retried."""

    def __init__(self, error_class: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.error_class = error_class
        self.transient = transient


@dataclass(frozen=True)
class FetchRequest:
    url: str
    max_bytes: int
    etag: str | None = None
    last_modified: str | None = None
    accept: str = ACCEPT_PAGE
    check_robots: bool = False  # consult the host's robots.txt first (article pages, not feeds)
    truncate: bool = False  # a body over max_bytes is cut there instead of refused (robots.txt)


@dataclass(frozen=True)
class FetchResult:
    url: str  # as requested
    final_url: str  # after redirects
    status: int | None
    headers: tuple[tuple[str, str], ...]  # response headers of the final hop, as received
    body: bytes | None  # decoded (Content-Encoding removed); None on failure and on 304
    fetched_at: datetime
    elapsed_ms: int
    redirects: tuple[str, ...] = ()
    redirect_statuses: tuple[int, ...] = ()  # the status of each redirect hop, in order
    error_class: str | None = None
    error_message: str | None = None
    remote_address: str | None = None
    http_version: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error_class is None and self.status is not None and 200 <= self.status < 300

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def permanently_moved_to(self) -> str | None:
        """Where the resource now lives, when every redirect hop was permanent (301/308)."""
        if self.redirects and all(s in PERMANENT_REDIRECTS for s in self.redirect_statuses):
            return self.final_url
        return None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


# --------------------------------------------------------------------------- addresses


def _unwrap(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address hidden inside IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64 or ip in _NAT64_LOCAL:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def address_allowed(address: str, allow_private: bool) -> bool:
    """Whether newsflow may connect to this (resolved) address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    inner = _unwrap(ip)  # for embedded IPv4 forms, the embedded address decides
    if inner.is_multicast or inner.is_unspecified:
        return False
    return inner.is_global or allow_private


async def resolve_checked(host: str, port: int, allow_private: bool) -> str:
    """Resolve ``host`` and return one address to connect to, after checking *all* of them.

    A name that resolves to any forbidden address is refused whole: a mix of public and private
    answers is how DNS-rebinding attacks look.
    """
    try:
        # abandon_on_cancel: the request's deadline must end a lookup that hangs (a resolver that
        # never answers); otherwise the cancellation waits for the thread, and the deadline with it.
        infos = await anyio.to_thread.run_sync(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), abandon_on_cancel=True
        )
    except socket.gaierror as exc:
        raise FetchError("dns", f"cannot resolve {host!r}: {exc.strerror or exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchError("dns", f"{host!r} resolved to no address")
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if refused:
        raise FetchError(
            "blocked_address",
            f"{host!r} resolves to non-global address {refused[0]} "
            "(set NEWSFLOW_ALLOW_PRIVATE_NETWORKS=1 to allow private networks)",
        )
    # Prefer IPv4: loopback test servers and most news sites listen there.
    addresses.sort(key=lambda a: ":" in a)
    return addresses[0]


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that resolves, checks, and connects to the checked address itself.

    TLS still verifies the certificate against the URL's host name (httpcore passes the
    server_hostname separately), so pinning the address changes nothing for TLS.
    """

    def __init__(self, allow_private: bool, state: PolitenessState | None = None, min_delay: float = 0.0):
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private
        self._state = state
        self._min_delay = min_delay

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        address = await resolve_checked(host, port, self._allow_private)
        stream = await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
        if self._state is None:
            return stream
        name = host.decode() if isinstance(host, bytes) else str(host)
        key = f"{name.lower()}:{port}"
        return PacedStream(
            stream, partial(self._state.try_send, key, self._min_delay), partial(self._state.sent, key)
        )

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise FetchError("bad_scheme", "unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PacedStream(httpcore.AsyncNetworkStream):
    """A connection whose every request waits for its host's turn right before it is written
    (``pace()`` returns the wait, 0 when it may go now; ``sent()`` once written): the budget holds on the wire,
    not only where newsflow scheduled the request. A write after a read starts a new request
    (HTTP/1.1 keep-alive: request, response, request, ...)."""

    def __init__(
        self, inner: httpcore.AsyncNetworkStream, pace: Callable[[], float], sent: Callable[[], None]
    ):
        self._inner = inner
        self._pace = pace
        self._sent = sent
        self._request_started = False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._request_started:
            await self._inner.write(buffer, timeout)
            return
        while (wait := self._pace()) > 0:  # another request of the host may go first
            await anyio.sleep(wait)
        self._request_started = True
        try:
            await self._inner.write(buffer, timeout)
        finally:
            self._sent()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._request_started = False
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> PacedStream:
        return PacedStream(
            await self._inner.start_tls(ssl_context, server_hostname, timeout), self._pace, self._sent
        )

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, settings: Settings, state: PolitenessState | None = None):
        limits = httpx.Limits(max_connections=settings.global_concurrency, max_keepalive_connections=64)
        super().__init__(limits=limits, verify=True, trust_env=False, retries=0)
        # httpx gives no hook for the network backend: rebuild its pool with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=True, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(
                settings.allow_private_networks, state, settings.host_min_delay
            ),
        )


# --------------------------------------------------------------------------- decoding


class BoundedDecoder:
    """Streams gzip / deflate / brotli / identity, refusing output past ``limit`` bytes.

    Decoding is bounded per step (max_length / output_buffer_limit), so a compression bomb is
    stopped after ``limit`` bytes whatever its ratio.
    """

    def __init__(self, content_encoding: str | None, limit: int, truncate: bool = False):
        self.limit = limit
        self.size = 0
        self.truncate = truncate
        self.full = False  # truncating and the limit is reached: the rest is ignored
        self._parts: list[bytes] = []
        encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        if len(encodings) > 1:
            raise FetchError("decoding", f"stacked content encodings not supported: {content_encoding}")
        self.encoding = encodings[0] if encodings else None
        if self.encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._z = None  # decided on the first bytes: zlib-wrapped or raw
        elif self.encoding == "br":
            self._br = brotli.Decompressor()
        elif self.encoding is not None:
            raise FetchError("decoding", f"unsupported content encoding {self.encoding!r}")

    def _emit(self, data: bytes) -> None:
        if not data or self.full:
            return
        if self.truncate and self.size + len(data) >= self.limit:
            data = data[: self.limit - self.size]
            self.full = True
        self.size += len(data)
        if self.size > self.limit:
            raise FetchError("too_large", f"decoded body exceeds {self.limit} bytes")
        self._parts.append(data)

    def _zlib_feed(self, data: bytes) -> None:
        # At most one read chunk of output per step, as for brotli: one step of a bomb could
        # otherwise produce the whole remaining cap at once, on top of what is already kept.
        z = self._z
        self._emit(z.decompress(data, min(self.limit - self.size + 1, _READ_CHUNK)))
        while z.unconsumed_tail and not self.full:
            self._emit(z.decompress(z.unconsumed_tail, min(self.limit - self.size + 1, _READ_CHUNK)))

    def feed(self, data: bytes) -> None:
        if self.full:
            return
        try:
            if self.encoding is None:
                self._emit(data)
            elif self.encoding == "br":
                out = self._br.process(data, output_buffer_limit=_READ_CHUNK)
                self._emit(out)
                while not self._br.can_accept_more_data() and not self.full:
                    self._emit(self._br.process(b"", output_buffer_limit=_READ_CHUNK))
            else:
                if self._z is None:  # deflate: zlib header or raw deflate
                    raw = not (
                        len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
                    )
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
                self._zlib_feed(data)
        except (zlib.error, brotli.error) as exc:
            raise FetchError("decoding", f"broken {self.encoding} stream: {exc}") from exc

    def finish(self) -> bytes:
        if self.encoding in ("gzip", "x-gzip", "deflate") and self._z is not None and not self.full:
            try:
                self._emit(self._z.flush())
            except zlib.error as exc:
                raise FetchError("decoding", f"broken {self.encoding} stream: {exc}") from exc
        return b"".join(self._parts)


# --------------------------------------------------------------------------- politeness


class HostLimiter:
    """Per-host concurrency within one :func:`fetch_all` call, and spacing of request starts
    across the whole run.

    The spacing (``min_delay``, or the host's Crawl-delay when longer) is booked in the run's
    :class:`PolitenessState`, so it holds between any two requests of a run to one host, whichever
    call (feeds, sitemaps, page batches) they come from. The concurrency cap is this call's own:
    the calls of one run do not overlap today (each stage waits for the previous fetch to end).
    """

    def __init__(self, concurrency: int, min_delay: float, state: PolitenessState):
        self.concurrency = concurrency
        self.min_delay = min_delay
        self.state = state
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    async def __call__(self, host: str) -> asyncio.Semaphore:
        """Wait for a free slot and for the host's next start time; the caller releases the slot."""
        semaphore = self._semaphores.get(host)
        if semaphore is None:
            semaphore = self._semaphores[host] = asyncio.Semaphore(self.concurrency)
        await semaphore.acquire()
        try:
            wait = self.state.reserve_start(host, self.min_delay)
            if wait > 0:
                await asyncio.sleep(wait)
        except BaseException:
            semaphore.release()
            raise
        return semaphore


# --------------------------------------------------------------------------- one request


def _check_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx raises InvalidURL and a few others on garbage
        raise FetchError("bad_url", f"invalid URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise FetchError("bad_scheme", f"scheme {parsed.scheme or '(none)'!r} is not allowed: {url[:200]}")
    if not parsed.host:
        raise FetchError("bad_url", f"URL has no host: {url[:200]}")
    return parsed


def _host_key(url: httpx.URL) -> str:
    return f"{url.host.lower()}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _without_traceback(error: FetchError) -> FetchError:
    """The error, kept without its traceback. Kept in a local of the frame that caught it, a
    traceback makes a reference cycle (it holds that frame, and every frame it went through):
    only the garbage collector frees those, and the frames of the decoder hold up to a body cap
    of bytes each. Failed requests then piled up: 16 compression bombs in a row, +98 MB at a
    10 MiB cap."""
    error.__traceback__ = None
    return error


def _classify_transport_error(exc: Exception) -> FetchError:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        if isinstance(cur, FetchError):
            return cur
        cur = cur.__cause__ or cur.__context__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        # First: a handshake the server never answers times out with ssl.SSLWantReadError (the
        # non-blocking "not yet") somewhere down its chain; it is a timeout, not a TLS failure.
        return FetchError("timeout", f"timed out: {exc.__class__.__name__} {exc}".strip())
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in chain) or "CERTIFICATE_VERIFY" in str(
        exc
    ):
        return FetchError("tls", f"TLS failure: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Invalid URL in location header"):
        # httpx parses a redirect's Location itself; one it cannot parse is the server's answer,
        # not a glitch: asking again would get the same.
        return FetchError("bad_url", f"redirect to an invalid URL: {exc}")
    if isinstance(exc, httpx.ConnectError):
        return FetchError("connect", f"connection failed: {exc}", transient=True)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return FetchError(
            "protocol", f"HTTP protocol error: {exc}", transient=isinstance(exc, httpx.RemoteProtocolError)
        )
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return FetchError("connect", f"connection broken: {exc}", transient=True)
    if isinstance(exc, httpx.DecodingError):
        return FetchError("decoding", str(exc))
    if isinstance(exc, httpx.InvalidURL):
        return FetchError("bad_url", str(exc))
    return FetchError("protocol", f"{exc.__class__.__name__}: {exc}")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: a delta (``120``) or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _failed(request: FetchRequest, error: FetchError, fetched_at: datetime, elapsed_ms: int, attempts: int):
    """The result of a request that got no HTTP response (refused, or failed on the way)."""
    return FetchResult(
        url=request.url,
        final_url=request.url,
        status=None,
        headers=(),
        body=None,
        fetched_at=fetched_at,
        elapsed_ms=elapsed_ms,
        error_class=error.error_class,
        error_message=str(error.args[0])[:1000],
        attempts=attempts,
    )


class Fetcher:
    """One call's client: connection pool, host limiter and global concurrency.

    ``state`` holds what the run knows about hosts (robots rules, postponed hosts, when each host
    may next be asked); pass the same one to every fetcher of a run so that robots.txt is fetched
    once per host per run and the spacing of requests to a host holds across calls.
    """

    def __init__(self, settings: Settings, state: PolitenessState | None = None):
        self.settings = settings
        self.state = state if state is not None else PolitenessState()
        self.agent = product_token(settings.user_agent)
        self._robots_loading: dict[str, asyncio.Future[RobotsRules]] = {}
        self.limiter = HostLimiter(settings.host_concurrency, settings.host_min_delay, self.state)
        self.global_slots = asyncio.Semaphore(settings.global_concurrency)
        self.client = httpx.AsyncClient(
            transport=GuardedTransport(settings, self.state),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.request_deadline,
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept-Encoding": "gzip, deflate, br",
            },
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _one_hop(self, url: httpx.URL, request: FetchRequest, headers: dict[str, str], slot=None):
        """One request/response. ``slot`` is the host slot already acquired for it, if any."""
        semaphore = slot or await self.limiter(_host_key(url))
        try:
            self._check_postponed(url)
            async with self.client.stream("GET", url, headers=headers) as response:
                stream = response.extensions.get("network_stream")
                server = stream.get_extra_info("server_addr") if stream is not None else None
                address = server[0] if isinstance(server, tuple) and server else None
                declared = response.headers.get("content-length")
                if response.status_code in REDIRECT_STATUSES or response.status_code == 304:
                    return response, b"", address
                if (
                    declared
                    and not request.truncate
                    and declared.isascii()
                    and declared.isdigit()
                    and int(declared) > request.max_bytes
                ):
                    raise FetchError(
                        "too_large", f"Content-Length {declared} exceeds {request.max_bytes} bytes"
                    )
                decoder = BoundedDecoder(
                    response.headers.get("content-encoding"), request.max_bytes, request.truncate
                )
                async for chunk in response.aiter_raw(_READ_CHUNK):
                    decoder.feed(chunk)
                    if decoder.full:
                        break
                return response, decoder.finish(), address
        finally:
            semaphore.release()

    async def _attempt(self, request: FetchRequest, url: httpx.URL, slot):
        """Follow redirects from ``url`` (whose host slot is ``slot``), checking every hop."""
        redirects: list[str] = []
        statuses: list[int] = []
        headers = {"Accept": request.accept}
        if request.etag:
            headers["If-None-Match"] = request.etag
        if request.last_modified:
            headers["If-Modified-Since"] = request.last_modified
        while True:
            response, body, address = await self._one_hop(url, request, headers, slot)
            slot = None
            if response.status_code not in REDIRECT_STATUSES:
                return response, body, (redirects, statuses), str(url), address
            location = response.headers.get("location")
            if not location:
                return response, body, (redirects, statuses), str(url), address
            if len(redirects) >= self.settings.max_redirects:
                raise FetchError(
                    "too_many_redirects",
                    f"more than {self.settings.max_redirects} redirects (last: {location[:200]})",
                )
            next_url = urljoin(str(url), location.strip())
            if next_url in redirects or next_url == request.url:
                raise FetchError("too_many_redirects", f"redirect loop at {next_url[:200]}")
            redirects.append(next_url)
            statuses.append(response.status_code)
            url = _check_url(next_url)
            # Validators belong to the first URL; do not send them to another resource.
            headers = {"Accept": headers["Accept"]}

    # ----------------------------------------------------------------- host state

    def _check_postponed(self, url: httpx.URL) -> None:
        until = self.state.postponed_until(_host_key(url))
        if until is not None:
            raise FetchError(
                "host_postponed",
                f"{url.host} asked for a pause until {until:%Y-%m-%d %H:%M:%S}Z "
                f"(Retry-After over the {self.settings.retry_after_cap:g}s cap): not requested this run",
            )

    def _maybe_postpone(self, response: httpx.Response, final_url: str) -> None:
        """A 429/503 asking for longer than the cap: no more requests to that host this run."""
        if response.status_code not in POSTPONING_STATUSES:
            return
        wait = retry_after_seconds(response.headers.get("retry-after"))
        if wait is None or wait <= self.settings.retry_after_cap:
            return
        try:
            host = _host_key(_check_url(final_url))
        except FetchError:  # pragma: no cover - the URL was fetched, so it parses
            return
        self.state.postpone(host, datetime.now(UTC) + timedelta(seconds=min(wait, 366 * 86400)))

    async def robots_rules(self, url: str) -> RobotsRules | None:
        """The rules of the robots.txt governing ``url``, fetched on first use in the run.

        None when ``url`` has no robots.txt to ask (not http(s), no host): the fetch fails anyway.
        """
        key, where = robots_key(url), robots_url(url)
        if key is None or where is None:
            return None
        rules = self.state.get_rules(key)
        if rules is not None:
            return rules
        loading = self._robots_loading.get(key)
        if loading is None:
            loading = self._robots_loading[key] = asyncio.ensure_future(self._load_robots(key, where))
        return await asyncio.shield(loading)

    async def _load_robots(self, key: str, where: str) -> RobotsRules:
        result = await self._fetch(
            FetchRequest(url=where, max_bytes=ROBOTS_MAX_BYTES, accept=ACCEPT_ROBOTS, truncate=True)
        )
        rules = rules_from_result(result)
        self.state.set_rules(key, rules)
        return self.state.get_rules(key) or rules

    def _apply_crawl_delay(self, url: httpx.URL, rules: RobotsRules) -> None:
        host = _host_key(url)
        if self.state.crawl_delay_known(host):
            return
        delay = rules.crawl_delay(self.agent)
        capped = None if delay is None else min(delay, self.settings.max_crawl_delay)
        self.state.set_crawl_delay(host, capped, self.settings.host_min_delay)

    def _refused(self, request: FetchRequest, error: FetchError) -> FetchResult:
        """A request newsflow decided not to send."""
        return _failed(request, error, datetime.now(UTC), elapsed_ms=0, attempts=0)

    # ----------------------------------------------------------------- fetching

    async def fetch(self, request: FetchRequest) -> FetchResult:
        """Fetch one URL; never raises. The deadline counts the time spent on the network and
        in retry waits, not the time queued behind this run's politeness limits.

        With ``request.check_robots`` (and ``respect_robots`` on), the host's robots.txt decides
        first; a postponed host is not asked at all."""
        try:
            url = _check_url(request.url)
        except FetchError:
            return await self._fetch(request)  # recorded with its class by the usual path
        try:
            self._check_postponed(url)
            if not request.check_robots and self.settings.respect_robots:
                # Not checked against robots.txt (feeds, sitemaps: the user chose them), but a
                # Crawl-delay the run already knows (a page of that host, the cache) spaces them too.
                key = robots_key(request.url)
                known = self.state.get_rules(key) if key is not None else None
                if known is not None:
                    self._apply_crawl_delay(url, known)
            if request.check_robots and self.settings.respect_robots:
                rules = await self.robots_rules(request.url)
                if rules is not None:
                    self._check_postponed(url)  # robots.txt itself may have postponed the host
                    if rules.unavailable is not None:
                        raise FetchError("robots_unavailable", rules.unavailable)
                    if not rules.allowed(request.url, self.agent):
                        raise FetchError(
                            "robots_disallowed", f"robots.txt disallows this URL for {self.agent!r}"
                        )
                    self._apply_crawl_delay(url, rules)
        except FetchError as exc:
            return self._refused(request, exc)
        return await self._fetch(request)

    async def _fetch(self, request: FetchRequest) -> FetchResult:
        deadline = self.settings.request_deadline
        fetched_at: datetime | None = None
        spent = 0.0
        attempts = 0
        while True:
            attempts += 1
            response = None
            try:
                if spent >= deadline:
                    raise FetchError("timeout", f"request deadline of {deadline}s exceeded")
                url = _check_url(request.url)
                slot = await self.limiter(_host_key(url))  # politeness wait: not counted
                # The global slot only once the host's turn has come: a request waiting for
                # its host's spacing must not hold a slot that other hosts' requests could
                # use (200 feeds of one host listed first would otherwise take every slot and
                # make the others wait 200 spacings).
                try:
                    await self.global_slots.acquire()
                except BaseException:
                    slot.release()
                    raise
                fetched_at = fetched_at or datetime.now(UTC)
                began = time.monotonic()
                try:
                    with anyio.fail_after(deadline - spent):
                        response, body, redirects, final_url, address = await self._attempt(
                            request, url, slot
                        )
                finally:
                    self.global_slots.release()
                    spent += time.monotonic() - began
            except FetchError as exc:
                error = _without_traceback(exc)
            except TimeoutError:
                error = FetchError("timeout", f"request deadline of {deadline}s exceeded")
            except Exception as exc:  # everything the transport can throw, classified
                error = _without_traceback(_classify_transport_error(exc))
            else:
                status = response.status_code
                self._maybe_postpone(response, final_url)
                if 200 <= status < 300 or status == 304:
                    error = None
                else:
                    error = FetchError(
                        "gone"
                        if status == 410
                        else "http_4xx"
                        if 400 <= status < 500
                        else "http_5xx"
                        if status >= 500
                        else "http_other",
                        f"HTTP {status} {response.reason_phrase}".strip(),
                        transient=status in TRANSIENT_STATUSES,
                    )
            if (
                error is not None
                and error.transient
                and attempts <= self.settings.retries
                and self.state.postponed_until(_host_key(url)) is None
            ):
                retry_after = response.headers.get("retry-after") if response is not None else None
                wait = self._retry_wait(attempts, retry_after)
                if wait is not None and wait < deadline - spent:
                    await asyncio.sleep(wait)
                    spent += wait
                    continue
            fetched_at = fetched_at or datetime.now(UTC)
            if response is None:
                return _failed(request, error, fetched_at, int(spent * 1000), attempts)
            ok = error is None
            return FetchResult(
                url=request.url,
                final_url=final_url,
                status=response.status_code,
                headers=tuple(response.headers.multi_items()),
                body=body if ok and response.status_code != 304 else None,
                fetched_at=fetched_at,
                elapsed_ms=int(spent * 1000),
                redirects=tuple(redirects[0]),
                redirect_statuses=tuple(redirects[1]),
                error_class=None if ok else error.error_class,
                error_message=None if ok else error.args[0],
                remote_address=address,
                http_version=response.http_version,
                attempts=attempts,
            )

    def _retry_wait(self, attempts: int, retry_after: str | None) -> float | None:
        """Seconds before the next attempt, or None when waiting is not worth it."""
        backoff = self.settings.retry_backoff * (2 ** (attempts - 1))
        backoff *= 0.5 + random.random()  # jitter
        server_says = retry_after_seconds(retry_after)
        if server_says is not None:
            if server_says > self.settings.retry_after_cap:
                return None
            backoff = max(backoff, server_says)
        return backoff


async def fetch_all_async(
    requests: Sequence[FetchRequest], settings: Settings, state: PolitenessState | None = None
) -> list[FetchResult]:
    fetcher = Fetcher(settings, state)
    try:
        return list(await asyncio.gather(*(fetcher.fetch(r) for r in requests)))
    finally:
        await fetcher.aclose()


def fetch_all(
    requests: Iterable[FetchRequest], settings: Settings, state: PolitenessState | None = None
) -> list[FetchResult]:
    """Fetch every request politely and concurrently; results in the order of the requests.

    ``state`` carries robots rules and postponed hosts from one call to the next of the same run
    (see :func:`tasks.robots.run_state`); without it, each call starts afresh."""
    requests = list(requests)
    if not requests:
        return []
    return asyncio.run(fetch_all_async(requests, settings, state))


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
