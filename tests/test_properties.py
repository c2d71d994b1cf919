"""Property-based tests (hypothesis) of what the parsers promise on hostile input.

The promises themselves are the checks in ``fuzz/targets.py``, shared with the fuzzer
(``python fuzz/run.py``); here hypothesis feeds them structured input: mutated golden feeds,
XML with random DTDs and entities, UTF-16/32 with a BOM, JSON Feed with wrong types, URLs that
differ only in what canonicalisation must ignore, arbitrary charsets and small HTML pages.

Examples are derandomized (the same inputs on every run, no example database) and few, to keep the
suite fast; ``NEWSFLOW_PROPERTY_SCALE=50`` multiplies them for a long, fuzz-style run.
"""

from __future__ import annotations

import codecs
import encodings
import gzip
import json
import os
import pkgutil
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fuzz.targets import (
    FEED_CONTENT_TYPES,
    check_canonical_url,
    check_decode,
    check_extract,
    check_feed,
    check_iso_datetime,
    check_opml,
    check_robots,
    check_robots_url,
    check_sitemap,
    feed_strings,
)
from tasks.dedup import TRACKING_PARAMS, TRACKING_PREFIXES, canonicalize_url
from tasks.feeds import FeedSpec
from tasks.fetch import FetchResult
from tasks.opml import read_opml, write_opml
from tasks.parse import parse_feed_results, parse_iso_datetime

GOLDEN = Path(__file__).parent / "golden"
FEED_SEEDS = tuple(
    p.read_bytes() for p in sorted((GOLDEN / "feeds").iterdir()) if not p.name.endswith(".expected.json")
)
OPML_SEEDS = tuple(p.read_bytes() for p in sorted((GOLDEN / "opml").iterdir()))
SITEMAP_SEEDS = tuple(
    p.read_bytes() for p in sorted((Path(__file__).parents[1] / "fuzz" / "seeds" / "sitemap").iterdir())
)
SCALE = max(1, int(os.environ.get("NEWSFLOW_PROPERTY_SCALE", "1")))


def examples(n: int):
    return settings(
        max_examples=n * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- strategies

HOSTILE_STRINGS = (
    "\ud800",
    "a\udfffb",
    "\x00",
    "\x00\x01\x1b",
    "javascript:alert(1)",
    "mailto:a@b.example",
    "data:text/html,<b>x</b>",
    "//cdn.example/a.mp3",
    "/relative?utm_source=x#f",
    "http://[::1",
    "http://a.example:99999/",
    "9" * 30,
    "\u202e\ufeff",
    "&lt;&amp;",
)
hostile_text = st.text(max_size=24) | st.sampled_from(HOSTILE_STRINGS)


@st.composite
def mutated(draw, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few random edits: inserted bytes, deleted runs, repeated runs, flipped bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("insert", "delete", "repeat", "flip")))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(_TOKENS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "repeat" and data:
            chunk = bytes(data[pos : pos + draw(st.integers(1, 32))])
            data[pos:pos] = chunk * draw(st.integers(1, 8))
        elif op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


_TOKENS = (
    b"<!DOCTYPE x [",
    b'<!ENTITY e "eeee">',
    b"&e;",
    b"&#55296;",
    b"]]>",
    b"<![CDATA[",
    b"\xff\xfe",
    b"\x00",
    b"\xed\xa0\x80",
    b"<item>",
    b"<entry>",
    b"<link>",
    b'href="',
    b"&amp;",
)


# --------------------------------------------------------------------------- feeds


@examples(150)
@given(body=st.binary(max_size=2048), content_type=st.sampled_from(FEED_CONTENT_TYPES))
def test_parse_feed_on_arbitrary_bytes(body: bytes, content_type: str | None):
    check_feed(body, content_type)


@examples(120)
@given(body=mutated(FEED_SEEDS), content_type=st.sampled_from(FEED_CONTENT_TYPES))
def test_parse_feed_on_mutated_golden_feeds(body: bytes, content_type: str | None):
    check_feed(body, content_type)


MARKER = "LAUGH"


@st.composite
def xml_with_dtd(draw) -> bytes:
    """An RSS document behind a DOCTYPE of nested entity declarations (billion laughs, external
    and parameter entities), sometimes hidden behind decoys that re-form a declaration."""
    count = draw(st.integers(1, 6))
    names = [f"e{n}" for n in range(count)]
    declarations = []
    for n, name in enumerate(names):
        if n == 0:
            value = MARKER * draw(st.integers(1, 4))
        else:
            refs = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=10))
            value = "".join(f"&{names[r]};" for r in refs)
        kind = draw(st.sampled_from(("internal", "internal", "system", "public", "parameter")))
        if kind == "internal":
            declarations.append(f'<!ENTITY {name} "{value}">')
        elif kind == "system":
            declarations.append(f'<!ENTITY {name} SYSTEM "file:///etc/passwd">')
        elif kind == "public":
            declarations.append(f'<!ENTITY {name} PUBLIC "-//x//y" "http://127.0.0.1:1/dtd">')
        else:
            declarations.append(f'<!ENTITY % {name} "{value}"> %{name};')
    root = draw(st.sampled_from(("rss", "feed", "x")))
    doctype = f"<!DOCTYPE {root} [{''.join(declarations)}]>"
    doctype = draw(
        st.sampled_from(
            (
                doctype,
                f'<!DOCTYPE {root} SYSTEM "http://127.0.0.1:1/x.dtd">' + doctype,
                doctype.replace("<!DOCTYPE", "<!DOC<!DOCTYPE y>TYPE", 1),
                doctype.replace("<!ENTITY", "<!ENT<!ENTITY z 'q'>ITY"),
                f"<!-- {doctype} -->{doctype}",
            )
        )
    )
    refs = "".join(f"&{draw(st.sampled_from(names))};" for _ in range(draw(st.integers(1, 12))))
    return (
        f'<?xml version="1.0"?>{doctype}<rss version="2.0"><channel><title>{refs}</title>'
        f"<item><title>{refs}</title><link>/a/{refs}</link><description>{refs}</description>"
        f"<guid>{refs}</guid></item></channel></rss>"
    ).encode()


@examples(120)
@given(body=xml_with_dtd())
def test_entities_are_never_expanded(body: bytes):
    parsed = check_feed(body, "application/rss+xml")
    if parsed is None:
        return
    in_input = body.decode().count(MARKER)
    in_output = sum(text.count(MARKER) for _where, text in feed_strings(parsed))
    assert in_output <= in_input


TITLE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="<>&"),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip())
WIDE_ENCODINGS = {
    "utf-16-le": codecs.BOM_UTF16_LE,
    "utf-16-be": codecs.BOM_UTF16_BE,
    "utf-32-le": codecs.BOM_UTF32_LE,
    "utf-32-be": codecs.BOM_UTF32_BE,
    "utf-8": codecs.BOM_UTF8,
}


@examples(100)
@given(
    title=TITLE_TEXT,
    encoding=st.sampled_from(sorted(WIDE_ENCODINGS)),
    declared=st.sampled_from(("same", "none", "UTF-8", "bogus")),
    content_type=st.sampled_from((None, "application/rss+xml", "text/xml; charset=utf-8")),
)
@example(title="Å", encoding="utf-16-be", declared="none", content_type=None)  # read as "Ã…"
def test_feeds_with_a_bom_decode_by_it(title: str, encoding: str, declared: str, content_type: str | None):
    assume(not _looks_double_encoded(title))
    name = {"same": encoding.split("-le")[0].split("-be")[0].upper(), "UTF-8": "UTF-8", "bogus": "x-nope"}
    declaration = "" if declared == "none" else f'<?xml version="1.0" encoding="{name[declared]}"?>'
    text = (
        f'{declaration}<rss version="2.0"><channel><title>feed</title>'
        f"<item><title>{title}</title><link>https://news.example/a</link></item></channel></rss>"
    )
    body = WIDE_ENCODINGS[encoding] + text.encode(encoding)
    parsed = check_feed(body, content_type)
    # A BOM names the encoding, whatever the declaration or the header say (XML 1.0, appendix F).
    if declared in ("same", "none") and content_type is None:
        assert parsed is not None and parsed.entries[0].title == title.strip()


def _looks_double_encoded(text: str) -> bool:
    """feedparser "repairs" UTF-8 text whose Latin-1 bytes are UTF-8 ("Ã©" -> "é"), on purpose."""
    try:
        text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return False
    return not text.isascii()


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ITEM_KEYS = (
    "id",
    "url",
    "external_url",
    "title",
    "summary",
    "content_text",
    "content_html",
    "date_published",
    "date_modified",
    "tags",
    "authors",
    "author",
    "attachments",
)
json_items = st.dictionaries(st.sampled_from(ITEM_KEYS), json_values, max_size=8) | json_values
json_feeds = st.fixed_dictionaries(
    {
        "version": st.sampled_from(
            (
                "https://jsonfeed.org/version/1.1",
                "https://jsonfeed.org/version/1",
                "https://jsonfeed.org/version/\ud800\x00",
                "https://jsonfeed.org/version/" + "9" * 40,
                1.1,
                None,
            )
        ),
        "items": st.lists(json_items, max_size=6) | json_values,
    },
    optional={
        "title": json_values,
        "home_page_url": json_values,
        "language": json_values,
        "authors": st.lists(st.fixed_dictionaries({"name": json_values}) | json_values, max_size=3),
        "author": json_values,
    },
)


@examples(100)
@given(doc=json_feeds, content_type=st.sampled_from(("application/feed+json", "application/json", None)))
def test_json_feed_with_wrong_types(doc: dict, content_type: str | None):
    check_feed(json.dumps(doc).encode(), content_type)


@examples(40)
@given(
    bodies=st.lists(st.binary(max_size=512) | mutated(FEED_SEEDS) | st.none(), min_size=1, max_size=4),
    statuses=st.lists(st.sampled_from((200, 304, None)), min_size=4, max_size=4),
)
def test_parse_feed_results_records_every_failure(bodies: list[bytes | None], statuses: list[int | None]):
    fetched = datetime(2024, 5, 1, tzinfo=UTC)
    results = [
        FetchResult(
            url=f"https://feeds.example/{n}.xml",
            final_url=f"https://feeds.example/{n}.xml",
            status=statuses[n],
            headers=(),
            body=body,
            fetched_at=fetched,
            elapsed_ms=1,
            error_class="timeout" if statuses[n] is None else None,
        )
        for n, body in enumerate(bodies)
    ]
    outcomes = parse_feed_results(results, {})
    assert [o.feed_url for o in outcomes] == [r.url for r in results]
    for outcome in outcomes:
        assert outcome.failed or outcome.unchanged or outcome.parsed is not None
        assert not outcome.failed or outcome.error_class in ("timeout", "not_a_feed", "parse_error")


@examples(300)
@given(
    text=st.text(max_size=64) | st.sampled_from(("2024-05-01T10:00:00Z", "Wed, 01 May 2024 10:00:00 +0200"))
)
def test_dates_are_aware_or_none(text: str):
    check_iso_datetime(text)


aware_datetimes = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)


@examples(150)
@given(moment=aware_datetimes)
def test_iso_dates_round_trip(moment: datetime):
    assert parse_iso_datetime(moment.isoformat()) == moment


# --------------------------------------------------------------------------- URLs


@examples(400)
@given(url=st.text(max_size=80) | st.text(max_size=60).map(lambda t: "http://" + t))
def test_canonicalize_url_on_arbitrary_text(url: str):
    check_canonical_url(url)
    check_robots_url(url)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTS = (
    st.lists(LABEL, min_size=1, max_size=3).map(lambda labels: ".".join(labels) + ".example")
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda address: f"[{address}]")
)
SEGMENT = st.text(alphabet="abcXYZ019-_~.%é ", max_size=8).filter(lambda s: s not in (".", ".."))
PARAM_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda k: k not in TRACKING_PARAMS and not k.startswith(TRACKING_PREFIXES)
)
PARAM_VALUE = st.text(alphabet="abcXYZ0129 +&=/é%", max_size=8)
TRACKING_KEY = st.sampled_from(sorted(TRACKING_PARAMS)) | st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(TRACKING_PREFIXES),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=6),
)


@st.composite
def equivalent_urls(draw) -> tuple[str, str]:
    """Two spellings of one URL: parameter order, tracking parameters, fragment, default port,
    case of scheme and host."""
    scheme = draw(st.sampled_from(("http", "https")))
    host = draw(HOSTS)
    path = "/" + "/".join(quote(s, safe="%~") for s in draw(st.lists(SEGMENT, max_size=4)))
    params = list(draw(st.dictionaries(PARAM_KEY, PARAM_VALUE, max_size=4)).items())
    plain = f"{scheme}://{host}{path}" + (f"?{urlencode(params)}" if params else "")

    shuffled = draw(st.permutations(params))
    tracking = draw(st.lists(st.tuples(TRACKING_KEY, PARAM_VALUE), max_size=3))
    mixed = list(shuffled)
    for item in tracking:
        mixed.insert(draw(st.integers(0, len(mixed))), item)
    port = draw(st.sampled_from(("", ":80" if scheme == "http" else ":443")))
    spelled_scheme = draw(st.sampled_from((scheme, scheme.upper(), scheme.capitalize())))
    spelled_host = draw(st.sampled_from((host, host.upper())))
    fragment = draw(st.sampled_from(("", "#", "#top", "#a?b=c")))
    other = f"{spelled_scheme}://{spelled_host}{port}{path}" + (f"?{urlencode(mixed)}" if mixed else "")
    return plain, other + fragment


@examples(200)
@given(urls=equivalent_urls())
@example(urls=("http://[::1]/a", "HTTP://[::1]:80/a#f"))
@example(urls=("http://[2620:4f:8000:0:1:0:1:0]/", "http://[2620:4f:8000:0:1:0:1:0]:80/"))  # ":80" in 8000
def test_canonical_url_ignores_what_does_not_name_the_article(urls: tuple[str, str]):
    plain, other = urls
    canonical = check_canonical_url(plain)
    assert canonical is not None, plain
    assert check_canonical_url(other) == canonical, (plain, other)


@examples(150)
@given(
    host=HOSTS,
    key=PARAM_KEY,
    values=st.lists(st.text(alphabet="abc0129é/+ ", max_size=6), min_size=2, max_size=2, unique=True),
)
def test_canonical_url_keeps_what_names_the_article(host: str, key: str, values: list[str]):
    first, second = (canonicalize_url(f"https://{host}/story.php?{urlencode({key: v})}") for v in values)
    assert first is not None and first != second
    assert canonicalize_url(f"https://{host}/Story") != canonicalize_url(f"https://{host}/story")
    assert canonicalize_url(f"https://{host}/story.php?12345") != canonicalize_url(
        f"https://{host}/story.php?12346"
    )


# --------------------------------------------------------------------------- extraction input

CODEC_NAMES = sorted(
    {m.name for m in pkgutil.iter_modules(encodings.__path__)}
    | set(encodings.aliases.aliases)
    | {"undefined"}
)
CONTENT_TYPES = (
    st.builds(lambda name: f"text/html; charset={name}", st.sampled_from(CODEC_NAMES))
    | st.builds(lambda name: f'text/html;charset="{name}"', st.text(max_size=12))
    | st.text(max_size=40)
    | st.none()
)


@examples(400)
@given(body=st.binary(max_size=256), content_type=CONTENT_TYPES)
@example(body=b"x", content_type="text/html; charset=undefined")
@example(body=b"a..b", content_type="text/html; charset=punycode")
def test_decoding_never_raises(body: bytes, content_type: str | None):
    check_decode(body, content_type)


TAGS = ("p", "div", "article", "main", "h1", "span", "a", "script", "style", "table", "td", "li", "nav")


@st.composite
def small_html(draw) -> bytes:
    def element(depth: int) -> str:
        tag = draw(st.sampled_from(TAGS))
        children = [element(depth + 1) for _ in range(draw(st.integers(0, 3)))] if depth < 3 else []
        words = draw(st.text(max_size=60) | st.sampled_from(("harbour council budget vote " * 8,)))
        attrs = draw(st.sampled_from(("", ' class="content"', ' href="javascript:x"', ' lang="xx"')))
        return f"<{tag}{attrs}>{words}{''.join(children)}</{tag}>"

    head = draw(
        st.sampled_from(
            (
                "",
                '<meta charset="utf-8">',
                '<link rel="canonical" href="http://[::1">',
                '<meta property="og:url" content="javascript:alert(1)">',
                "<title>\x00</title>",
            )
        )
    )
    html = f"<html><head>{head}</head><body>{element(0)}</body></html>"
    return html.encode(draw(st.sampled_from(("utf-8", "utf-16", "latin-1"))), errors="replace")


@examples(20)
@given(body=small_html() | st.binary(max_size=512), content_type=CONTENT_TYPES)
def test_extraction_returns_text_or_an_error(body: bytes, content_type: str | None):
    check_extract(body, content_type)


# --------------------------------------------------------------------------- OPML, sitemaps, robots


@examples(150)
@given(data=st.binary(max_size=1024) | mutated(OPML_SEEDS))
def test_read_opml_raises_only_opml_error(data: bytes):
    check_opml(data)


SAFE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp", "Zs")) | st.just(" "),
    min_size=1,
    max_size=20,
).map(str.strip)
specs = st.builds(
    FeedSpec,
    url=st.builds(lambda host, path: f"https://{host}/{path}", HOSTS, SEGMENT.map(quote)),
    name=st.none() | SAFE_TEXT.filter(bool),
    tags=st.lists(SAFE_TEXT.filter(lambda t: t and not re.search(r"[,/]", t)), max_size=3, unique=True).map(
        tuple
    ),
)


@examples(60)
@given(feeds=st.lists(specs, max_size=5, unique_by=lambda spec: spec.url))
def test_opml_round_trip(feeds: list[FeedSpec]):
    """What write_opml writes, read_opml reads back (one outline per URL: listparser merges)."""
    back = read_opml(write_opml(feeds))
    assert [(s.url, s.name, s.tags) for s in back] == [(s.url, s.name, s.tags) for s in feeds]


@st.composite
def urlsets(draw) -> bytes:
    locs = draw(st.lists(hostile_text | HOSTS.map(lambda h: f"https://{h}/a"), max_size=5))
    dates = draw(
        st.lists(hostile_text | st.sampled_from(("2024-05-01", "2024-05-01T10:00:00+02:00")), max_size=5)
    )
    rows = "".join(
        f"<url><loc>{_xml_escape(loc)}</loc><lastmod>{_xml_escape(date)}</lastmod></url>"
        for loc, date in zip(locs, dates + [""] * len(locs), strict=False)
    )
    root = draw(st.sampled_from(("urlset", "sitemapindex", "urlset:", "x:urlset")))
    return f'<{root} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{rows}</{root}>'.encode(
        "utf-8", "surrogatepass"
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


@examples(150)
@given(data=st.binary(max_size=1024) | mutated(SITEMAP_SEEDS) | urlsets() | urlsets().map(gzip.compress))
def test_parse_sitemap_raises_only_sitemap_error(data: bytes):
    check_sitemap(data)


ROBOTS_LINES = st.lists(
    st.builds(
        lambda directive, value: f"{directive}: {value}",
        st.sampled_from(("User-agent", "Disallow", "Allow", "Crawl-delay", "Sitemap", "Request-rate", "x")),
        hostile_text | st.sampled_from(("*", "newsflow", "/*.pdf$", "/private/", "-1", "1e400", "nan")),
    )
    | hostile_text,
    max_size=12,
).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))


@examples(150)
@given(data=st.binary(max_size=1024) | ROBOTS_LINES)
def test_robots_parser_never_raises(data: bytes):
    check_robots(data)
