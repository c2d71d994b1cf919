"""Unit tests for tasks/dedup.py: URL identity, text identity, duplicate decisions, entry planning."""

from __future__ import annotations

import pytest

from tasks.dedup import (
    DedupCandidate,
    DedupDecision,
    article_id_for,
    canonicalize_url,
    content_hash,
    decide_duplicates,
    entry_key_for,
    keyed_entries,
    normalize_text,
    plan_entries,
    registrable_host,
    trusted_canonical,
)
from tasks.parse import FeedEntry


def entry(link: str | None, guid: str | None = None, title: str | None = "t") -> FeedEntry:
    return FeedEntry(
        guid=guid,
        link=link,
        title=title,
        published_at=None,
        updated_at=None,
        summary=None,
        author=None,
    )


# --------------------------------------------------------------------------- canonicalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://example.com/a?utm_source=rss&utm_medium=feed&utm_campaign=x&id=7",
            "https://example.com/a?id=7",
        ),
        ("https://example.com/a?fbclid=abc&gclid=def&id=7", "https://example.com/a?id=7"),
        ("https://example.com/a?UTM_Source=x&Fbclid=y&k=v", "https://example.com/a?k=v"),
        ("https://example.com/a?mc_cid=1&_ga=2&pk_campaign=3&hsa_acc=4&k=v", "https://example.com/a?k=v"),
        ("https://example.com/a?z=1&b=2&a=3", "https://example.com/a?a=3&b=2&z=1"),
        ("https://example.com/a?x=2&x=1", "https://example.com/a?x=1&x=2"),
        ("https://example.com/a#section-2", "https://example.com/a"),
        ("https://EXAMPLE.Com/Path/Case", "https://example.com/Path/Case"),
        ("HTTPS://example.com/x", "https://example.com/x"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a/./b/../c", "https://example.com/a/c"),
        ("  https://example.com/x  ", "https://example.com/x"),
        (
            "HTTP://WWW.Example.COM:80/a/b?utm_source=x&b=2&a=1&fbclid=z#frag",
            "http://www.example.com/a/b?a=1&b=2",
        ),
    ],
)
def test_canonicalize_url(url: str, expected: str):
    assert canonicalize_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "mailto:editor@example.com",
        "javascript:alert(1)",
        "data:text/html,hi",
        "/relative/path",
        "//example.com/no-scheme",
        "https:///no-host",
    ],
)
def test_canonicalize_url_refuses_non_http(url):
    assert canonicalize_url(url) is None


def test_canonicalize_url_is_idempotent_and_tracking_insensitive():
    a = canonicalize_url("https://News.example.com/story?id=9&utm_source=twitter#comments")
    b = canonicalize_url("https://news.example.com/story?utm_campaign=spring&id=9&fbclid=XYZ")
    assert a == b == "https://news.example.com/story?id=9"
    assert canonicalize_url(a) == a
    assert canonicalize_url("https://example.com/story?id=9") != canonicalize_url(
        "https://example.com/story?id=10"
    )


def test_valueless_query_keeps_articles_apart():
    a = canonicalize_url("https://example.com/story.php?12345")
    b = canonicalize_url("https://example.com/story.php?12346")
    assert a is not None and b is not None
    assert a != b


# --------------------------------------------------------------------------- content_hash


def test_content_hash_ignores_whitespace_case_and_punctuation():
    base = content_hash("The harbour wall collapsed overnight, officials said.")
    assert base is not None and len(base) == 64
    assert content_hash("  the HARBOUR   wall\ncollapsed overnight officials said  ") == base
    assert content_hash("The harbour wall — collapsed overnight; officials said!!") == base
    assert content_hash("The\tharbour\u00a0wall collapsed overnight, officials said.") == base
    # NFKC: the full-width form is the same words
    assert content_hash("Ｔｈｅ harbour wall collapsed overnight, officials said.") == base


def test_content_hash_differs_for_different_text():
    a = content_hash("The harbour wall collapsed overnight.")
    assert a != content_hash("The harbour wall was repaired overnight.")
    assert a != content_hash("The harbour wall collapsed overnight again.")


def test_content_hash_of_nothing_is_none():
    assert content_hash(None) is None
    assert content_hash("") is None
    assert content_hash(" ... !!! --- ") is None
    assert normalize_text("Hello,   World!") == "hello world"


# --------------------------------------------------------------------------- trusted_canonical


@pytest.mark.parametrize(
    ("canonical", "final", "expected"),
    [
        ("https://www.example.com/a", "https://example.com/b", "https://www.example.com/a"),
        ("https://example.com/a", "https://www.example.com/b", "https://example.com/a"),
        ("https://example.com/a?utm_source=x", "https://news.example.com/b", "https://example.com/a"),
        ("https://www.bbc.co.uk/news/1", "https://news.bbc.co.uk/x", "https://www.bbc.co.uk/news/1"),
        ("https://other-outlet.com/a", "https://example.com/b", None),
        ("https://example.com.evil.net/a", "https://example.com/b", None),
        ("https://evil.co.uk/a", "https://bbc.co.uk/b", None),
        (None, "https://example.com/b", None),
        ("ftp://example.com/a", "https://example.com/b", None),
    ],
)
def test_trusted_canonical(canonical, final, expected):
    assert trusted_canonical(canonical, final) == expected


def test_registrable_host():
    assert registrable_host("www.Example.com") == "example.com"
    assert registrable_host("a.b.news.example.org.") == "example.org"
    assert registrable_host("news.bbc.co.uk") == "bbc.co.uk"
    assert registrable_host("example.com") == "example.com"


# --------------------------------------------------------------------------- decide_duplicates


def test_decide_duplicates_in_batch_order():
    cands = [
        DedupCandidate("a1", "https://x.example/1", "h1"),
        DedupCandidate("a2", "https://x.example/1", "h2"),  # same canonical as a1
        DedupCandidate("a3", "https://x.example/3", "h1"),  # same text as a1
        DedupCandidate("a4", "https://x.example/4", "h4"),  # original
        DedupCandidate("a5", None, None),  # nothing to compare: original
    ]
    assert decide_duplicates(cands, {}, {}) == [
        DedupDecision("a1", None, None),
        DedupDecision("a2", "a1", "canonical_url"),
        DedupDecision("a3", "a1", "content_hash"),
        DedupDecision("a4", None, None),
        DedupDecision("a5", None, None),
    ]


def test_decide_duplicates_order_decides_the_original():
    a = DedupCandidate("a", "https://x.example/same", "h")
    b = DedupCandidate("b", "https://x.example/same", "h")
    assert [d.duplicate_of for d in decide_duplicates([a, b], {}, {})] == [None, "a"]
    assert [d.duplicate_of for d in decide_duplicates([b, a], {}, {})] == [None, "b"]


def test_decide_duplicates_against_the_warehouse():
    known_canonical = {"https://x.example/old": "old1"}
    known_hash = {"hash-old": "old2"}
    cands = [
        DedupCandidate("n1", "https://x.example/old", "fresh"),
        DedupCandidate("n2", "https://x.example/new", "hash-old"),
        DedupCandidate("n3", "https://x.example/new", "other"),  # after n2: points to n2's root
        DedupCandidate("old1", "https://x.example/old", None),  # the original itself, seen again
    ]
    assert decide_duplicates(cands, known_canonical, known_hash) == [
        DedupDecision("n1", "old1", "canonical_url"),
        DedupDecision("n2", "old2", "content_hash"),
        DedupDecision("n3", "old2", "canonical_url"),
        DedupDecision("old1", None, None),
    ]
    # the inputs are not modified
    assert known_canonical == {"https://x.example/old": "old1"}
    assert known_hash == {"hash-old": "old2"}


def test_duplicate_of_a_duplicate_points_to_the_root():
    cands = [
        DedupCandidate("root", "https://x.example/r", "H1"),
        DedupCandidate("dup1", "https://x.example/d1", "H1"),  # text of root
        DedupCandidate("dup2", "https://x.example/d1", "H2"),  # canonical of dup1
        DedupCandidate("dup3", "https://x.example/d3", "H2"),  # text of dup2
    ]
    decisions = decide_duplicates(cands, {}, {})
    assert [(d.article_id, d.duplicate_of, d.reason) for d in decisions] == [
        ("root", None, None),
        ("dup1", "root", "content_hash"),
        ("dup2", "root", "canonical_url"),
        ("dup3", "root", "content_hash"),
    ]


def test_canonical_match_wins_over_hash_match():
    cands = [
        DedupCandidate("a", "https://x.example/a", "ha"),
        DedupCandidate("b", "https://x.example/b", "hb"),
        DedupCandidate("c", "https://x.example/a", "hb"),
    ]
    assert decide_duplicates(cands, {}, {})[2] == DedupDecision("c", "a", "canonical_url")


# --------------------------------------------------------------------------- keyed_entries / plan_entries


FEED_A = "https://a.example/feed"
FEED_B = "https://b.example/rss"


def test_keyed_entries():
    e1 = entry("https://news.example/1?utm_source=a", guid="g1")
    e1_again = entry("https://news.example/1-updated", guid="g1")  # the same GUID listed twice
    e2 = entry(None, guid=None, title="No link")
    planned = keyed_entries([(FEED_A, [e1, e1_again, e2]), (FEED_B, [e1])])
    assert [(p.feed_url, p.entry.identity) for p in planned] == [
        (FEED_A, "g1"),
        (FEED_A, "title:No link"),
        (FEED_B, "g1"),
    ]
    assert planned[0].entry_key == entry_key_for(FEED_A, "g1")
    assert planned[0].entry_key != planned[2].entry_key  # keys are per feed
    assert len(planned[0].entry_key) == 24
    assert planned[0].link_key == "https://news.example/1"
    assert planned[1].link_key is None


def test_plan_entries():
    shared_a = entry("https://news.example/story?utm_source=feedA&id=1", guid="a-1")
    shared_b = entry("https://NEWS.example/story?id=1&fbclid=zzz#top", guid="b-1")
    seen = entry("https://news.example/seen", guid="a-seen")
    known = entry("https://news.example/known?utm_medium=rss", guid="a-known")
    nolink = entry(None, guid="a-nolink")
    fresh = entry("https://news.example/fresh", guid="b-2")
    planned = keyed_entries([(FEED_A, [seen, shared_a, known, nolink]), (FEED_B, [shared_b, fresh])])
    seen_keys = {entry_key_for(FEED_A, "a-seen")}
    known_urls = {"https://news.example/known": "article-known"}

    plan = plan_entries(planned, seen_keys, known_urls, max_per_feed=10)

    assert plan.skipped_over_limit == 0
    assert [(p.entry.guid, a) for p, a in plan.known] == [("a-known", "article-known")]
    assert [p.entry.guid for p in plan.no_link] == ["a-nolink"]
    assert [job.url_key for job in plan.pages] == [
        "https://news.example/story?id=1",
        "https://news.example/fresh",
    ]
    story = plan.pages[0]
    assert story.url == "https://news.example/story?utm_source=feedA&id=1"  # as the first entry gave it
    assert story.article_id == article_id_for("https://news.example/story?id=1")
    assert [(p.feed_url, p.entry.guid) for p in story.entries] == [(FEED_A, "a-1"), (FEED_B, "b-1")]
    all_guids = [p.entry.guid for job in plan.pages for p in job.entries]
    assert "a-seen" not in all_guids


def test_plan_entries_respects_max_per_feed():
    a_entries = [entry(f"https://a.example/{i}", guid=f"a{i}") for i in range(5)]
    b_entries = [entry(f"https://b.example/{i}", guid=f"b{i}") for i in range(3)]
    planned = keyed_entries([(FEED_A, a_entries), (FEED_B, b_entries)])
    seen = {entry_key_for(FEED_A, "a0")}  # seen entries do not count against the limit
    plan = plan_entries(planned, seen, {}, max_per_feed=2)
    assert [p.entry.guid for job in plan.pages for p in job.entries] == ["a1", "a2", "b0", "b1"]
    assert plan.skipped_over_limit == 2 + 1
    # the limit counts known and no-link entries too
    plan = plan_entries(planned, set(), {"https://a.example/0": "x"}, max_per_feed=1)
    assert [(p.entry.guid, a) for p, a in plan.known] == [("a0", "x")]
    assert [p.entry.guid for job in plan.pages for p in job.entries] == ["b0"]
    assert plan.skipped_over_limit == 4 + 2
