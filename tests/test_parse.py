"""Unit tests for tasks/parse.py: golden feeds, hostile XML, parse_feed_results."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.fetch import FetchResult
from tasks.parse import (
    FeedEntry,
    FeedParseError,
    ParsedFeed,
    body_hash,
    parse_feed,
    parse_feed_results,
    parse_iso_datetime,
)

GOLDEN = Path(__file__).parent / "golden" / "feeds"
FEED_BASE = "https://feeds.example/feeds/"


def _golden_cases():
    cases = []
    for feed in sorted(GOLDEN.iterdir()):
        if feed.name.endswith(".expected.json") or feed.name.startswith("."):
            continue
        expected_path = feed.with_name(feed.name.rsplit(".", 1)[0] + ".expected.json")
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        marks = []
        if expected.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=expected["xfail"]))
        cases.append(pytest.param(feed, expected, id=feed.name, marks=marks))
    return cases


GOLDEN_CASES = _golden_cases()


def _all_fields(parsed: ParsedFeed) -> list[str]:
    values: list[str] = [parsed.format, parsed.title or "", parsed.site_url or "", parsed.language or ""]
    for e in parsed.entries:
        values += [e.guid or "", e.link or "", e.title or "", e.summary or "", e.author or ""]
        values += list(e.categories)
        values += [x.url for x in e.enclosures]
    return values


def _entry_as_expected(e: FeedEntry) -> dict:
    return {
        "guid": e.guid,
        "link": e.link,
        "title": e.title,
        "published_at": e.published_at.isoformat() if e.published_at else None,
        "author": e.author,
        "categories": list(e.categories),
        "enclosures": [{"url": x.url, "type": x.type, "length": x.length} for x in e.enclosures],
    }


# --------------------------------------------------------------------------- golden files


def test_golden_directory_covers_the_formats():
    names = {p.values[0].name for p in GOLDEN_CASES}
    assert {
        "rss091.xml",
        "rss10.rdf",
        "rss20.xml",
        "atom10.xml",
        "jsonfeed10.json",
        "jsonfeed11.json",
        "rss20-invalid-dates.xml",
        "rss20-nul-control.xml",
        "rss20-encoding-ff.xml",
        "rss20-encoding-unknown.xml",
        "not-a-feed.html",
        "garbage.bin",
    } <= names
    # every feed file has its expectation beside it
    for p in GOLDEN_CASES:
        assert p.values[1], p.values[0]


@pytest.mark.parametrize(("feed_path", "expected"), GOLDEN_CASES)
def test_golden_feed(feed_path: Path, expected: dict):
    body = feed_path.read_bytes()
    url = expected.get("url", FEED_BASE + feed_path.name)
    headers = expected.get("headers", {})
    if "error_class" in expected:
        with pytest.raises(FeedParseError) as info:
            parse_feed(body, url, headers)
        assert info.value.error_class == expected["error_class"]
        if "message_contains" in expected:
            assert expected["message_contains"] in str(info.value)
        return
    parsed = parse_feed(body, url, headers)
    assert parsed.format == expected["format"]
    assert parsed.title == expected["title"]
    if "site_url" in expected:
        assert parsed.site_url == expected["site_url"]
    if "language" in expected:
        assert parsed.language == expected["language"]
    assert len(parsed.entries) == expected["entries"]
    assert _entry_as_expected(parsed.entries[0]) == expected["first_entry"]
    for value in _all_fields(parsed):
        assert "\x00" not in value


def test_rss20_all_entries_and_dates():
    parsed = parse_feed((GOLDEN / "rss20.xml").read_bytes(), FEED_BASE + "rss20.xml")
    first, second, third = parsed.entries
    assert first.summary == "<p>A late goal sent Aldwick through.</p>"
    assert second.guid == "https://courier.example/news/harbour-storm-damage.html"
    assert second.published_at == datetime(2024, 2, 29, 7, 0, tzinfo=UTC)
    assert third.guid is None
    assert third.published_at is None
    assert third.identity == "https://courier.example/news/council-budget-vote.html"


def test_invalid_dates_keep_entries():
    parsed = parse_feed((GOLDEN / "rss20-invalid-dates.xml").read_bytes(), FEED_BASE + "d.xml")
    assert [e.guid for e in parsed.entries] == ["dates-a", "dates-b"]
    assert [e.published_at for e in parsed.entries] == [None, None]
    assert [e.title for e in parsed.entries] == ["Dated never", "Dated impossibly"]


def test_jsonfeed11_external_url_and_feed_author_fallback():
    parsed = parse_feed((GOLDEN / "jsonfeed11.json").read_bytes(), FEED_BASE + "jsonfeed11.json")
    assert parsed.entries[1].author == "Feed Default"
    assert parsed.entries[2].link == "https://elsewhere.example/three"
    assert parsed.entries[1].published_at is None


def test_json_feed_detected_by_content_type_without_marker():
    body = json.dumps(
        {"version": "https://jsonfeed.org/version/1.1", "title": "T", "items": [{"id": "a", "url": "/x"}]}
    ).encode()
    # the marker is there anyway; a JSON object that is not a JSON Feed is refused cleanly
    assert parse_feed(body, "https://j.example/f.json").format == "jsonfeed11"
    with pytest.raises(FeedParseError) as info:
        parse_feed(b'{"hello": "world"}', "https://j.example/f.json", {"Content-Type": "application/json"})
    assert info.value.error_class == "not_a_feed"
    with pytest.raises(FeedParseError) as info:
        parse_feed(b'{"version": ', "https://j.example/f.json", {"content-type": "application/feed+json"})
    assert info.value.error_class == "parse_error"
    with pytest.raises(FeedParseError) as info:
        parse_feed(
            b'{"version": "https://jsonfeed.org/version/1.1", "items": 3}',
            "https://j.example/f.json",
            {"content-type": "application/feed+json"},
        )
    assert info.value.error_class == "parse_error"


def test_deeply_nested_json_is_a_clean_error():
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(FeedParseError):
        parse_feed(body, "https://j.example/f.json", {"Content-Type": "application/feed+json"})


def test_parse_iso_datetime():
    assert parse_iso_datetime("2024-03-06T10:20:30+01:00") == datetime(2024, 3, 6, 9, 20, 30, tzinfo=UTC)
    assert parse_iso_datetime("2024-03-06T10:20:30Z") == datetime(2024, 3, 6, 10, 20, 30, tzinfo=UTC)
    assert parse_iso_datetime("2024-03-06T10:20:30") == datetime(2024, 3, 6, 10, 20, 30, tzinfo=UTC)
    assert parse_iso_datetime("") is None
    assert parse_iso_datetime("   ") is None
    assert parse_iso_datetime(12345) is None


def test_parse_iso_datetime_falls_back_to_rfc822():
    assert parse_iso_datetime("Fri, 01 Mar 2024 12:30:00 GMT") == datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    assert parse_iso_datetime("yesterday-ish") is None


def test_json_feed_with_non_iso_date_parses():
    body = json.dumps(
        {
            "version": "https://jsonfeed.org/version/1",
            "title": "t",
            "items": [
                {"id": "1", "url": "https://r.example/1", "date_published": "Fri, 01 Mar 2024 12:30:00 GMT"},
                {"id": "2", "url": "https://r.example/2", "date_published": "not a date"},
            ],
        }
    ).encode()
    parsed = parse_feed(body, "https://r.example/feed.json")
    assert parsed.entries[0].published_at == datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    assert parsed.entries[1].published_at is None


# --------------------------------------------------------------------------- hostile input


def test_html_page_is_not_a_feed():
    body = b"<html><head><title>Home</title></head><body><p>hello</p></body></html>"
    with pytest.raises(FeedParseError) as info:
        parse_feed(body, "https://h.example/", {"Content-Type": "text/html; charset=utf-8"})
    assert info.value.error_class == "not_a_feed"
    assert "HTML page" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01\x02\x03" * 500,
        bytes(range(256)) * 20,
        b"\x1f\x8b\x08\x00" + bytes(range(200, 256)) * 30,  # looks like gzip, is not a feed
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"\xff" * 1000,
    ],
    ids=["empty", "control-bytes", "all-bytes", "gzip-magic", "pdf"],
)
def test_binary_garbage_is_a_clean_error(body: bytes):
    with pytest.raises(FeedParseError) as info:
        parse_feed(body, "https://g.example/feed")
    assert info.value.error_class in ("not_a_feed", "parse_error")


@pytest.mark.parametrize(
    "encoding",
    [b"\xff", b"\xff\xfe", b"x-no-such", b"base64", b"rot13", b"zlib", b"", b"utf-7", b"utf-16", b"cp037"],
)
def test_strange_declared_encodings_parse_or_fail_cleanly(encoding: bytes):
    body = (
        b'<?xml version="1.0" encoding="'
        + encoding
        + b'"?>\n<rss version="2.0"><channel><title>Caf\xc3\xa9</title>'
        b"<item><title>one</title><link>https://e.example/1</link></item></channel></rss>"
    )
    try:
        parsed = parse_feed(body, "https://e.example/feed")
    except FeedParseError as exc:
        assert exc.error_class in ("not_a_feed", "parse_error")
    else:
        assert parsed.format == "rss20"
        assert [e.link for e in parsed.entries] == ["https://e.example/1"]


def _quadratic_feed(entity_size: int, references: int, prolog: bytes = b"") -> bytes:
    entity = b"A" * entity_size
    return (
        b'<?xml version="1.0"?>\n'
        + prolog
        + b'<!DOCTYPE rss [\n<!ENTITY a "'
        + entity
        + b'">\n]>\n<rss version="2.0"><channel><title>t &a;</title><item><title>x &a;</title>'
        + b"<description>"
        + b"&a;" * references
        + b"</description><link>https://q.example/a</link></item></channel></rss>"
    )


def _assert_bounded(body: bytes, max_seconds: float = 2.0) -> ParsedFeed | None:
    started = time.monotonic()
    try:
        parsed = parse_feed(body, "https://q.example/feed")
    except FeedParseError:
        parsed = None
    elapsed = time.monotonic() - started
    assert elapsed < max_seconds
    if parsed is not None:
        longest = max(len(v) for v in _all_fields(parsed))
        assert longest < 10 * len(body), f"a field of {longest} chars from {len(body)} bytes of input"
    return parsed


def test_billion_laughs_is_bounded():
    lols = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">\n' for i in range(1, 10)).encode()
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY lol0 "lol">\n'
        + lols
        + b']>\n<rss version="2.0"><channel><title>&lol9;</title><item><title>&lol9;</title>'
        b"<description>&lol9;&lol9;</description><link>https://q.example/a</link></item></channel></rss>"
    )
    parsed = _assert_bounded(body)
    assert parsed is not None
    assert [e.link for e in parsed.entries] == ["https://q.example/a"]


def test_quadratic_blowup_is_bounded():
    body = _quadratic_feed(entity_size=20_000, references=2_000)
    parsed = _assert_bounded(body)
    assert parsed is not None and len(parsed.entries) == 1


@pytest.mark.parametrize(
    "prolog",
    [b"<!DOCTYPE decoy>\n", b"<!-- <!DOCTYPE decoy> -->\n"],
    ids=["second-doctype", "doctype-in-comment"],
)
def test_quadratic_blowup_behind_a_decoy_doctype_is_bounded(prolog: bytes):
    body = _quadratic_feed(entity_size=2_000, references=300, prolog=prolog)
    _assert_bounded(body)


@pytest.mark.parametrize("prolog", [b"", b"<!DOCTYPE decoy>\n"], ids=["plain", "behind-decoy"])
def test_external_entity_is_never_read(prolog: bytes):
    body = (
        b'<?xml version="1.0"?>\n'
        + prolog
        + b'<!DOCTYPE rss [\n<!ENTITY xxe SYSTEM "file:///etc/passwd">\n<!ENTITY % p SYSTEM "file:///etc/passwd">\n]>\n'
        b'<rss version="2.0"><channel><title>t &xxe;</title><item><title>&xxe;</title>'
        b"<description>&xxe;</description><link>https://x.example/a</link></item></channel></rss>"
    )
    try:
        parsed = parse_feed(body, "https://x.example/feed")
    except FeedParseError:
        return
    for value in _all_fields(parsed):
        assert "root:" not in value
        assert "/bin/" not in value


def test_many_entries_are_all_parsed_quickly():
    items = b"".join(
        b'<item><title>t%d</title><link>https://m.example/%d</link><guid isPermaLink="false">g%d</guid></item>'
        % (i, i, i)
        for i in range(2000)
    )
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>many</title>' + items + b"</channel></rss>"
    )
    started = time.monotonic()
    parsed = parse_feed(body, "https://m.example/feed")
    assert time.monotonic() - started < 5
    assert len(parsed.entries) == 2000
    assert parsed.entries[1999].guid == "g1999"


def test_huge_field_is_clipped():
    big = b"B" * 300_000
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>c</title><item><title>t</title>'
        b"<description>" + big + b"</description><link>https://b.example/1</link></item></channel></rss>"
    )
    parsed = parse_feed(body, "https://b.example/feed")
    assert len(parsed.entries[0].summary) == 200_000


def test_enclosure_length_with_unicode_digit_does_not_crash():
    body = (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title><item>'
        "<title>a</title><link>https://u.example/a</link>"
        '<enclosure url="/a.mp3" length="²" type="audio/mpeg"/></item></channel></rss>'
    ).encode()
    parsed = parse_feed(body, "https://u.example/feed")
    assert parsed.entries[0].enclosures[0].url == "https://u.example/a.mp3"
    assert parsed.entries[0].enclosures[0].length is None


def test_json_feed_out_of_range_date_does_not_crash():
    body = json.dumps(
        {
            "version": "https://jsonfeed.org/version/1.1",
            "title": "t",
            "items": [
                {"id": "1", "url": "https://o.example/1", "date_published": "0001-01-01T00:00:00+01:00"}
            ],
        }
    ).encode()
    parsed = parse_feed(body, "https://o.example/feed.json")
    assert parsed.entries[0].guid == "1"
    assert parsed.entries[0].published_at is None


def test_json_feed_with_bom():
    body = (
        b"\xef\xbb\xbf"
        + json.dumps(
            {
                "version": "https://jsonfeed.org/version/1.1",
                "title": "bom",
                "items": [{"id": "1", "url": "/a"}],
            }
        ).encode()
    )
    parsed = parse_feed(body, "https://bom.example/feed.json", {"Content-Type": "application/feed+json"})
    assert parsed.format == "jsonfeed11"
    assert parsed.entries[0].link == "https://bom.example/a"


def test_guid_does_not_depend_on_the_feed_url():
    """A moved feed (301/308, http -> https) keeps its entries' identities."""
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item><title>a</title>'
        b"<link>https://g.example/a</link><guid>12345</guid></item></channel></rss>"
    )
    one = parse_feed(body, "http://g.example/feed").entries[0]
    two = parse_feed(body, "https://cdn.g.example/v2/feed").entries[0]
    assert one.guid == two.guid == "12345"


# --------------------------------------------------------------------------- parse_feed_results


def _result(url: str, body: bytes | None, status: int = 200, error_class: str | None = None, headers=()):
    return FetchResult(
        url=url,
        final_url=url,
        status=status,
        headers=tuple(headers),
        body=body,
        fetched_at=datetime.now(UTC),
        elapsed_ms=1,
        error_class=error_class,
        error_message="boom" if error_class else None,
    )


def test_parse_feed_results_outcomes():
    rss = (GOLDEN / "rss20.xml").read_bytes()
    atom = (GOLDEN / "atom10.xml").read_bytes()
    html = (GOLDEN / "not-a-feed.html").read_bytes()
    results = [
        _result("https://a.example/rss", rss, headers=[("Content-Type", "application/rss+xml")]),
        _result("https://a.example/atom", atom),
        _result("https://a.example/same", rss),
        _result("https://a.example/304", None, status=304),
        _result("https://a.example/err", None, status=None, error_class="timeout"),
        _result("https://a.example/html", html, headers=[("content-type", "text/html")]),
    ]
    previous = {"https://a.example/same": body_hash(rss), "https://a.example/304": "prev-hash"}
    out = parse_feed_results(results, previous)
    assert [o.feed_url for o in out] == [r.url for r in results]

    assert out[0].parsed.format == "rss20" and len(out[0].parsed.entries) == 3
    assert out[0].body_hash == body_hash(rss) and not out[0].unchanged and not out[0].failed
    assert (
        out[0].parsed.entries[0].link
        == "https://a.example/sport/aldwick-athletic-cup-semi-final.html?utm_source=rss"
    )
    assert out[1].parsed.format == "atom10"

    assert out[2].unchanged and out[2].parsed is None and out[2].body_hash == body_hash(rss)
    assert out[3].unchanged and out[3].parsed is None and out[3].body_hash == "prev-hash"
    assert out[4].failed and out[4].error_class == "timeout" and out[4].error_message == "boom"
    assert out[5].failed and out[5].error_class == "not_a_feed" and out[5].body_hash == body_hash(html)
