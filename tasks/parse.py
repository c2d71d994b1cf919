"""Parse: fetched feed documents (bytes and response headers) into entries.

Parsing takes bytes, never a URL: feedparser must not fetch. RSS 0.9x/1.0/2.0 and Atom go through
feedparser; JSON Feed 1.x is read here (feedparser does not know it).
"""

from __future__ import annotations

import calendar
import codecs
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import feedparser
from feedparser.datetimes import _parse_date
from feedparser.encodings import convert_to_utf8
from feedparser.mixin import _FeedParserMixin

from tasks.fetch import FetchResult
from tasks.schedule import feed_hint_seconds
from tasks.workers import TIMED_OUT

# An entry's GUID is its identity, never a link to resolve: feedparser would turn an RSS
# <guid>12345</guid> (isPermaLink defaults to true) into "<feed URL's base>/12345", so the same entry
# would get another key once its feed moves (301/308, http -> https). Links and content are still
# resolved against the document's URL.
_FeedParserMixin.can_be_relative_uri = frozenset(_FeedParserMixin.can_be_relative_uri - {"id"})

# Hostile XML: feedparser expands flat ("quadratic") entity declarations itself after expat
# refuses them, and DTDs are never needed by a feed. Every DOCTYPE and ENTITY declaration is
# dropped before parsing; HTML named entities still work (feedparser knows them). The removal
# works on the document as feedparser will read it, decoded to UTF-8 the way feedparser decodes
# (HTTP charset, BOM, XML declaration): on the bytes as received, a DTD written in UTF-7
# ("+ADw-!DOCTYPE"), EBCDIC (cp037) or ISO-2022-JP (an empty shift: "<!DOC\x1b$B\x1b(BTYPE")
# would slip through.
_DOCTYPE = re.compile(rb"<!DOCTYPE(?:[^\[>]*\[.*?\]\s*>|[^>]*>)", re.S | re.I)
_ENTITY_DECL = re.compile(rb"<!ENTITY[^>]*>", re.S | re.I)
_DTD_MARKERS = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.I)
_MAX_DTD_PASSES = 8  # declarations nested to re-form after removal: give up rather than loop
_XML_DECL_ENCODING = re.compile(rb"^(\s*<\?xml[^>]*?encoding\s*=\s*)([\"'])([^\"']*)\2", re.I)
# UTF-16 and UTF-32 documents become UTF-8 before anything looks at their bytes (NUL and DTD
# removal would otherwise cut their characters apart): known by their BOM, else by how they spell
# the first "<" (XML 1.0 appendix F). UTF-32-LE's BOM starts like UTF-16-LE's: it comes first.
_WIDE_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00", "utf-16-le"),
    (b"\x00<", "utf-16-be"),
)
_CHARSET_PARAM = re.compile(r";\s*charset\s*=[^;]*", re.I)
_MAX_FIELD_CHARS = 200_000  # one entry field; more is truncated
_MAX_ENTRIES_PARSED = 100_000
# A JSON Feed's top-level authors go to every item that names none: kept short, or 50 KB of
# "{}" items under one long name would come out as gigabytes of author fields.
MAX_AUTHOR_CHARS = 512
# JSON's "\ud800" escapes decode to lone surrogates, which no UTF-8 writer (Parquet, DuckDB, the
# hash of an entry key) accepts: each one becomes U+FFFD, as an undecodable byte does.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Enclosure:
    url: str
    type: str | None = None
    length: int | None = None


@dataclass(frozen=True)
class FeedEntry:
    guid: str | None
    link: str | None
    title: str | None
    published_at: datetime | None
    updated_at: datetime | None
    summary: str | None
    author: str | None
    categories: tuple[str, ...] = ()
    enclosures: tuple[Enclosure, ...] = ()

    @property
    def identity(self) -> str:
        """What identifies this entry within its feed: the GUID, else the link, else the title."""
        return self.guid or self.link or f"title:{self.title or ''}"


@dataclass(frozen=True)
class ParsedFeed:
    format: str  # rss20, atom10, jsonfeed11, ...
    title: str | None
    site_url: str | None
    language: str | None
    entries: tuple[FeedEntry, ...] = field(default_factory=tuple)
    hint_interval_s: int | None = None  # what the document asks: <ttl>, sy:updatePeriod/Frequency


class FeedParseError(Exception):
    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class  # "not_a_feed" | "parse_error"


# --------------------------------------------------------------------------- parsing


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _clip(value: object) -> str | None:
    if value is None:
        return None
    text = _LONE_SURROGATE.sub("\ufffd", str(value).replace("\x00", "")).strip()
    if not text:
        return None
    return text[:_MAX_FIELD_CHARS]


def _struct_to_dt(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), UTC)
    except (OverflowError, ValueError, TypeError):
        return None


def parse_iso_datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return _struct_to_dt(_parse_date(value))  # RFC 822, W3CDTF and friends
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _looks_like_json_feed(body: bytes, content_type: str) -> bool:
    head = body.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    return head == b"{" and ("json" in content_type or b"jsonfeed.org/version" in body[:4096])


def parse_feed(body: bytes, url: str, headers: dict[str, str] | None = None) -> ParsedFeed:
    """Parse one fetched feed document. Raises :class:`FeedParseError` when it is not a feed."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    content_type = headers.get("content-type", "").lower()
    if _looks_like_json_feed(body, content_type):
        return parse_json_feed(body, url)
    return _parse_xml_feed(body, url, headers)


def _wide_as_utf8(body: bytes) -> bytes | None:
    """A UTF-16/32 document re-encoded as UTF-8, its declaration saying so; None for any other."""
    for mark, codec in _WIDE_ENCODINGS:
        if body.startswith(mark):
            text = body.decode(codec, errors="replace").removeprefix("\ufeff")
            return _XML_DECL_ENCODING.sub(rb"\1\2utf-8\2", text.encode("utf-8"), count=1)
    return None


def _sanitize_xml(body: bytes, response_headers: dict[str, str]) -> bytes:
    """The document as UTF-8 (its declaration saying so), without NUL bytes and without any DTD."""
    body = _drop_unknown_declared_encoding(body)
    try:
        # What feedparser itself does first, with the same headers: the document decoded (HTTP
        # charset, BOM, declaration; windows-1252 and iso-8859-2 are its last resorts) and
        # re-encoded as UTF-8. A lone surrogate from UTF-7 fails the re-encoding.
        body = convert_to_utf8(response_headers, body, {})
    except (ValueError, LookupError) as exc:  # UnicodeError is a ValueError
        raise FeedParseError("parse_error", f"cannot decode the document: {exc}") from exc
    body = body.replace(b"\x00", b"")
    # Every DOCTYPE and ENTITY declaration goes, decoys and declarations hidden in comments
    # included; removal is repeated because nested fragments can re-form a declaration.
    for _ in range(_MAX_DTD_PASSES):
        if not _DTD_MARKERS.search(body):
            break
        body = _ENTITY_DECL.sub(b"", _DOCTYPE.sub(b"", body))
    else:
        if _DTD_MARKERS.search(body):
            raise FeedParseError("parse_error", "document type declarations nested too deep: refused")
    return body


def _drop_unknown_declared_encoding(body: bytes) -> bytes:
    """An encoding name that Python cannot decode makes feedparser raise: drop it and let
    feedparser sniff (HTTP header, BOM, then UTF-8 / Windows-1252)."""
    match = _XML_DECL_ENCODING.match(body)
    if match:
        name = match.group(3).decode("latin-1")
        try:
            "".encode(name)
        except (LookupError, ValueError):
            body = body[: match.start(1)] + body[match.end(0) :]
    return body


def _parse_xml_feed(body: bytes, url: str, headers: dict[str, str]) -> ParsedFeed:
    utf8 = _wide_as_utf8(body)
    # A response without a Content-Type is read as application/xml (BOM, declaration, else UTF-8):
    # with none at all feedparser takes it for ISO-8859-1, BOM or not ("Å" came back "Ã").
    response_headers = {
        "content-location": url,
        "content-type": headers.get("content-type", "application/xml"),
    }
    if utf8 is not None:  # the BOM named the encoding, and the bytes are UTF-8 now
        response_headers["content-type"] = (
            _CHARSET_PARAM.sub("", response_headers["content-type"]) + "; charset=utf-8"
        )
    clean = _sanitize_xml(body if utf8 is None else utf8, response_headers)
    # Decoded already: feedparser must read these bytes as the UTF-8 they are (with the original
    # charset it would decode them a second time, and a "+ADw-" in the text would become markup).
    response_headers["content-type"] = "application/xml; charset=utf-8"
    try:
        parsed = feedparser.parse(clean, response_headers=response_headers, sanitize_html=True)
    except Exception as exc:  # feedparser raises on a few hostile inputs; record, never crash
        raise FeedParseError("parse_error", f"{exc.__class__.__name__}: {exc}") from exc
    version = parsed.get("version") or ""
    if not version and not parsed.entries:
        reason = parsed.get("bozo_exception")
        detail = f" ({reason.__class__.__name__}: {reason})" if reason else ""
        looks_html = b"<html" in body[:2048].lower()
        raise FeedParseError(
            "not_a_feed",
            ("an HTML page, not a feed" if looks_html else "no RSS, Atom or JSON Feed found") + detail[:300],
        )
    feed = parsed.get("feed", {})
    entries = []
    for raw in parsed.entries[:_MAX_ENTRIES_PARSED]:
        entries.append(_entry_from_feedparser(raw, url))
    return ParsedFeed(
        format=version or "unknown",
        title=_clip(feed.get("title")),
        site_url=_clip(feed.get("link")),
        language=_clip(feed.get("language")),
        entries=tuple(entries),
        hint_interval_s=feed_hint_seconds(
            feed.get("ttl"), feed.get("sy_updateperiod"), feed.get("sy_updatefrequency")
        ),
    )


def _entry_from_feedparser(raw, feed_url: str) -> FeedEntry:
    link = raw.get("link")
    if not link:
        for candidate in raw.get("links", []):
            if candidate.get("rel", "alternate") == "alternate" and candidate.get("href"):
                link = candidate["href"]
                break
    link = _absolute(link, feed_url)
    categories = tuple(
        dict.fromkeys(_clip(t.get("term") or t.get("label")) for t in raw.get("tags", []) if t)
    )
    enclosures = []
    for enc in raw.get("enclosures", []):
        href = _absolute(enc.get("href"), feed_url)
        if href:
            enclosures.append(
                Enclosure(url=href, type=_clip(enc.get("type")), length=_byte_count(enc.get("length")))
            )
    summary = raw.get("summary")
    return FeedEntry(
        guid=_clip(raw.get("id")),
        link=link,
        title=_clip(raw.get("title")),
        # RSS 1.0 dc:date and Atom <updated> arrive as updated_parsed: the best date there is.
        published_at=_struct_to_dt(raw.get("published_parsed"))
        or _struct_to_dt(raw.get("created_parsed"))
        or _struct_to_dt(raw.get("updated_parsed")),
        updated_at=_struct_to_dt(raw.get("updated_parsed")),
        summary=_clip(summary),
        author=_clip(raw.get("author")),
        categories=tuple(c for c in categories if c),
        enclosures=tuple(enclosures),
    )


def _absolute(link: object, base: str) -> str | None:
    """``link`` resolved against ``base``; None unless that is an http(s) URL with a host
    (``javascript:``, ``mailto:``, ``data:`` and the like are no links to an article)."""
    if not isinstance(link, str):
        return None
    link = _LONE_SURROGATE.sub("\ufffd", link.strip().replace("\x00", ""))
    if not link:
        return None
    try:
        absolute = urljoin(base, link)
        parts = urlsplit(absolute)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
    except ValueError:
        return None
    return absolute


def parse_json_feed(body: bytes, url: str) -> ParsedFeed:
    """JSON Feed 1.0 / 1.1 (https://jsonfeed.org/version/1.1)."""
    try:
        doc = json.loads(body.decode("utf-8-sig", errors="replace"))
    except (ValueError, RecursionError) as exc:
        raise FeedParseError("parse_error", f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not str(doc.get("version", "")).startswith(
        "https://jsonfeed.org/version/"
    ):
        raise FeedParseError("not_a_feed", "JSON document without a jsonfeed.org version")
    version = "jsonfeed" + re.sub(r"[^0-9A-Za-z]", "", str(doc["version"]).rsplit("/", 1)[-1])[:16]
    items = doc.get("items")
    if not isinstance(items, list):
        raise FeedParseError("parse_error", "JSON Feed without an items list")
    feed_authors = _json_authors(doc)
    entries = []
    for item in items[:_MAX_ENTRIES_PARSED]:
        if not isinstance(item, dict):
            continue
        link = _absolute(item.get("url") or item.get("external_url"), url)
        tags = item.get("tags") if isinstance(item.get("tags"), list) else []
        attachments = item.get("attachments") if isinstance(item.get("attachments"), list) else []
        authors = _json_authors(item) or feed_authors
        entries.append(
            FeedEntry(
                guid=_clip(item.get("id")),
                link=link,
                title=_clip(item.get("title")),
                published_at=parse_iso_datetime(item.get("date_published")),
                updated_at=parse_iso_datetime(item.get("date_modified")),
                summary=_clip(item.get("summary") or item.get("content_text") or item.get("content_html")),
                author=authors,
                categories=tuple(dict.fromkeys(c for c in (_clip(t) for t in tags) if c)),
                enclosures=tuple(
                    Enclosure(
                        url=href,
                        type=_clip(a.get("mime_type")),
                        length=_byte_count(a.get("size_in_bytes")),
                    )
                    for a in attachments
                    if isinstance(a, dict) and (href := _absolute(a.get("url"), url))
                ),
            )
        )
    return ParsedFeed(
        format=version,
        title=_clip(doc.get("title")),
        site_url=_clip(doc.get("home_page_url")),
        language=_clip(doc.get("language")),
        entries=tuple(entries),
    )


def _byte_count(value: object) -> int | None:
    """An enclosure's size: a count of bytes that fits a BIGINT (or its ASCII digits), else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)  # never a 5,000-digit string: int() refuses those with ValueError
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _json_authors(obj: dict) -> str | None:
    authors = obj.get("authors")
    if not isinstance(authors, list):
        single = obj.get("author")  # JSON Feed 1.0
        authors = [single] if isinstance(single, dict) else []
    names = [a.get("name") for a in authors if isinstance(a, dict) and isinstance(a.get("name"), str)]
    text = _clip(", ".join(names)) if names else None
    return text[:MAX_AUTHOR_CHARS].rstrip() if text else None


# --------------------------------------------------------------------------- one poll's feeds


@dataclass(frozen=True)
class FeedOutcome:
    """What one feed fetch came to: entries, nothing new, or a recorded failure."""

    feed_url: str
    result: FetchResult
    parsed: ParsedFeed | None = None
    body_hash: str | None = None
    unchanged: bool = False  # 304, or the same bytes as last time (server ignores validators)
    error_class: str | None = None
    error_message: str | None = None

    @property
    def failed(self) -> bool:
        return self.error_class is not None


@dataclass(frozen=True)
class FeedDocument:
    """One fetched feed document to parse, as sent to a worker process."""

    body: bytes
    url: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FeedParsed:
    """What parsing one document gave: the feed, or the class and text of its failure."""

    parsed: ParsedFeed | None = None
    error_class: str | None = None
    error_message: str | None = None


def parse_feed_document(doc: FeedDocument) -> FeedParsed:
    """:func:`parse_feed` as a picklable function of a picklable value (worker processes)."""
    try:
        return FeedParsed(parsed=parse_feed(doc.body, doc.url, dict(doc.headers)))
    except FeedParseError as exc:
        return FeedParsed(error_class=exc.error_class, error_message=str(exc)[:1000])


def _parse_given_up(doc: FeedDocument, why: str, timeout: float | None) -> FeedParsed:
    if why == TIMED_OUT:
        message = f"gave up parsing the feed after {timeout:g} s ({len(doc.body):,} bytes)"
    else:
        message = f"the parser's process died on this document ({len(doc.body):,} bytes)"
    return FeedParsed(error_class="parse_error", error_message=message)


class ParsePool(Protocol):
    """A pool of worker processes (``tasks.workers.BoundedProcessPool``)."""

    def apply(self, fn, items, give_up, timeout: float | None = None) -> list: ...


def parse_documents(
    documents: Sequence[FeedDocument], pool: ParsePool | None = None, timeout: float | None = None
) -> list[FeedParsed]:
    """Each document parsed; with a ``pool``, in its worker processes, each one given up after
    ``timeout`` seconds (``parse_error``)."""
    if pool is None:
        return [parse_feed_document(doc) for doc in documents]
    return pool.apply(parse_feed_document, documents, _parse_given_up, timeout)


def parse_feed_results(
    results: list[FetchResult],
    previous_hashes: Mapping[str, str | None],
    feed_urls: Sequence[str] | None = None,
    pool: ParsePool | None = None,
    timeout: float | None = None,
) -> list[FeedOutcome]:
    """Parse each fetched feed; a feed whose bytes did not change costs no parsing.

    ``feed_urls`` names the feed of each result when it was fetched from elsewhere (a feed that
    moved keeps its identity); by default the URL requested. With a ``pool``, documents are
    parsed in its worker processes and one that takes longer than ``timeout`` seconds is given
    up (``parse_error``): parsing is bounded in time, not only by the size cap."""
    outcomes: list[FeedOutcome | None] = []
    to_parse: list[tuple[int, str, FetchResult, str, FeedDocument]] = []
    for n, result in enumerate(results):
        url = feed_urls[n] if feed_urls is not None else result.url
        if result.error_class:
            outcomes.append(
                FeedOutcome(url, result, error_class=result.error_class, error_message=result.error_message)
            )
            continue
        if result.not_modified:
            outcomes.append(FeedOutcome(url, result, body_hash=previous_hashes.get(url), unchanged=True))
            continue
        digest = body_hash(result.body or b"")
        if previous_hashes.get(url) == digest:
            outcomes.append(FeedOutcome(url, result, body_hash=digest, unchanged=True))
            continue
        document = FeedDocument(result.body or b"", result.final_url, tuple(dict(result.headers).items()))
        to_parse.append((len(outcomes), url, result, digest, document))
        outcomes.append(None)
    parsed_all = parse_documents([item[4] for item in to_parse], pool, timeout)
    for (slot, url, result, digest, _), done in zip(to_parse, parsed_all, strict=True):
        outcomes[slot] = FeedOutcome(
            url,
            result,
            parsed=done.parsed,
            body_hash=digest,
            error_class=done.error_class,
            error_message=done.error_message,
        )
    return outcomes
