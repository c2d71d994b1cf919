"""Feeds in and out: ``newsflow feeds import / export / add`` and the modules behind them.

The commands run as subprocesses, as a user runs them; ``feeds add`` talks to loopback sites."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import listparser
import pytest
from builders import ATOM, JSONFEED, RSS, atom_feed, json_feed, make_story, rss_feed
from conftest import subprocess_env

from newsflow.feed_list import FeedListError, add_feeds, append_feeds, feed_url_problem
from newsflow.loopback import Route
from tasks.discover import COMMON_PATHS, feed_links
from tasks.feeds import FeedSpec, load_feed_list
from tasks.opml import OpmlError, read_opml, write_opml

NEWSFLOW = [sys.executable, "-m", "newsflow.cli", "feeds"]
GOLDEN = Path(__file__).parent / "golden" / "opml"
USER_FEEDS = """\
# My feeds. Keep the BBC first.
[[feeds]]
url = "https://existing.example/rss"  # the old address redirects here
name = "Existing"
tags = ["keep"]

# Below: added by newsflow
"""


def feeds(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        NEWSFLOW + args,
        env=subprocess_env("", tmp_path / "data", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def as_tuples(specs: list[FeedSpec]) -> list[tuple]:
    return [(s.url, s.name, s.tags) for s in specs]


# --------------------------------------------------------------------------- OPML import


def test_import_nested_outlines_skips_duplicates_and_refuses_non_http(tmp_path):
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(USER_FEEDS)
    done = feeds(["import", str(GOLDEN / "nested.opml"), "--feeds", str(feeds_file)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "4 added, 1 already present, 2 invalid" in done.stdout
    assert "file:///etc/passwd" in done.stdout and "javascript:" in done.stdout

    text = feeds_file.read_text()
    assert text.startswith(USER_FEEDS)  # the user's lines and comments, untouched
    assert as_tuples(load_feed_list(feeds_file)) == [
        ("https://existing.example/rss", "Existing", ("keep",)),
        ("https://world.example/rss.xml", "Café Monde & Co", ("News", "World")),
        ("https://titled.example/atom.xml", "Titled only", ("News", "World")),
        # listed twice (News and Tech): once, with both folders, plus its category attribute
        ("https://herald.example/feed", "Local Herald", ("Regional", "North", "weekly", "News", "Tech")),
        ("https://top.example/index.xml", "Top level", ()),
    ]
    assert "file:" not in text and "javascript:" not in text

    again = feeds(["import", str(GOLDEN / "nested.opml"), "--feeds", str(feeds_file)], tmp_path)
    assert "0 added, 5 already present, 2 invalid" in again.stdout
    assert feeds_file.read_text() == text


def test_read_opml_decodes_by_bom_and_declaration():
    latin1 = read_opml((GOLDEN / "opml1-latin1.opml").read_bytes())
    assert as_tuples(latin1) == [
        ("https://diplo.example/rss", "Le Monde diplomatique à la une", ("Français",))
    ]
    doc = '<opml version="1.0"><body><outline text="Café — 日本" xmlUrl="https://a.example/"/></body></opml>'
    for data in (doc.encode(), doc.encode("utf-16"), b"\xef\xbb\xbf" + doc.encode()):
        assert read_opml(data)[0].name == "Café — 日本"


def test_import_refuses_what_is_not_opml_and_never_fetches(tmp_path, site):
    """A file holding only a URL is not OPML; listparser would fetch a URL it was given as text."""
    site.routes["/list.opml"] = Route(body=write_opml([FeedSpec("https://x.example/rss")]))
    url_file = tmp_path / "list.opml"
    url_file.write_text(site.url("/list.opml"))
    done = feeds(["import", str(url_file), "--feeds", str(tmp_path / "feeds.toml")], tmp_path)
    assert done.returncode == 1 and "not an OPML document" in done.stderr
    assert sum(site.hits.values()) == 0 and not (tmp_path / "feeds.toml").exists()
    with pytest.raises(OpmlError):
        read_opml(b"<html><body><p>hello</p></body></html>")
    missing = feeds(["import", str(tmp_path / "nope.opml")], tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


# --------------------------------------------------------------------------- OPML export


def test_export_then_import_round_trips(tmp_path):
    source = tmp_path / "feeds.toml"
    source.write_text(
        USER_FEEDS
        + '[[feeds]]\nurl = "https://q.example/rss?a=1&b=<2>"\nname = "Quotes \\" & <angles> \'single\'"\n'
        'tags = ["world", "été"]\n\n'
        '[[feeds]]\nurl = "https://no-name.example/feed"\ntags = ["x"]\n\n'
        '[[feeds]]\nurl = "https://bare.example/feed"\n'
    )
    out = tmp_path / "out.opml"
    done = feeds(["export", "--feeds", str(source), "--output", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr

    root = ET.parse(out).getroot()  # well-formed XML
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title") and root.findtext("head/dateCreated")
    outlines = root.findall("body/outline")
    assert [o.get("xmlUrl") for o in outlines] == [s.url for s in load_feed_list(source)]
    assert outlines[1].get("category") == "world,été" and outlines[1].get("type") == "rss"

    parsed = listparser.parse(out.read_bytes())
    assert parsed.version == "opml2" and not parsed.bozo  # dateCreated is RFC 822
    assert [f.url for f in parsed.feeds] == [s.url for s in load_feed_list(source)]

    target = tmp_path / "new" / "feeds.toml"  # an empty list: the file does not exist yet
    done = feeds(["import", str(out), "--feeds", str(target)], tmp_path)
    assert done.returncode == 0 and "4 added" in done.stdout, done.stderr
    assert as_tuples(load_feed_list(target)) == as_tuples(load_feed_list(source))

    stdout = feeds(["export", "--feeds", str(source)], tmp_path)
    assert stdout.returncode == 0 and read_opml(stdout.stdout.encode()) == load_feed_list(source)


def test_export_warns_about_tags_opml_would_split(tmp_path):
    source = tmp_path / "feeds.toml"
    source.write_text('[[feeds]]\nurl = "https://a.example/rss"\ntags = ["news/world", "ok"]\n')
    done = feeds(["export", "--feeds", str(source)], tmp_path)
    assert done.returncode == 0 and "news/world" in done.stderr
    assert read_opml(done.stdout.encode())[0].tags == ("news", "world", "ok")
    missing = feeds(["export", "--feeds", str(tmp_path / "nope.toml")], tmp_path)
    assert missing.returncode == 2 and "no feed list" in missing.stderr


# --------------------------------------------------------------------------- feeds.toml


def test_append_keeps_the_text_and_survives_awkward_layouts(tmp_path):
    new = [FeedSpec("https://n.example/rss", 'N "1"', ("a", "b")), FeedSpec("https://m.example/rss")]
    layouts = {
        "no final newline": '[[feeds]]\nurl = "https://a.example/rss"',
        "crlf": '# c\r\n[[feeds]]\r\nurl = "https://a.example/rss"\r\n',
        "another table last": '[[feeds]]\nurl = "https://a.example/rss"\n\n# about other\n[other]\nk = 1\n',
        "comment only": "# nothing yet\n",
    }
    for label, text in layouts.items():
        out = append_feeds(text, new)
        assert out.startswith(text), label
        data = tomllib.loads(out)
        assert [f["url"] for f in data["feeds"]][-2:] == ["https://n.example/rss", "https://m.example/rss"]
        assert data["feeds"][-2] == {"url": "https://n.example/rss", "name": 'N "1"', "tags": ["a", "b"]}
        assert data["feeds"][-1] == {"url": "https://m.example/rss"}, label
    assert "\r\n[[feeds]]\r\n" in append_feeds(layouts["crlf"], new)
    inline = tomllib.loads(append_feeds('feeds = [{url = "https://a.example/rss"}]\n', new))
    assert len(inline["feeds"]) == 3
    with pytest.raises(FeedListError):
        append_feeds('feeds = "not a list"\n', new)


def test_add_feeds_writes_atomically_through_symlinks_and_keeps_the_mode(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text(USER_FEEDS)
    real.chmod(0o640)
    link = tmp_path / "feeds.toml"
    link.symlink_to(real)
    result = add_feeds(link, [FeedSpec(" https://n.example/rss "), FeedSpec("https://existing.example/rss")])
    assert [s.url for s in result.added] == ["https://n.example/rss"] and len(result.present) == 1
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert real.read_text().startswith(USER_FEEDS)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left

    broken = tmp_path / "broken.toml"
    broken.write_text("[[feeds]\nurl = ")
    with pytest.raises(FeedListError):
        add_feeds(broken, [FeedSpec("https://n.example/rss")])
    assert broken.read_text() == "[[feeds]\nurl = "


def test_feed_url_problem():
    assert feed_url_problem("https://a.example/rss?x=1") is None
    for bad in ("file:///etc/passwd", "javascript:alert(1)", "ftp://a.example/", "https://", "a.example/rss"):
        assert feed_url_problem(bad), bad
    assert feed_url_problem("https://a.example/r ss")


# --------------------------------------------------------------------------- discovery


def test_feed_links_resolve_against_the_page_and_base():
    html = b"""<html><head>
    <link rel="stylesheet" href="/style.css">
    <link rel="alternate" type="application/rss+xml; charset=utf-8" href="rss.xml">
    <link rel="Alternate" type="APPLICATION/ATOM+XML" href="https://other.example/atom#top">
    <link rel="alternate" type="text/html" hreflang="fr" href="/fr/">
    <link rel="alternate" type="application/rss+xml" href="javascript:void(0)">
    <link rel="alternate" type="application/feed+json" href="rss.xml">
    </head><body></body></html>"""
    assert feed_links(html, "https://site.example/blog/post") == [
        "https://site.example/blog/rss.xml",
        "https://other.example/atom",
    ]
    based = b'<html><head><base href="/news/"><link rel="alternate" type="application/json" href="f.json">'
    assert feed_links(based, "https://site.example/x/y") == ["https://site.example/news/f.json"]
    assert (
        feed_links(b"", "https://site.example/") == [] and feed_links(b"\x00\xff", "https://s.example/") == []
    )


def _stories():
    return [make_story(i, seed=3) for i in range(2)]


HOME = b"<!DOCTYPE html><html><head><title>Home</title>%s</head><body><p>News.</p></body></html>"


def test_add_a_direct_feed_url_keeps_comments(tmp_path, site):
    site.routes["/news/rss"] = Route(
        body=rss_feed([(s, site.url("/p"), s.slug) for s in _stories()]), content_type=RSS
    )
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(USER_FEEDS)
    done = feeds(
        ["add", site.url("/news/rss"), "--tags", "local, test,", "--feeds", str(feeds_file)], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "rss20" in done.stdout and "added" in done.stdout
    assert feeds_file.read_text().startswith(USER_FEEDS)
    assert as_tuples(load_feed_list(feeds_file))[-1] == (
        site.url("/news/rss"),
        "Test feed",
        ("local", "test"),
    )

    # (e) already present, given with stray whitespace: not fetched, not added again
    hits = sum(site.hits.values())
    again = feeds(["add", f"  {site.url('/news/rss')} ", "--feeds", str(feeds_file)], tmp_path)
    assert again.returncode == 0 and "already present" in again.stdout
    assert sum(site.hits.values()) == hits and len(load_feed_list(feeds_file)) == 2


def test_add_a_home_page_with_feed_links(tmp_path, site):
    links = (
        b'<link rel="alternate" type="application/atom+xml" href="/atom.xml">'
        b'<link rel="alternate" type="application/feed+json" title="JSON" href="feed.json">'
    )
    site.routes["/"] = Route(body=HOME % links)
    site.routes["/atom.xml"] = Route(
        body=atom_feed([(s, site.url("/p"), s.slug) for s in _stories()]), content_type=ATOM
    )
    site.routes["/feed.json"] = Route(
        body=json_feed([(s, site.url("/p"), s.slug) for s in _stories()]), content_type=JSONFEED
    )
    feeds_file = tmp_path / "feeds.toml"
    done = feeds(["add", site.url("/"), "--name", "Home atom", "--feeds", str(feeds_file)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert as_tuples(load_feed_list(feeds_file)) == [(site.url("/atom.xml"), "Home atom", ())]
    assert not any(site.hits[p] for p in COMMON_PATHS if p != "/atom.xml")  # links found: no guessing

    every = feeds(["add", site.url("/"), "--all", "--feeds", str(feeds_file)], tmp_path)
    assert every.returncode == 0, every.stderr
    assert "already present" in every.stdout and "jsonfeed11" in every.stdout
    assert [s.url for s in load_feed_list(feeds_file)] == [site.url("/atom.xml"), site.url("/feed.json")]


def test_add_a_home_page_without_links_finds_a_common_path(tmp_path, site):
    site.routes["/"] = Route(body=HOME % b"")
    site.routes["/feed.xml"] = Route(
        body=rss_feed([(s, site.url("/p"), s.slug) for s in _stories()]), content_type=RSS
    )
    feeds_file = tmp_path / "feeds.toml"
    done = feeds(["add", site.url("/"), "--feeds", str(feeds_file)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "common path" in done.stdout
    assert [s.url for s in load_feed_list(feeds_file)] == [site.url("/feed.xml")]


def test_add_when_nothing_is_found_exits_1_and_changes_nothing(tmp_path, site):
    site.routes["/"] = Route(
        body=HOME % b'<link rel="alternate" type="application/rss+xml" href="/gone.xml">'
    )
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(USER_FEEDS)
    before = feeds_file.read_bytes()
    done = feeds(["add", site.url("/"), "--feeds", str(feeds_file)], tmp_path)
    assert done.returncode == 1 and "no feed found" in done.stderr and "Traceback" not in done.stderr
    assert feeds_file.read_bytes() == before
    assert site.hits["/gone.xml"] == 1 and all(site.hits[p.split("?")[0]] for p in COMMON_PATHS)


def test_add_refuses_loopback_unless_private_networks_are_allowed(tmp_path, site):
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url("/p"), s.slug) for s in _stories()]), content_type=RSS
    )
    feeds_file = tmp_path / "feeds.toml"
    done = feeds(
        ["add", site.url("/rss.xml"), "--feeds", str(feeds_file)],
        tmp_path,
        NEWSFLOW_ALLOW_PRIVATE_NETWORKS="0",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "blocked_address" in done.stderr and "NEWSFLOW_ALLOW_PRIVATE_NETWORKS=1" in done.stderr
    assert sum(site.hits.values()) == 0 and not feeds_file.exists()

    bad = feeds(["add", "file:///etc/passwd", "--feeds", str(feeds_file)], tmp_path)
    assert bad.returncode == 2 and "not allowed" in bad.stderr
    assert not os.path.exists(feeds_file)
