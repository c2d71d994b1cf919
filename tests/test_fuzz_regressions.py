"""Inputs that once broke a parser, run through the fuzz target that found them.

Each file in ``tests/golden/fuzz-regressions/<target>/`` is one input of that target in
``fuzz/targets.py`` (``crash-<sha1>``: found by ``python fuzz/run.py``; other names: found by the
property tests or by hand, named after what they hold). The tests below them pin, end to end, what
those inputs broke further down the pipeline.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pyarrow as pa
import pytest

from fuzz.targets import TARGETS, check_feed
from newsflow.loopback import Route
from tasks.dedup import canonicalize_url, keyed_entries
from tasks.extract import ExtractJob, extract_article
from tasks.sources import walk_feed_archive

REGRESSIONS = Path(__file__).parent / "golden" / "fuzz-regressions"
FEED_URL = "https://feeds.example/feed.json"


def _cases():
    for target_dir in sorted(p for p in REGRESSIONS.iterdir() if p.is_dir()):
        for path in sorted(target_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield pytest.param(target_dir.name, path, id=f"{target_dir.name}/{path.name}")


def test_every_regression_directory_names_a_target():
    assert {p.name for p in REGRESSIONS.iterdir() if p.is_dir()} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), list(_cases()))
def test_fuzz_regression(target: str, path: Path):
    TARGETS[target](path.read_bytes())


def test_json_feed_lone_surrogates_reach_the_warehouse_as_replacement_characters():
    """ "\\ud800" in a JSON Feed used to crash the poll when keying entries (UTF-8 of the identity)."""
    doc = {
        "version": "https://jsonfeed.org/version/1.1",
        "items": [{"id": "a\ud800b", "url": "https://news.example/\udc00", "title": "t\udfff"}],
    }
    parsed = check_feed(json.dumps(doc).encode(), "application/feed+json", FEED_URL)
    assert parsed is not None
    (entry,) = parsed.entries
    assert (entry.guid, entry.title) == ("a\ufffdb", "t\ufffd")
    (planned,) = keyed_entries([(FEED_URL, parsed.entries)])
    assert planned.link_key == canonicalize_url("https://news.example/\ufffd") is not None
    pa.array([entry.guid, entry.title, entry.link])  # Parquet takes them


def test_entry_links_are_http_urls_or_none():
    rss = (
        b'<rss version="2.0"><channel><item><link>javascript:alert(1)</link></item>'
        b"<item><link>mailto:a@news.example</link></item><item><link>data:text/html,x</link></item>"
        b'<item><link>//cdn.example/a</link><enclosure url="ftp://x.example/a.mp3" length="12"/></item>'
        b"</channel></rss>"
    )
    parsed = check_feed(rss, None, "https://news.example/feed")
    assert parsed is not None
    assert [e.link for e in parsed.entries] == [None, None, None, "https://cdn.example/a"]
    assert parsed.entries[3].enclosures == ()


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("with_bom", [True, False])
@pytest.mark.parametrize("header", [None, "text/xml; charset=utf-16", "application/rss+xml"])
def test_utf16_and_utf32_feeds_keep_every_character(encoding: str, with_bom: bool, header: str | None):
    """NUL bytes used to be removed before decoding: "Ā" (U+0100, bytes 01 00) came back "\\x01"."""
    title = "Āĉ Ā – Ωmega 中文 é"
    declared = encoding[:6].upper()
    text = (
        f'<?xml version="1.0" encoding="{declared}"?><rss version="2.0"><channel><title>{title}</title>'
        f"<item><title>{title}</title><link>https://news.example/a</link></item></channel></rss>"
    )
    bom = {
        "utf-16-le": codecs.BOM_UTF16_LE,
        "utf-16-be": codecs.BOM_UTF16_BE,
        "utf-32-le": codecs.BOM_UTF32_LE,
        "utf-32-be": codecs.BOM_UTF32_BE,
    }[encoding]
    body = (bom if with_bom else b"") + text.encode(encoding)
    parsed = check_feed(body, header)
    assert parsed is not None
    assert parsed.title == title and parsed.entries[0].title == title


def test_page_with_an_undecodable_http_charset_is_still_extracted():
    body = b"<html><body><article><p>" + b"The harbour council voted on the budget today. " * 8
    body += b"</p></article></body></html>"
    for charset in ("undefined", "punycode", "rot13", "no-such-codec"):
        result = extract_article(
            ExtractJob("k", "https://news.example/a", body, f"text/html; charset={charset}")
        )
        assert result.error is None and "harbour council" in (result.text or ""), charset


def test_feed_archive_ends_at_a_next_link_that_is_no_url(settings, site):
    """rel="next" href="http://[::1" used to raise ValueError out of the backfill's archive walk."""
    site.routes["/feed.xml"] = Route(
        body=(
            b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
            b'<link rel="next" href="http://[::1"/><entry><id>urn:1</id><title>one</title>'
            b'<link href="/a"/></entry></feed>'
        ),
        content_type="application/atom+xml",
    )
    walk = walk_feed_archive(site.url("/feed.xml"), 5, settings)
    assert walk.pages_fetched == 1 and len(walk.entries) == 1 and walk.failures == []
