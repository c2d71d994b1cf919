"""Dedup: exact identity of articles — canonical URL, feed GUID, hash of the normalised text.

Plain functions over plain data: the warehouse answers "which of these keys do you know?", this
module decides, in a fixed order, which article is an original and which is a duplicate of what.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import SplitResult, parse_qsl, quote_plus, urlsplit, urlunsplit

from courlan import normalize_url

from tasks.parse import FeedEntry

# Parameters that identify a campaign or a click, never the article. courlan strips most of
# these already; this list makes the rule explicit and covers the ones it keeps.
TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid",
        "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id",
        "vero_id", "wickedid", "ocid", "cmpid", "ncid", "smid", "sr_share", "ref_src", "ref_url",
        "rss", "from_rss", "taid", "soc_src", "soc_trk", "s_cid", "spm",
    }
)  # fmt: skip
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hsa_", "at_")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_IN_HOST = re.compile(r"[\x00-\x20\x7f\s]")  # controls and spaces, Unicode ones too
_URL_SYNTAX = re.compile(r"[/?#@\[\]\\]")


def canonicalize_url(url: str | None) -> str | None:
    """The form of a URL used as its identity: courlan normalisation (scheme and host lowercased,
    default port dropped, query sorted), tracking parameters and the fragment removed."""
    if not url:
        return None
    url = url.strip()
    if _LONE_SURROGATE.search(url):  # no UTF-8 for it: it could be neither hashed nor stored
        return None
    try:
        original = urlsplit(url)
        if original.scheme.lower() not in ("http", "https") or not original.hostname:
            return None
        original.port  # noqa: B018 - ValueError on a port that is no port (":99999", ":8a")
        # Handed the split URL, courlan does not HTML-unescape it first ("&#35;" is no fragment).
        # An IPv6 literal is not handed over at all: courlan cuts ":80" out of "[2620:4f:8000::1]".
        bracketed = re.search(r"[\[\]]", original.netloc.rpartition("@")[2]) is not None
        parts = urlsplit(normalize_url(original._replace(netloc="ipv6.invalid") if bracketed else original))
        netloc, port = _ipv6_netloc(original) if bracketed else (parts.netloc, parts.port)
    except (ValueError, AttributeError):
        return None
    # No server has such a name (controls, spaces, or what punycode decoded into URL syntax):
    # not a URL to fetch or to key on. An IPv6 literal was checked whole by _ipv6_netloc.
    host_and_port = netloc.rpartition("@")[2]
    if host_and_port.startswith("["):
        host_and_port = host_and_port.partition("]")[2]
    if _NOT_IN_HOST.search(netloc) or _URL_SYNTAX.search(host_and_port):
        return None
    if port is not None and port == _DEFAULT_PORTS[parts.scheme]:  # courlan keeps "example.com.:80"
        netloc = netloc.rsplit(":", 1)[0]
    # The query comes from the original URL: courlan drops parameters without a value, and
    # ``story.php?12345`` and ``story.php?12346`` are two articles.
    query = [
        (k, v)
        for k, v in parse_qsl(original.query, keep_blank_values=True)
        if (k or v)  # a bare "=" is nothing
        and k.lower() not in TRACKING_PARAMS
        and not k.lower().startswith(TRACKING_PREFIXES)
    ]
    path = _remove_dot_segments(parts.path) or "/"
    encoded = "&".join(quote_plus(k) + (f"={quote_plus(v)}" if v else "") for k, v in sorted(query))
    return urlunsplit((parts.scheme, netloc, path, encoded, ""))


def _ipv6_netloc(original: SplitResult) -> tuple[str, int | None]:
    """The netloc of an IPv6 literal, built here: courlan keeps ``[::1]:80`` and cuts ``:80`` out of
    ``[::1:80]`` (another host). ValueError unless the host is one bracketed IPv6 address
    (``e.x[::1]-y`` is none: urlsplit would take ``::1`` for its host)."""
    userinfo, at, host_and_port = original.netloc.rpartition("@")
    if not host_and_port.startswith("["):
        raise ValueError(f"brackets inside a host name: {host_and_port!r}")
    address = ipaddress.IPv6Address(original.hostname or "")
    port = original.port
    return f"{userinfo.lower()}{at}[{address.compressed}]" + (f":{port}" if port is not None else ""), port


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    result = "/".join(out)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result


def registrable_host(host: str) -> str:
    """Approximate registrable domain: the last two labels (three under a two-letter
    second-level such as co.uk). Used only to decide whether to trust a page's canonical link."""
    labels = host.lower().strip(".").split(".")
    if (
        len(labels) >= 3
        and len(labels[-1]) == 2
        and labels[-2] in {"co", "com", "org", "net", "ac", "gov", "edu"}
    ):
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def trusted_canonical(page_url: str | None, final_url: str) -> str | None:
    """A page's ``<link rel=canonical>`` is honoured when it stays on the same site: a hostile
    page must not be able to claim another outlet's article as its own."""
    canonical = canonicalize_url(page_url)
    if canonical is None:
        return None
    a = urlsplit(canonical).hostname or ""
    b = urlsplit(final_url).hostname or ""
    return canonical if registrable_host(a) == registrable_host(b) else None


_WORD = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """Case, Unicode form, punctuation and whitespace removed: what stays is the words."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def content_hash(text: str | None) -> str | None:
    if not text:
        return None
    normalized = normalize_text(text)
    if not normalized:
        return None
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def article_id_for(url_key: str, version: int = 1) -> str:
    """Version 1 of an article is the hash of its URL key (the id it always had); a later version
    hashes the key with its number, so every version has an id of its own."""
    if version == 1:
        return hashlib.sha256(url_key.encode("utf-8")).hexdigest()[:20]
    return hashlib.sha256(f"{url_key}\nversion {version}".encode()).hexdigest()[:20]


def entry_key_for(feed_url: str, identity: str) -> str:
    return hashlib.sha256(f"{feed_url}\n{identity}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class DedupCandidate:
    article_id: str
    canonical_url: str | None
    content_hash: str | None
    article_key: str | None = None  # the article's version-1 id when this is a later version


@dataclass(frozen=True)
class KnownKey:
    """A stored article carrying a dedup key: the original it belongs to and its own article key
    (so that a new version is never taken for a copy of its own earlier versions)."""

    original: str  # coalesce(duplicate_of, article_id) of the stored row
    article_key: str  # the stored row's article_key


@dataclass(frozen=True)
class DedupDecision:
    article_id: str
    duplicate_of: str | None
    reason: str | None  # "canonical_url" | "content_hash" | None for an original


Known = Mapping[str, "str | Sequence[KnownKey]"]


def _known_rows(value: str | Sequence[KnownKey]) -> list[KnownKey]:
    return [KnownKey(value, value)] if isinstance(value, str) else list(value)


def decide_duplicates(
    candidates: Iterable[DedupCandidate],
    known_canonical: Known,
    known_hash: Known,
    original_keys: Mapping[str, str] | None = None,
) -> list[DedupDecision]:
    """Mark each candidate original or duplicate, in the given order.

    ``known_*`` map keys already in the warehouse to the original article they belong to: either
    the original's id, or the stored rows carrying the key in the order they were stored
    (:class:`KnownKey`). Within the batch, the first candidate with a key is the original for the
    ones after it.

    A later version of an article (``article_key`` set) is compared with every other article, not
    with its own versions: the stored rows of its own article are passed over, and an original
    that is one of its own versions (``original_keys``: original id -> its article key) makes it
    no copy.
    """
    by_canonical = {k: _known_rows(v) for k, v in known_canonical.items()}
    by_hash = {k: _known_rows(v) for k, v in known_hash.items()}
    key_of = dict(original_keys or {})
    decisions: list[DedupDecision] = []
    for c in candidates:
        own = c.article_key or c.article_id
        key_of.setdefault(c.article_id, own)
        original: str | None = None
        reason: str | None = None
        if c.canonical_url and (found := _copied(by_canonical.get(c.canonical_url, ()), own, key_of)):
            original, reason = found, "canonical_url"
        elif c.content_hash and (found := _copied(by_hash.get(c.content_hash, ()), own, key_of)):
            original, reason = found, "content_hash"
        root = KnownKey(original or c.article_id, own)
        if c.canonical_url:
            by_canonical.setdefault(c.canonical_url, []).append(root)
        if c.content_hash:
            by_hash.setdefault(c.content_hash, []).append(root)
        decisions.append(DedupDecision(c.article_id, original, reason))
    return decisions


def _copied(rows: Iterable[KnownKey], own: str, key_of: Mapping[str, str]) -> str | None:
    """The original that the first other article carrying the key belongs to, unless that
    original is one of the candidate's own versions."""
    for row in rows:
        if row.article_key == own:
            continue
        return None if key_of.get(row.original, row.original) == own else row.original
    return None


# --------------------------------------------------------------------------- before fetching


@dataclass(frozen=True)
class PlannedEntry:
    entry_key: str
    feed_url: str
    entry: FeedEntry
    link_key: str | None


@dataclass(frozen=True)
class PageJob:
    """One page to fetch, and every new entry (from any feed) that links to it."""

    article_id: str  # the article's version-1 id (its key): hash of url_key
    url: str  # the link exactly as the first entry gave it
    url_key: str
    entries: tuple[PlannedEntry, ...]  # new entries: inserted into `entries`
    # Entries already stored whose date moved (or, with backfill --refetch, every one seen again):
    # their page is fetched again and their stored row brought up to date.
    refreshed: tuple[PlannedEntry, ...] = ()
    # The URL may be stored already and is fetched anyway: a changed text is a new version.
    refetch: bool = False
    # When the source says the page last changed (a sitemap's <lastmod>): a stored URL fetched
    # before that is fetched again by a backfill.
    changed_at: datetime | None = None

    @property
    def lead_entry(self) -> PlannedEntry | None:
        """The entry the article row names (feed_url, entry_key, guid; its title wins)."""
        return (self.entries or self.refreshed or (None,))[0]


@dataclass(frozen=True)
class EntryPlan:
    pages: list[PageJob]
    known: list[tuple[PlannedEntry, str]]  # entries whose link is already stored -> that article
    no_link: list[PlannedEntry]
    skipped_over_limit: int  # new entries left for the next run (max_entries_per_feed)
    feeds_over_limit: frozenset[str] = frozenset()  # the feeds those entries belong to


def keyed_entries(feeds: Iterable[tuple[str, Iterable[FeedEntry]]]) -> list[PlannedEntry]:
    """Every entry of the parsed feeds with its entry key and the canonical form of its link."""
    planned: list[PlannedEntry] = []
    for feed_url, entries in feeds:
        seen_here: set[str] = set()
        for entry in entries:
            key = entry_key_for(feed_url, entry.identity)
            if key in seen_here:  # a feed listing one GUID twice
                continue
            seen_here.add(key)
            planned.append(PlannedEntry(key, feed_url, entry, canonicalize_url(entry.link)))
    return planned


def plan_entries(
    candidates: list[PlannedEntry],
    seen_entry_keys: set[str],
    known_urls: Mapping[str, str],
    max_per_feed: int,
    *,
    stored_dates: Mapping[str, datetime | None] | None = None,
    refetch: bool = False,
) -> EntryPlan:
    """Which entries need a page fetched: never one already stored, never one twice.

    Except to see whether it changed: an entry already seen whose date (``updated``, else
    ``published``) is later than the one stored (``stored_dates``: entry_key -> the stored
    date) has its page fetched again, and so, with ``refetch`` (``backfill --refetch``), has
    every entry seen before and every link already stored. Those count against ``max_per_feed``
    like new entries."""
    stored_dates = stored_dates or {}
    per_feed: dict[str, int] = {}
    pages: dict[str, list[PlannedEntry]] = {}
    refreshed: dict[str, list[PlannedEntry]] = {}
    first_url: dict[str, str] = {}
    known: list[tuple[PlannedEntry, str]] = []
    no_link: list[PlannedEntry] = []
    skipped = 0
    over_limit: set[str] = set()
    for p in candidates:
        seen = p.entry_key in seen_entry_keys
        moved = refetch or entry_moved(p.entry, stored_dates.get(p.entry_key))
        if seen and (p.link_key is None or not moved):
            continue
        if per_feed.get(p.feed_url, 0) >= max_per_feed:
            skipped += 1
            over_limit.add(p.feed_url)
            continue
        per_feed[p.feed_url] = per_feed.get(p.feed_url, 0) + 1
        if seen:
            refreshed.setdefault(p.link_key, []).append(p)
            first_url.setdefault(p.link_key, p.entry.link or p.link_key)
        elif p.link_key is None:
            no_link.append(p)
        elif p.link_key in known_urls and not refetch:
            known.append((p, known_urls[p.link_key]))
        else:
            pages.setdefault(p.link_key, []).append(p)
            first_url.setdefault(p.link_key, p.entry.link or p.link_key)
    jobs = [
        PageJob(
            article_id=article_id_for(key),
            url=first_url[key],
            url_key=key,
            entries=tuple(pages.get(key, ())),
            refreshed=tuple(refreshed.get(key, ())),
            refetch=key in refreshed or key in known_urls,
        )
        for key in dict.fromkeys([*pages, *refreshed])
    ]
    return EntryPlan(
        pages=jobs,
        known=known,
        no_link=no_link,
        skipped_over_limit=skipped,
        feeds_over_limit=frozenset(over_limit),
    )


def entry_date(entry: FeedEntry) -> datetime | None:
    """When the feed says the entry last changed."""
    return entry.updated_at or entry.published_at


def entry_moved(entry: FeedEntry, stored: datetime | None) -> bool:
    """The entry's date is later than the one stored with it: its page may have changed. An entry
    without a date, or stored without one, never moves (nothing says it changed)."""
    now = entry_date(entry)
    return now is not None and stored is not None and now > stored
