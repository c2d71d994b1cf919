"""What each parser promises on hostile input, as checks: one per parser, shared by the fuzzer
(``fuzz/run.py``), the property tests (``tests/test_properties.py``) and the regression inputs
(``tests/golden/fuzz-regressions/<target>/*``, run by ``tests/test_fuzz_regressions.py``).

A ``check_*`` function takes structured input and raises (``AssertionError`` or whatever the code
under test let escape) when a promise is broken. A fuzz target (``TARGETS``) takes raw bytes, as
libFuzzer hands them, decodes them into that structured input and calls its check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

from tasks.dedup import TRACKING_PARAMS, TRACKING_PREFIXES, canonicalize_url, keyed_entries
from tasks.extract import Extracted, ExtractJob, _decode, extract_article
from tasks.opml import OpmlError, read_opml
from tasks.parse import MAX_AUTHOR_CHARS, FeedParseError, ParsedFeed, parse_feed, parse_iso_datetime
from tasks.robots import parse_robots, robots_key, robots_url
from tasks.sources import ParsedSitemap, SitemapError, next_page_links, parse_sitemap

FEED_URL = "https://feeds.example/news/feed.xml"
PAGE_URL = "https://news.example/2024/05/article.html"
SITEMAP_URL = "https://news.example/sitemap.xml"
SITEMAP_LIMIT = 1 << 20

# The content types a feed may come with: the first byte of a feed input picks one.
FEED_CONTENT_TYPES: tuple[str | None, ...] = (
    None,
    "application/rss+xml",
    "application/atom+xml; charset=utf-8",
    "application/feed+json",
    "application/json; charset=utf-8",
    "text/xml; charset=iso-8859-1",
    "text/xml; charset=utf-16",
    "application/xml; charset=utf-32",
    "text/html; charset=windows-1252",
    "application/xml; charset=no-such-charset",
)

# Output of a feed against its input: a few characters per byte (``&`` comes back as ``&amp;`` in
# sanitised HTML, a relative link gains the feed's base), plus what every entry or enclosure may
# carry that is not its own bytes: the resolved base of its links and, in a JSON Feed, the feed's
# authors (capped). Entity expansion would break this at once.
OUTPUT_CHARS_PER_INPUT_BYTE = 8
OUTPUT_CHARS_PER_ITEM = 2 * len(FEED_URL) + 64
OUTPUT_CHARS_FIXED = 4096


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_text(value: str, where: str) -> None:
    assert "\x00" not in value, f"{where}: NUL in {value[:80]!r}"
    try:
        value.encode("utf-8")  # what Parquet, DuckDB and the hashes of entry keys need
    except UnicodeEncodeError as exc:
        raise AssertionError(f"{where}: not encodable as UTF-8 ({exc}): {value[:80]!r}") from exc


def _check_date(value: datetime | None, where: str) -> None:
    if value is not None:
        assert isinstance(value, datetime), f"{where}: {value!r}"
        assert value.tzinfo is not None and value.utcoffset() is not None, f"{where}: naive {value!r}"


def feed_strings(parsed: ParsedFeed) -> Iterator[tuple[str, str]]:
    """(where, text) for every string of a parsed feed."""
    for name in ("format", "title", "site_url", "language"):
        value = getattr(parsed, name)
        if value is not None:
            yield name, value
    for n, entry in enumerate(parsed.entries):
        for name in ("guid", "link", "title", "summary", "author"):
            value = getattr(entry, name)
            if value is not None:
                yield f"entries[{n}].{name}", value
        for category in entry.categories:
            yield f"entries[{n}].categories", category
        for enclosure in entry.enclosures:
            yield f"entries[{n}].enclosures.url", enclosure.url
            if enclosure.type is not None:
                yield f"entries[{n}].enclosures.type", enclosure.type


def check_parsed_feed(parsed: ParsedFeed, body: bytes) -> None:
    assert isinstance(parsed, ParsedFeed)
    assert parsed.format, "a parsed feed has a format"
    assert len(parsed.entries) <= len(body) // 2 + 1, "more entries than the bytes can hold"
    total_chars = 0
    for where, text in feed_strings(parsed):
        assert isinstance(text, str), f"{where}: {text!r}"
        _check_text(text, where)
        total_chars += len(text)
    items = len(parsed.entries) + sum(len(e.enclosures) for e in parsed.entries)
    per_item = OUTPUT_CHARS_PER_ITEM + (MAX_AUTHOR_CHARS if parsed.format.startswith("jsonfeed") else 0)
    bound = OUTPUT_CHARS_PER_INPUT_BYTE * len(body) + per_item * items + OUTPUT_CHARS_FIXED
    assert total_chars <= bound, f"{total_chars} characters out of {len(body)} bytes in: blow-up"
    assert parsed.hint_interval_s is None or parsed.hint_interval_s >= 0
    for n, entry in enumerate(parsed.entries):
        assert entry.link is None or _is_http_url(entry.link), f"entries[{n}].link {entry.link!r}"
        for enclosure in entry.enclosures:
            assert _is_http_url(enclosure.url), f"entries[{n}] enclosure {enclosure.url!r}"
            assert enclosure.length is None or enclosure.length >= 0
        _check_date(entry.published_at, f"entries[{n}].published_at")
        _check_date(entry.updated_at, f"entries[{n}].updated_at")
    # The next step keys every entry and canonicalises its link: that must hold too.
    keyed_entries([(FEED_URL, parsed.entries)])


def check_feed(body: bytes, content_type: str | None = None, url: str = FEED_URL) -> ParsedFeed | None:
    """parse_feed raises nothing but FeedParseError, and what it returns is sane."""
    headers = {"Content-Type": content_type} if content_type is not None else {}
    try:
        parsed = parse_feed(body, url, headers)
    except FeedParseError as exc:
        assert exc.error_class in ("not_a_feed", "parse_error"), exc.error_class
        return None
    check_parsed_feed(parsed, body)
    return parsed


def check_canonical_url(url: str) -> str | None:
    """canonicalize_url never raises; its answer is None or an http(s) URL with a host, without
    fragment or tracking parameters, UTF-8 encodable, and a fixed point."""
    canonical = canonicalize_url(url)
    if canonical is None:
        return None
    assert isinstance(canonical, str)
    _check_text(canonical, "canonical URL")
    parts = urlsplit(canonical)
    assert parts.scheme in ("http", "https"), canonical
    assert parts.hostname, canonical
    parts.port  # noqa: B018 - raises ValueError on a port that is no port
    assert not parts.fragment and "#" not in canonical, canonical
    for key, _value in parse_qsl(parts.query, keep_blank_values=True):
        lowered = key.lower()
        assert lowered not in TRACKING_PARAMS and not lowered.startswith(TRACKING_PREFIXES), canonical
    again = canonicalize_url(canonical)
    assert again == canonical, f"not idempotent: {url!r} -> {canonical!r} -> {again!r}"
    return canonical


def check_decode(body: bytes, content_type: str | None) -> None:
    """The HTML handed to trafilatura: decoding by the HTTP charset never raises."""
    decoded = _decode(body, content_type)
    assert isinstance(decoded, bytes | str)
    if isinstance(decoded, bytes):
        assert decoded == body


def check_extract(body: bytes, content_type: str | None, url: str = PAGE_URL) -> Extracted:
    """extract_article never raises: text, or no text and a recorded error."""
    check_decode(body, content_type)
    result = extract_article(ExtractJob(key="k", url=url, body=body, content_type=content_type))
    assert isinstance(result, Extracted) and result.key == "k"
    assert (result.text is None) == (result.error is not None), result
    for name in ("text", "title", "author", "date", "sitename", "language", "image", "description"):
        value = getattr(result, name)
        assert value is None or isinstance(value, str), (name, value)
    return result


def check_opml(data: bytes) -> None:
    try:
        specs = read_opml(data)
    except OpmlError:
        return
    for spec in specs:
        assert isinstance(spec.url, str)
        assert spec.name is None or (isinstance(spec.name, str) and spec.name)
        assert all(isinstance(tag, str) and tag for tag in spec.tags)


def check_sitemap(data: bytes, url: str = SITEMAP_URL) -> None:
    try:
        parsed = parse_sitemap(data, url, SITEMAP_LIMIT)
    except SitemapError:
        return
    assert isinstance(parsed, ParsedSitemap)
    for item in parsed.urls:
        assert isinstance(item.loc, str) and item.loc
        _check_date(item.lastmod, "lastmod")
        _check_date(item.news_date, "news:publication_date")
    for loc, lastmod in parsed.children:
        assert isinstance(loc, str) and loc
        _check_date(lastmod, "sitemap lastmod")


def check_feed_page_links(data: bytes) -> None:
    links = next_page_links(data)
    assert all(isinstance(link, str) for link in links)


_ROBOTS_PROBES = (
    "https://news.example/",
    "https://news.example/private/a?b=c",
    "https://news.example/%E4%BD%A0/$x*y",
)


def check_robots(data: bytes) -> None:
    rules = parse_robots(data, status=200)
    for url in _ROBOTS_PROBES:
        assert isinstance(rules.allowed(url, "newsflow"), bool)
    delay = rules.crawl_delay("newsflow")
    assert delay is None or 0 <= delay < float("inf"), delay


def check_robots_url(url: str) -> None:
    answer = robots_url(url)
    assert answer is None or (_is_http_url(answer) and answer.endswith("/robots.txt")), answer
    key = robots_key(url)
    assert key is None or isinstance(key, str)


def check_iso_datetime(text: str) -> None:
    _check_date(parse_iso_datetime(text), f"parse_iso_datetime({text[:80]!r})")


# --------------------------------------------------------------------------- bytes -> checks


def _text_of(data: bytes) -> str:
    """Bytes as text, lone surrogates included (``\\xed\\xa0\\x80``) so the checks meet them."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _header_and_body(data: bytes) -> tuple[str | None, bytes]:
    """``content-type line \\n body``; no newline at all: no content type."""
    head, newline, body = data.partition(b"\n")
    if not newline:
        return None, data
    return head[:200].decode("latin-1"), body


def fuzz_feed(data: bytes) -> None:
    if not data:
        check_feed(b"")
        return
    check_feed(data[1:], FEED_CONTENT_TYPES[data[0] % len(FEED_CONTENT_TYPES)])


def fuzz_url(data: bytes) -> None:
    text = _text_of(data)
    check_canonical_url(text)
    check_robots_url(text)


def fuzz_extract(data: bytes) -> None:
    content_type, body = _header_and_body(data)
    check_extract(body, content_type)


def fuzz_dates(data: bytes) -> None:
    check_iso_datetime(_text_of(data))


def fuzz_sitemap(data: bytes) -> None:
    check_sitemap(data)
    check_feed_page_links(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "feed": fuzz_feed,
    "url": fuzz_url,
    "extract": fuzz_extract,
    "opml": check_opml,
    "sitemap": fuzz_sitemap,
    "robots": check_robots,
    "dates": fuzz_dates,
}


def feed_input(body: bytes, content_type: str | None) -> bytes:
    """The fuzz_feed input that parses ``body`` with ``content_type`` (one of FEED_CONTENT_TYPES)."""
    return bytes([FEED_CONTENT_TYPES.index(content_type)]) + body


def input_name(data: bytes) -> str:
    """The file name libFuzzer would give an input: its SHA-1."""
    return hashlib.sha1(data).hexdigest()
