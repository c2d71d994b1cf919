"""XML attacks on the feed parser (and the sitemap / archive-page reader): external entities and
DTDs, entity expansion (nested "billion laughs" and flat "quadratic"), deep nesting, each hidden
in every encoding feedparser reads (UTF-16/32 with and without BOM, UTF-7, EBCDIC, ISO-2022-JP,
a charset given only by the HTTP header).

External references point at a loopback "DTD server" whose hits must stay 0; a control parses
the same document with an unsafe parser and sees the hits, so the zero means something. Entity
expansion must leave no field longer than a small multiple of the document.
"""

from __future__ import annotations

import io
import time
import xml.sax
import xml.sax.handler

import pytest
from builders import RSS, make_story, page_route, rss_feed
from hostile_kit import fetch_log, measured, poll_once, query, run_child

from newsflow.loopback import LoopbackSite, Route
from tasks.parse import FeedParseError, ParsedFeed, parse_feed
from tasks.sources import SitemapError, next_page_links, parse_sitemap

LEAK = "LEAKED-BY-AN-EXTERNAL-ENTITY"


@pytest.fixture(scope="module")
def dtd_server():
    with LoopbackSite("127.0.0.3") as s:
        s.routes["/evil.dtd"] = Route(
            body=f'<!ENTITY leak "{LEAK}">'.encode(), content_type="application/xml-dtd"
        )
        s.routes["/p.dtd"] = Route(
            body=f'<!ENTITY leak "{LEAK}">'.encode(), content_type="application/xml-dtd"
        )
        s.routes["/xxe"] = Route(body=LEAK.encode(), content_type="text/plain")
        s.routes["/xi"] = Route(body=LEAK.encode(), content_type="text/plain")
        s.routes["/style.xsl"] = Route(body=b"<xsl/>", content_type="text/xsl")
        yield s


def item(title: str = "an entry", description: str = "text") -> str:
    return f"<item><title>{title}</title><description>{description}</description><link>https://x.example/a</link></item>"


def external_documents(base: str) -> dict[str, str]:
    """Documents (as text, before encoding) that would make a careless parser fetch ``base``."""
    rss = '<rss version="2.0"><channel><title>t &leak;</title>{items}</channel></rss>'
    return {
        "external-dtd": f'<!DOCTYPE rss SYSTEM "{base}/evil.dtd">\n' + rss.format(items=item("&leak;")),
        "external-entity": f'<!DOCTYPE rss [\n<!ENTITY leak SYSTEM "{base}/xxe">\n]>\n'
        + rss.format(items=item("&leak;")),
        "parameter-entity": f'<!DOCTYPE rss [\n<!ENTITY % p SYSTEM "{base}/p.dtd">\n%p;\n]>\n'
        + rss.format(items=item("&leak;")),
        "xinclude": rss.replace(" &leak;", "").format(
            items=item(
                description=f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{base}/xi" parse="text"/>'
            )
        ),
        "stylesheet": f'<?xml-stylesheet type="text/xsl" href="{base}/style.xsl"?>\n'
        + rss.replace(" &leak;", "").format(items=item()),
    }


def encoded(doc: str, encoding: str) -> tuple[bytes, dict[str, str]]:
    """The document in one of the encodings feedparser reads, with the headers that go with it.
    The UTF-7, EBCDIC and ISO-2022-JP forms hide every '<!' from a byte-level search."""
    decl = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    if encoding == "utf-8-bom":
        return b"\xef\xbb\xbf" + ('<?xml version="1.0" encoding="utf-8"?>\n' + doc).encode(), {}
    if encoding in ("utf-16", "utf-32"):  # Python writes the BOM
        return (decl + doc).encode(encoding), {}
    if encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):  # no BOM
        return (decl + doc).encode(encoding), {}
    if encoding == "utf-7":
        return (decl + doc.replace("<!", "+ADw-!").replace("<?xml-", "+ADw-?xml-")).encode("ascii"), {}
    if encoding == "utf-7-by-http-header":
        body = doc.replace("<!", "+ADw-!").encode("ascii")
        return body, {"Content-Type": "application/xml; charset=utf-7"}
    if encoding == "cp037":
        return (decl + doc).encode("cp037"), {}
    if encoding == "iso-2022-jp":  # an empty shift to JIS X 0208 and back splits the keyword
        hidden = doc.replace("<!DOCTYPE", "<!DOC\x1b$B\x1b(BTYPE").replace("<!ENTITY", "<!ENT\x1b$B\x1b(BITY")
        return (decl + hidden).encode("latin-1"), {}
    return (decl + doc).encode(encoding), {}


ENCODINGS = [
    "utf-8",
    "utf-8-bom",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-7",
    "utf-7-by-http-header",
    "cp037",
    "iso-2022-jp",
]


def all_fields(parsed: ParsedFeed) -> list[str]:
    values = [parsed.title, parsed.site_url, parsed.language]
    for e in parsed.entries:
        values += [e.guid, e.link, e.title, e.summary, e.author, *e.categories]
    return [v for v in values if v]


def parse_or_error(body: bytes, headers: dict[str, str]) -> ParsedFeed | None:
    try:
        return parse_feed(body, "https://x.example/feed", headers)
    except FeedParseError as exc:
        assert exc.error_class in ("parse_error", "not_a_feed")
        return None


# --------------------------------------------------------------------------- external references


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_external_references_are_never_fetched_in_any_encoding(dtd_server, encoding):
    hits_before = sum(dtd_server.hits.values())
    for name, doc in external_documents(dtd_server.base_url).items():
        body, headers = encoded(doc, encoding)
        parsed = parse_or_error(body, headers)
        if parsed is not None:
            assert not [v for v in all_fields(parsed) if LEAK in v], name
    assert sum(dtd_server.hits.values()) == hits_before


def test_control_an_unsafe_parser_does_fetch_them(dtd_server):
    """The same documents through xml.sax with external entities on: the DTD server is hit.
    (So the zero above is the parser's doing, not a dead server or a wrong URL.)"""
    hits_before = sum(dtd_server.hits.values())
    docs = external_documents(dtd_server.base_url)
    for name in ("external-dtd", "external-entity", "parameter-entity"):
        parser = xml.sax.make_parser()
        parser.setFeature(xml.sax.handler.feature_external_ges, True)
        parser.setContentHandler(xml.sax.handler.ContentHandler())
        source = xml.sax.xmlreader.InputSource()
        source.setByteStream(io.BytesIO(docs[name].encode()))
        try:
            parser.parse(source)
        except xml.sax.SAXException:
            pass
    assert dtd_server.hits["/xxe"] >= 1 and sum(dtd_server.hits.values()) >= hits_before + 3


def test_sitemaps_and_archive_pages_never_fetch_external_references(dtd_server):
    base = dtd_server.base_url
    hits_before = sum(dtd_server.hits.values())
    sitemap = (
        f'<?xml version="1.0"?>\n<!DOCTYPE urlset [\n<!ENTITY leak SYSTEM "{base}/xxe">\n'
        f'<!ENTITY % p SYSTEM "{base}/p.dtd">\n%p;\n]>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        "<url><loc>https://x.example/&leak;</loc></url></urlset>"
    ).encode()
    try:
        parsed = parse_sitemap(sitemap, "https://x.example/sitemap.xml", 1 << 20)
    except SitemapError:
        parsed = None
    if parsed is not None:
        assert not [u for u in parsed.urls if LEAK in u.loc]
    archive = (
        f'<?xml version="1.0"?>\n<!DOCTYPE feed SYSTEM "{base}/evil.dtd">\n'
        '<feed xmlns="http://www.w3.org/2005/Atom"><link rel="next" href="https://x.example/&leak;"/></feed>'
    ).encode()
    assert not [link for link in next_page_links(archive) if LEAK in link]
    assert sum(dtd_server.hits.values()) == hits_before


# --------------------------------------------------------------------------- expansion


def quadratic(entity_chars: int, references: int) -> str:
    return (
        f'<!DOCTYPE rss [\n<!ENTITY a "{"A" * entity_chars}">\n]>\n'
        '<rss version="2.0"><channel><title>t &a;</title>'
        + item("x &a;", "&a;" * references)
        + "</channel></rss>"
    )


def billion_laughs(levels: int = 9) -> str:
    decls = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, levels + 1))
    return (
        f'<!DOCTYPE rss [\n<!ENTITY lol0 "lol">\n{decls}]>\n'
        f'<rss version="2.0"><channel><title>&lol{levels};</title>'
        + item(f"&lol{levels};", f"&lol{levels};&lol{levels};")
        + "</channel></rss>"
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("attack", ["quadratic", "billion-laughs"])
def test_entity_expansion_is_bounded_in_any_encoding(encoding, attack):
    """No field ends up longer than 4x the document (before the fix of this module's commit, a
    UTF-7, EBCDIC or ISO-2022-JP document kept its DTD and expanded 800-fold)."""
    doc = quadratic(4000, 2000) if attack == "quadratic" else billion_laughs()
    body, headers = encoded(doc, encoding)
    started = time.monotonic()
    parsed = parse_or_error(body, headers)
    assert time.monotonic() - started < 5
    if parsed is not None:
        longest = max(map(len, all_fields(parsed)))
        assert longest <= 4 * len(body), f"{longest} chars from {len(body)} bytes"


# --------------------------------------------------------------------------- nesting, encodings


def test_deep_nesting_is_parsed_in_bounded_time():
    """20 000 nested elements in an entry and around one (the cost is linear: about 30-60 us per
    element; a 15 MiB feed of elements is the cap, see the report in test_protocol)."""
    n = 20_000
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        + b"<x>" * n
        + b"<item><title>inside</title><description>"
        + b"<div>" * n
        + b"deep"
        + b"</div>" * n
        + b"</description><link>https://d.example/1</link></item>"
        + b"</x>" * n
        + b"</channel></rss>"
    )
    started = time.monotonic()
    parsed = parse_or_error(body, {})
    assert time.monotonic() - started < 10
    assert parsed is None or all(len(v) <= 4 * len(body) for v in all_fields(parsed))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "utf-8-bom"])
def test_wide_encodings_parse_to_the_right_text(encoding):
    """The DTD removal works on the decoded document, so NUL bytes are removed only where they
    are characters: UTF-16 and UTF-32 feeds read right (they used to come out as mojibake)."""
    doc = '<rss version="2.0"><channel><title>Café € 中文</title>' + item("Ünïcode – ok") + "</channel></rss>"
    body, headers = encoded(doc, encoding)
    parsed = parse_feed(body, "https://x.example/feed", headers)
    assert parsed.title == "Café € 中文"
    assert [e.title for e in parsed.entries] == ["Ünïcode – ok"]


# --------------------------------------------------------------------------- a poll, and memory


def test_poll_with_xml_attacks_completes_and_fetches_nothing_outside(
    prefect_api, newsflow_env, tmp_path, site, dtd_server
):
    hits_before = sum(dtd_server.hits.values())
    good = make_story(1, seed=63)
    site.routes["/good.html"] = page_route(good)
    site.routes["/good.xml"] = Route(
        body=rss_feed([(good, site.url("/good.html"), "good")]), content_type=RSS
    )
    feeds = [site.url("/good.xml")]
    attacks = {
        **external_documents(dtd_server.base_url),
        "quadratic": quadratic(4000, 2000),
        "laughs": billion_laughs(),
    }
    for name, doc in attacks.items():
        for encoding in ("utf-7", "cp037"):
            body, headers = encoded(doc, encoding)
            path = f"/{name}-{encoding}.xml"
            site.routes[path] = Route(body=body, content_type=headers.get("Content-Type", "application/xml"))
            feeds.append(site.url(path))

    poll_once(tmp_path, feeds, newsflow_env)

    logged = fetch_log(newsflow_env)
    assert set(logged) >= set(feeds)
    assert {logged[u][1] for u in feeds} <= {None, "parse_error", "not_a_feed"}
    assert logged[site.url("/good.xml")][1] is None
    assert query(newsflow_env, "SELECT url FROM articles") == [(site.url("/good.html"),)]
    longest = query(
        newsflow_env, "SELECT max(length(coalesce(title, '') || coalesce(summary, ''))) FROM entries"
    )[0][0]
    assert longest < 4 * max(len(d) for d in attacks.values())
    assert sum(dtd_server.hits.values()) == hits_before


@pytest.mark.parametrize("encoding", ["utf-8", "cp037"])
def test_a_large_expansion_attack_stays_small_in_memory(tmp_path, encoding):
    """A 1 MB entity referenced 10 000 times (10 GB if expanded) in a fresh process: the peak
    resident memory grows by a small multiple of the document, not by the expansion."""
    doc = quadratic(1_000_000, 10_000)
    body, headers = encoded(doc, encoding)
    path = tmp_path / "bomb.xml"
    path.write_bytes(body)
    report = run_child("parse", {"path": str(path), "url": "https://x.example/feed", "headers": headers})
    result = report.result
    measured("xml", f"1 MB entity x 10,000 ({encoding})", peak_mb=report.peak_growth_mb, seconds=report.elapsed_s,
             longest_field_over_document=result.get("longest_field", 0) / len(body))  # fmt: skip
    if "longest_field" in result:
        assert result["longest_field"] <= 4 * len(body)
    else:
        assert result["error_class"] in ("parse_error", "not_a_feed")
    assert report.peak_growth_mb < 64, report
    assert report.elapsed_s < 10


# --------------------------------------------------------------------------- parse time bound


def test_a_feed_too_costly_to_parse_is_given_up_at_its_bound(
    prefect_api, newsflow_env, tmp_path, monkeypatch, site
):
    """4 MiB of empty elements inside an entry: within the size cap, but about 20 s of
    feedparser (over a minute at the 15 MiB cap). With a 3 s bound the document is given up in
    its worker process (``parse_error``) while the run's other feed is parsed and its article
    loaded; without the bound the poll would sit in the parser for the whole 20 s."""
    monkeypatch.setenv("NEWSFLOW_FEED_PARSE_TIMEOUT", "3")
    costly = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>costly</title>'
        b"<item><title>x</title><link>https://c.example/1</link><description>"
        + b"<a/>" * 1_000_000
        + b"</description></item></channel></rss>"
    )
    site.routes["/costly.xml"] = Route(body=costly, content_type=RSS)
    story = make_story(1, seed=91)
    site.routes["/s.html"] = page_route(story)
    site.routes["/fine.xml"] = Route(body=rss_feed([(story, site.url("/s.html"), "s1")]), content_type=RSS)

    started = time.monotonic()
    summary = poll_once(tmp_path, [site.url("/costly.xml"), site.url("/fine.xml")], newsflow_env)
    took = time.monotonic() - started
    measured("xml", "4 MiB of empty elements, parse bound 3 s", seconds=took)
    log = fetch_log(newsflow_env)
    assert log[site.url("/costly.xml")][1] == "parse_error"
    assert "gave up parsing the feed after 3 s" in log[site.url("/costly.xml")][2]
    assert summary["feeds_failed"] == 1 and summary["pages_fetched"] == 1
    assert query(newsflow_env, "SELECT count(*) FROM articles WHERE text IS NOT NULL")[0][0] == 1
    # worker start-up (not counted in the bound) + 3 s + the worker killed and started again
    assert took < 15, took


def test_a_backfill_gives_up_a_feed_page_too_costly_to_parse(site, settings):
    """``backfill --feed`` walks the feed's archive pages with the same bound as a poll."""
    from tasks.sources import walk_feed_archive

    site.routes["/costly.xml"] = Route(
        body=b'<?xml version="1.0"?><rss version="2.0"><channel><title>costly</title><item><title>x</title>'
        b"<description>" + b"<a/>" * 500_000 + b"</description></item></channel></rss>",
        content_type=RSS,
    )
    started = time.monotonic()
    walk = walk_feed_archive(
        site.url("/costly.xml"), 3, settings.model_copy(update={"feed_parse_timeout": 1})
    )
    took = time.monotonic() - started
    measured("xml", "backfill: 2 MiB of empty elements, parse bound 1 s", seconds=took)
    assert walk.entries == [] and len(walk.failures) == 1
    url, error_class, message = walk.failures[0]
    assert error_class == "parse_error" and "gave up parsing the feed after 1 s" in message
    assert took < 10, took  # a worker's start, 1 s, its kill (the parse itself takes ~10 s)
