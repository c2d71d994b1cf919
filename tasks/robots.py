"""robots.txt (RFC 9309) and the per-run host state the fetcher consults before sending a request.

- :func:`robots_url`: the one robots.txt that governs a URL (same scheme, host and port).
- :func:`rules_from_result`: a fetched robots.txt turned into :class:`RobotsRules`, per RFC 9309:
  2xx -> parsed (protego: longest match wins, ``*`` and ``$`` wildcards, Allow wins a tie);
  4xx -> allow all; 5xx, 429 or unreachable -> complete disallow (``unavailable``);
  a body over the cap is parsed up to the cap (the fetcher truncates, it does not refuse).
- :class:`PolitenessState`: what one run knows about hosts -- parsed robots rules, hosts
  postponed by a ``Retry-After`` longer than the cap, and when each host may next be asked
  (``host_min_delay``, Crawl-delay). Shared by every fetch of a run (:func:`run_state`): feeds,
  sitemaps and page batches alike, so robots.txt is fetched once per host per run and the spacing
  between two requests to a host holds whichever calls they come from. Rules a host answered
  (2xx, 4xx) are also cached across runs for ``robots_cache_hours`` (warehouse/hosts.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from protego import Protego

if TYPE_CHECKING:
    from tasks.fetch import FetchResult

ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB; the rest is ignored
_KEPT_RUNS = 16  # run states kept in memory (a process may serve several flow runs)


def robots_url(url: str) -> str | None:
    """``scheme://host[:port]/robots.txt`` for ``url``; None if the URL has no usable host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    answer = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/robots.txt"
    try:  # without its user info, "[::1]@]1:[a" is no host: the answer must name the same one
        again = urlsplit(answer)
        if (again.hostname, again.port) != (parts.hostname, parts.port):
            return None
    except ValueError:
        return None
    return answer


def robots_key(url: str) -> str | None:
    """Cache key of the robots.txt governing ``url``: scheme, host and port (RFC 9309 section 2.3)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def product_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against: ``newsflow/0.1 (+...)`` -> ``newsflow``."""
    token = user_agent.strip().split(" ", 1)[0].split("/", 1)[0]
    return token.lower() or "*"


@dataclass(frozen=True)
class RobotsRules:
    """The rules of one robots.txt, and where they came from."""

    # None: allow all (4xx), or disallow all when ``unavailable``
    parser: Protego | None = field(default=None, repr=False)
    unavailable: str | None = None  # why the file could not be had (5xx, unreachable): disallow all
    # The host's own answer, kept for the cache across runs: set for 2xx (body, capped) and
    # 4xx (no body: allow all); None for unavailable rules and for hosts not asked at all.
    status: int | None = None
    fetched_at: datetime | None = None
    body: bytes | None = field(default=None, repr=False)

    @property
    def cacheable(self) -> bool:
        """Whether later runs may reuse these rules (RFC 9309 section 2.4): only what the host
        answered. Unavailable rules are not: the next run asks again."""
        return self.unavailable is None and self.status is not None and self.fetched_at is not None

    def allowed(self, url: str, agent: str) -> bool:
        if self.unavailable is not None:
            return False
        if self.parser is None:
            return True
        return self.parser.can_fetch(url, agent)

    def crawl_delay(self, agent: str) -> float | None:
        if self.parser is None:
            return None
        return self.parser.crawl_delay(agent)


ALLOW_ALL = RobotsRules()


def parse_robots(body: bytes, status: int | None = None, fetched_at: datetime | None = None) -> RobotsRules:
    body = body[:ROBOTS_MAX_BYTES]
    text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
    return RobotsRules(parser=Protego.parse(text), status=status, fetched_at=fetched_at, body=body)


def allow_all(status: int, fetched_at: datetime) -> RobotsRules:
    """A robots.txt the host answered with a 4xx: no rules (RFC 9309 section 2.3.1.3)."""
    return RobotsRules(status=status, fetched_at=fetched_at)


# Failures the page fetch itself would meet the same way, before sending anything (or with no
# server to talk to): the page is let through so that it is recorded with its own, truer class.
_PAGE_FAILS_ALIKE = frozenset({"bad_url", "bad_scheme", "blocked_address", "dns", "tls"})


def rules_from_result(result: FetchResult) -> RobotsRules:
    """RFC 9309 section 2.3.1 applied to a fetched robots.txt."""
    if result.status is None and result.error_class in _PAGE_FAILS_ALIKE:
        return ALLOW_ALL
    if result.status is not None and 200 <= result.status < 300 and result.error_class is None:
        return parse_robots(result.body or b"", result.status, result.fetched_at)
    if result.status == 429:  # a rate limit is not "no robots.txt": treat like a server error
        return RobotsRules(unavailable=f"robots.txt answered HTTP 429 ({result.url})")
    if result.status is not None and 400 <= result.status < 500:
        return allow_all(result.status, result.fetched_at)
    reason = f"HTTP {result.status}" if result.status is not None else result.error_class or "error"
    detail = f": {result.error_message}" if result.error_message and result.status is None else ""
    return RobotsRules(unavailable=f"robots.txt unavailable ({reason}{detail}) at {result.url}"[:1000])


@dataclass
class PolitenessState:
    """Per-run knowledge about hosts, shared by all the fetchers of one run (thread-safe).

    The fetches of a run happen in different worker threads, each in its own asyncio loop, so the
    spacing of request starts is kept here under a threading lock, on the ``clock`` (monotonic
    seconds): each request reserves its start time, at least the host's spacing after the
    previous reservation for that host.
    """

    rules: dict[str, RobotsRules] = field(default_factory=dict)  # robots_key -> rules
    postponed: dict[str, datetime] = field(default_factory=dict)  # host key -> not before (UTC)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    seeded: bool = False  # the stored state (warehouse/hosts.py) has been put in
    _next_start: dict[str, float] = field(default_factory=dict, repr=False)  # host key -> clock time
    _last_send: dict[str, float] = field(default_factory=dict, repr=False)  # host key -> clock time
    _crawl_delay: dict[str, float | None] = field(default_factory=dict, repr=False)  # host key -> seconds
    _fetched: set[str] = field(default_factory=set, repr=False)  # robots keys fetched by this run
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------- robots rules

    def get_rules(self, key: str) -> RobotsRules | None:
        with self._lock:
            return self.rules.get(key)

    def set_rules(self, key: str, rules: RobotsRules) -> None:
        """Rules this run fetched (saved for later runs when cacheable); the first set wins."""
        with self._lock:
            if key not in self.rules:
                self.rules[key] = rules
                self._fetched.add(key)

    def seed_rules(self, key: str, rules: RobotsRules) -> None:
        """Rules cached by an earlier run; what this run fetched itself wins."""
        with self._lock:
            self.rules.setdefault(key, rules)

    def rules_to_save(self) -> dict[str, RobotsRules]:
        """The cacheable rules this run fetched: robots key -> rules."""
        with self._lock:
            return {k: self.rules[k] for k in sorted(self._fetched) if self.rules[k].cacheable}

    # ------------------------------------------------------------- postponed hosts

    def postpone(self, host: str, until: datetime) -> None:
        with self._lock:
            current = self.postponed.get(host)
            if current is None or until > current:
                self.postponed[host] = until

    def postponed_until(self, host: str) -> datetime | None:
        with self._lock:
            return self.postponed.get(host)

    # ------------------------------------------------------------- spacing of request starts

    def reserve_start(self, host: str, min_delay: float) -> float:
        """Book the next start of a request to ``host``; returns the seconds to wait before it.

        Starts are spaced by ``min_delay``, or by the host's Crawl-delay when that is longer.
        """
        with self._lock:
            now = self.clock()
            start = max(now, self._next_start.get(host, now))
            crawl_delay = self._crawl_delay.get(host)
            spacing = min_delay if crawl_delay is None else max(min_delay, crawl_delay)
            self._next_start[host] = start + spacing
            return start - now

    def try_send(self, host: str, min_delay: float) -> float:
        """Whether a request may be written to ``host`` now: 0 (and the send is recorded) when the
        last one went out at least the host's spacing ago, else the seconds left to wait.

        Checked right before a request is written, against the moment the last one really was:
        between its booked start and the write, a request can lose time (connecting, a busy event
        loop running thousands of fetches), and requests booked a spacing apart could otherwise
        reach the host closer together than the budget allows. Waiting only ever adds time."""
        with self._lock:
            now = self.clock()
            crawl_delay = self._crawl_delay.get(host)
            spacing = min_delay if crawl_delay is None else max(min_delay, crawl_delay)
            earliest = self._last_send.get(host, now - spacing) + spacing
            if now >= earliest:
                self._last_send[host] = now
                return 0.0
            return earliest - now

    def sent(self, host: str) -> None:
        """The request :meth:`try_send` let go has been written: the spacing to the next one counts
        from now (the write itself can come late on a busy event loop)."""
        with self._lock:
            self._last_send[host] = max(self._last_send.get(host, 0.0), self.clock())

    def crawl_delay_known(self, host: str) -> bool:
        with self._lock:
            return host in self._crawl_delay

    def set_crawl_delay(self, host: str, delay: float | None, min_delay: float) -> None:
        """The host's Crawl-delay (already capped; None: it asks for none). The first one wins.

        The last start booked was spaced by ``min_delay`` only: it is pushed out to the delay."""
        with self._lock:
            if host in self._crawl_delay:
                return
            self._crawl_delay[host] = delay
            if delay is not None and delay > min_delay and host in self._next_start:
                self._next_start[host] += delay - min_delay


_runs: OrderedDict[str, PolitenessState] = OrderedDict()
_runs_lock = threading.Lock()


def run_state(run_id: str | None) -> PolitenessState:
    """The state of run ``run_id`` (created on first use); a fresh one when there is no run id."""
    if run_id is None:
        return PolitenessState()
    with _runs_lock:
        state = _runs.get(run_id)
        if state is None:
            state = _runs[run_id] = PolitenessState()
            while len(_runs) > _KEPT_RUNS:
                _runs.popitem(last=False)
        else:
            _runs.move_to_end(run_id)
        return state
