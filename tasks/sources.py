"""Sources of a backfill: a list of URLs, a sitemap (tree), a feed's paginated archive.

Each source turns into article URLs to fetch (or, for a feed, entries). Everything is fetched
with the guarded client in ``tasks.fetch``; sitemaps are parsed with entities and network access
off, and gzip is decoded with the same cap as any other body.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from lxml import etree

from newsflow.settings import Settings
from tasks.fetch import ACCEPT_FEED, FetchRequest, FetchResult, fetch_all
from tasks.parse import FeedDocument, FeedEntry, parse_documents, parse_iso_datetime
from tasks.robots import PolitenessState
from tasks.workers import BoundedProcessPool

SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
NEWS_NS = "http://www.google.com/schemas/sitemap-news/0.9"
ACCEPT_SITEMAP = "application/xml, text/xml;q=0.9, application/x-gzip;q=0.8, */*;q=0.5"
MAX_SITEMAPS = 10_000  # sitemap documents visited by one backfill, index recursion included


# --------------------------------------------------------------------------- URL lists


def read_url_list(path: Path) -> tuple[list[str], list[str]]:
    """URLs from a file, one per line; blank lines and ``#`` comments ignored.

    Returns (urls, rejected): only http and https URLs are kept, each once, in file order.
    """
    urls: list[str] = []
    rejected: list[str] = []
    seen: set[str] = set()
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        line = words[0]  # a URL has no spaces: whatever follows it is a comment
        scheme = urlsplit(line).scheme.lower()
        if scheme not in ("http", "https"):
            rejected.append(line)
            continue
        if line not in seen:
            seen.add(line)
            urls.append(line)
    return urls, rejected


# --------------------------------------------------------------------------- sitemaps


@dataclass(frozen=True)
class FetchRecord:
    """A fetch for ``fetch_log``, without its body (a sitemap can be 15 MB; only its size is kept)."""

    result: FetchResult
    size: int | None
    error_class: str | None = None
    error_message: str | None = None


def _record(result: FetchResult, error: tuple[str, str] | None = None) -> FetchRecord:
    size = len(result.body) if result.body is not None else None
    light = replace(result, body=None)
    return FetchRecord(light, size, *(error or (None, None)))


@dataclass(frozen=True)
class SitemapUrl:
    loc: str
    lastmod: datetime | None = None
    news_date: datetime | None = None  # news:publication_date (Google News sitemaps)
    news_title: str | None = None

    @property
    def date(self) -> datetime | None:
        return self.news_date or self.lastmod


@dataclass(frozen=True)
class ParsedSitemap:
    urls: tuple[SitemapUrl, ...] = ()
    children: tuple[tuple[str, datetime | None], ...] = ()  # (loc, lastmod) of a sitemap index


class SitemapError(Exception):
    pass


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=True
)


def _maybe_gunzip(body: bytes, limit: int) -> bytes:
    if body[:2] != b"\x1f\x8b":
        return body
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise SitemapError(f"broken gzip: {exc}") from exc
    if len(out) > limit:
        raise SitemapError(f"gzipped sitemap larger than {limit} bytes once decompressed")
    return out


def parse_sitemap(body: bytes, url: str, limit: int) -> ParsedSitemap:
    """A ``<urlset>`` (URLs, with lastmod and news:publication_date) or a ``<sitemapindex>``."""
    data = _maybe_gunzip(body, limit)
    try:
        root = etree.fromstring(data, _PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise SitemapError(f"not XML: {exc}") from exc
    if root is None:
        raise SitemapError("empty document")
    try:
        tag = etree.QName(root).localname
    except ValueError as exc:  # recover=True keeps names such as "urlset:" that QName refuses
        raise SitemapError(f"not a sitemap: {exc}") from exc
    if tag == "sitemapindex":
        children = []
        for node in root.iter(f"{{{SITEMAP_NS}}}sitemap", "sitemap"):
            loc = _joined(url, _text(node, "loc"))
            if loc:
                children.append((loc, parse_iso_datetime(_text(node, "lastmod"))))
        return ParsedSitemap(children=tuple(children))
    if tag != "urlset":
        raise SitemapError(f"not a sitemap: root element <{tag}>")
    urls = []
    for node in root.iter(f"{{{SITEMAP_NS}}}url", "url"):
        loc = _joined(url, _text(node, "loc"))
        if not loc:
            continue
        news = node.find(f"{{{NEWS_NS}}}news")
        urls.append(
            SitemapUrl(
                loc=loc,
                lastmod=parse_iso_datetime(_text(node, "lastmod")),
                news_date=parse_iso_datetime(_text(news, "publication_date", NEWS_NS))
                if news is not None
                else None,
                news_title=_text(news, "title", NEWS_NS) if news is not None else None,
            )
        )
    return ParsedSitemap(urls=tuple(urls))


def _joined(base: str, loc: str | None) -> str | None:
    """``loc`` resolved against the sitemap's URL; None when it cannot be (``http://[::1``)."""
    if not loc:
        return None
    try:
        return urljoin(base, loc)
    except ValueError:
        return None


def _text(node, name: str, ns: str = SITEMAP_NS) -> str | None:
    if node is None:
        return None
    child = node.find(f"{{{ns}}}{name}")
    if child is None:
        child = node.find(name)
    if child is None:
        return None
    try:
        text = child.text
    except ValueError:  # "&#55296;": libxml2's recovery stores a surrogate that lxml cannot decode
        return None
    if text is None:
        return None
    return text.strip() or None


def _in_window(when: datetime | None, since: date | None, until: date | None) -> bool:
    """Undated items are kept: a sitemap without dates cannot be bounded, only walked."""
    if when is None:
        return True
    day = when.astimezone(UTC).date()
    return (since is None or day >= since) and (until is None or day <= until)


@dataclass
class SitemapWalk:
    urls: list[SitemapUrl] = field(default_factory=list)
    sitemaps_fetched: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (url, error class, message)
    fetches: list[FetchRecord] = field(default_factory=list)
    out_of_window: int = 0


def walk_sitemaps(
    root_url: str,
    settings: Settings,
    since: date | None = None,
    until: date | None = None,
    state: PolitenessState | None = None,
) -> SitemapWalk:
    """Breadth-first through a sitemap index and its children; URLs within [since, until].
    ``state``: the run's politeness state (spacing, postponed hosts), shared with its page fetches."""
    walk = SitemapWalk()
    queue = [root_url]
    visited: set[str] = set()
    seen_urls: set[str] = set()
    while queue and walk.sitemaps_fetched < MAX_SITEMAPS:
        level = [u for u in dict.fromkeys(queue) if u not in visited][: MAX_SITEMAPS - walk.sitemaps_fetched]
        visited.update(level)
        queue = []
        requests = [FetchRequest(u, settings.max_feed_bytes, accept=ACCEPT_SITEMAP) for u in level]
        for result in fetch_all(requests, settings, state):
            walk.sitemaps_fetched += 1
            if not result.ok:
                walk.failures.append((result.url, result.error_class or "http", result.error_message or ""))
                walk.fetches.append(_record(result))
                continue
            try:
                parsed = parse_sitemap(result.body or b"", result.final_url, settings.max_feed_bytes)
            except SitemapError as exc:
                walk.failures.append((result.url, "not_a_sitemap", str(exc)))
                walk.fetches.append(_record(result, ("not_a_sitemap", str(exc))))
                continue
            walk.fetches.append(_record(result))
            for loc, lastmod in parsed.children:
                # A child sitemap last changed before `since` holds nothing newer.
                if since is not None and lastmod is not None and lastmod.astimezone(UTC).date() < since:
                    continue
                queue.append(loc)
            for item in parsed.urls:
                if item.loc in seen_urls:
                    continue
                seen_urls.add(item.loc)
                if _in_window(item.date, since, until):
                    walk.urls.append(item)
                else:
                    walk.out_of_window += 1
    return walk


# --------------------------------------------------------------------------- paginated feeds


@dataclass
class FeedArchiveWalk:
    entries: list[FeedEntry] = field(default_factory=list)
    pages_fetched: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (url, error class, message)
    fetches: list[FetchRecord] = field(default_factory=list)
    how: str = ""  # "rfc5005" | "wordpress-paged" | "single page"


def next_page_links(body: bytes) -> list[str]:
    """RFC 5005 ``<link rel="next">`` (paged feeds) and ``rel="prev-archive"`` (archived feeds)."""
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return []
    if root is None:
        return []
    links = []
    for node in root.iter("{http://www.w3.org/2005/Atom}link", "link"):
        try:
            rel = (node.get("rel") or "").strip().lower()
            href = node.get("href")
        except ValueError:  # an attribute holding "&#55296;" (see _text)
            continue
        if href and rel in ("next", "prev-archive"):
            links.append(href)
    return links


def wordpress_page_url(feed_url: str, page: int) -> str:
    parts = urlsplit(feed_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "paged"]
    query.append(("paged", str(page)))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def walk_feed_archive(
    feed_url: str, pages: int, settings: Settings, state: PolitenessState | None = None
) -> FeedArchiveWalk:
    """Up to ``pages`` pages of a feed: RFC 5005 links when the feed declares them, else
    WordPress-style ``?paged=N``. Stops at the first page that fails or brings nothing new.
    Each page is parsed in a worker process within ``feed_parse_timeout``, like a poll's feeds."""
    with BoundedProcessPool(1, settings.feed_parse_timeout) as parser:
        return _walk_feed_archive(feed_url, pages, settings, state, parser)


def _walk_feed_archive(
    feed_url: str, pages: int, settings: Settings, state: PolitenessState | None, parser: BoundedProcessPool
) -> FeedArchiveWalk:
    walk = FeedArchiveWalk(how="single page")
    seen: set[str] = set()
    url: str | None = feed_url
    page = 1
    while url and page <= pages:
        (result,) = fetch_all(
            [FetchRequest(url, settings.max_feed_bytes, accept=ACCEPT_FEED)], settings, state
        )
        walk.pages_fetched += 1
        walk.fetches.append(_record(result))
        if not result.ok:
            if page > 1 and walk.how == "wordpress-paged" and result.status == 404:
                break  # WordPress answers 404 past the last page
            walk.failures.append((url, result.error_class or "http", result.error_message or ""))
            break
        document = FeedDocument(result.body or b"", result.final_url, tuple(dict(result.headers).items()))
        (done,) = parse_documents([document], parser, settings.feed_parse_timeout)
        if done.parsed is None:
            walk.failures.append((url, done.error_class, done.error_message))
            walk.fetches[-1] = _record(result, (done.error_class, done.error_message))
            break
        parsed = done.parsed
        new = [e for e in parsed.entries if e.identity not in seen]
        if not new:
            break
        seen.update(e.identity for e in new)
        walk.entries.extend(new)
        page += 1
        links = next_page_links(result.body or b"")
        if links:
            walk.how = "rfc5005"
            url = _joined(result.final_url, links[0])  # None (the archive ends) for "http://[::1"
        elif walk.how == "rfc5005":
            url = None  # the archive ends here
        else:
            walk.how = "wordpress-paged"
            url = wordpress_page_url(feed_url, page)
    return walk
