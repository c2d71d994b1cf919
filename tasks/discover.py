"""Feed discovery: from a URL that is a feed or a site's page to the feed URLs it offers.

Order: the URL itself when it parses as a feed; else the page's ``<link rel="alternate">`` feed
links; else a few paths where feeds usually live on the same origin. Every candidate is fetched
with the guarded fetcher and kept only when it parses as a feed. Plain functions, no Prefect.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

import lxml.etree
import lxml.html

from newsflow.settings import Settings
from tasks.fetch import ACCEPT_FEED, FetchRequest, FetchResult, fetch_all
from tasks.parse import FeedParseError, parse_feed

FEED_LINK_TYPES = frozenset(
    {"application/rss+xml", "application/atom+xml", "application/feed+json", "application/json"}
)
COMMON_PATHS = (
    "/feed",
    "/feed/",
    "/rss",
    "/rss.xml",
    "/atom.xml",
    "/feed.xml",
    "/index.xml",
    "/feeds/posts/default",
    "/?feed=rss2",
)
# A page may declare any number of links; a hostile one must not make us fetch thousands.
MAX_LINK_CANDIDATES = 16


@dataclass(frozen=True)
class FoundFeed:
    url: str
    title: str | None
    format: str  # rss20, atom10, jsonfeed11, ...
    via: str  # "direct" (the URL given), "link" (<link rel=alternate>), "guess" (a common path)


@dataclass(frozen=True)
class Discovery:
    url: str
    feeds: tuple[FoundFeed, ...] = ()
    error: str | None = None  # why the URL itself could not be fetched
    tried: tuple[str, ...] = ()  # candidates fetched that turned out not to be feeds


# --------------------------------------------------------------------------- pure parts


def _http_url(url: str) -> str | None:
    """``url`` without its fragment when it is http(s) with a host, else None."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return None
    return urldefrag(url).url if ok else None


def feed_links(html: bytes, base_url: str) -> list[str]:
    """Absolute URLs of the feed links an HTML page declares, in page order, each once."""
    try:
        doc = lxml.html.document_fromstring(html)
    except (lxml.etree.LxmlError, ValueError):  # empty or not markup at all
        return []
    base = base_url
    for element in doc.iter("base"):
        href = (element.get("href") or "").strip()
        if href:
            base = urljoin(base_url, href)
        break  # only the first <base> counts
    found: dict[str, None] = {}
    for link in doc.iter("link"):
        rels = (link.get("rel") or "").lower().split()
        mime = (link.get("type") or "").split(";", 1)[0].strip().lower()
        href = (link.get("href") or "").strip()
        if "alternate" not in rels or mime not in FEED_LINK_TYPES or not href:
            continue
        try:
            url = _http_url(urljoin(base, href))
        except ValueError:
            url = None
        if url:
            found.setdefault(url)
    return list(found)[:MAX_LINK_CANDIDATES]


def common_feed_urls(page_url: str) -> list[str]:
    """The usual feed locations on the origin (scheme, host, port) of ``page_url``."""
    parts = urlsplit(page_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return [origin + path for path in COMMON_PATHS]


def _headers(result: FetchResult) -> dict[str, str]:
    return {key.lower(): value for key, value in result.headers}


def as_feed(result: FetchResult) -> FoundFeed | None:
    """The fetched document as a feed (URL as requested, via ``direct``), or None if it is not one."""
    if not result.ok or not result.body:
        return None
    try:
        parsed = parse_feed(result.body, result.final_url, _headers(result))
    except FeedParseError:
        return None
    return FoundFeed(url=result.url, title=parsed.title, format=parsed.format, via="direct")


def fetch_error(result: FetchResult) -> str:
    return f"{result.error_class}: {result.error_message}"


# --------------------------------------------------------------------------- with the network


def _check_candidates(urls: list[str], via: str, settings: Settings) -> tuple[list[FoundFeed], list[str]]:
    """Fetch candidates; the feeds among them (the same document reached twice counted once) and
    the URLs that were not feeds."""
    requests = [FetchRequest(url, settings.max_feed_bytes, accept=ACCEPT_FEED) for url in urls]
    found: list[FoundFeed] = []
    tried: list[str] = []
    seen: set[str] = set()
    for result in fetch_all(requests, settings):
        feed = as_feed(result)
        if feed is None:
            tried.append(result.url)
            continue
        # /feed and /feed/ (or /?feed=rss2) are often one feed: skip a document already found.
        digest = hashlib.sha256(result.body or b"").hexdigest()
        if result.final_url in seen or digest in seen:
            continue
        seen.update((result.final_url, digest))
        # A guessed path is stored where the server says the feed is; a declared link as declared.
        url = result.final_url if via == "guess" else result.url
        found.append(FoundFeed(url=url, title=feed.title, format=feed.format, via=via))
    return found, tried


def discover_feeds(url: str, settings: Settings) -> Discovery:
    """The feeds at or behind ``url``; ``error`` is set when ``url`` itself could not be fetched."""
    first = fetch_all([FetchRequest(url, settings.max_feed_bytes, accept=ACCEPT_FEED)], settings)[0]
    if not first.ok or first.body is None:
        return Discovery(url=url, error=fetch_error(first))
    direct = as_feed(first)
    if direct is not None:
        return Discovery(url=url, feeds=(direct,))

    fetched = {url, first.final_url}
    tried: list[str] = []
    stages = (
        ("link", feed_links(first.body, first.final_url)),
        ("guess", common_feed_urls(first.final_url)),  # only when no declared link is a feed
    )
    for via, candidates in stages:
        urls = [u for u in candidates if u not in fetched]
        if not urls:
            continue
        # Each fetch_all is a new client with fresh politeness bookkeeping: keep the spacing
        # between requests to this host that one client would have kept.
        time.sleep(settings.host_min_delay)
        found, not_feeds = _check_candidates(urls, via, settings)
        fetched.update(urls)
        tried.extend(not_feeds)
        if found:
            return Discovery(url=url, feeds=tuple(found), tried=tuple(tried))
    return Discovery(url=url, tried=tuple(tried))
