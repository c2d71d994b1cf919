"""The poll flow end to end, on the real Prefect engine, against loopback sites, into real
DuckDB and Parquet files read back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from builders import ATOM, JSONFEED, RSS, atom_feed, feeds_toml, json_feed, make_story, page_route, rss_feed
from conftest import latest_artifact

from newsflow.loopback import Route
from warehouse.raw_archive import read_raw_record


def poll(tmp_path: Path, feed_urls: list[str], data_dir: Path) -> dict:
    from flows.poll import poll_flow

    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml(feed_urls))
    # Every listed feed, due or not: these tests poll again at once (schedules: test_schedule.py).
    return poll_flow(feeds_file=str(feeds_file), data_dir=str(data_dir), all_feeds=True)


def query(data_dir: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def parquet_rows(data_dir: Path, table: str) -> int:
    files = list((data_dir / "parquet" / table).glob("*/*.parquet"))
    return ds.dataset(files, format="parquet").count_rows() if files else 0


@pytest.fixture
def news_site(site):
    """Three stories in an RSS feed, two more in an Atom feed, one more in a JSON Feed."""
    stories = [make_story(i) for i in range(6)]
    for s in stories:
        site.routes[f"/news/{s.slug}.html"] = page_route(s)
    link = lambda s, q="": site.url(f"/news/{s.slug}.html{q}")  # noqa: E731
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, link(s, "?utm_source=rss"), f"rss-{s.slug}") for s in stories[:3]]),
        content_type=RSS,
    )
    site.routes["/atom.xml"] = Route(
        body=atom_feed([(s, link(s), f"urn:atom:{s.slug}") for s in stories[3:5]]), content_type=ATOM
    )
    site.routes["/feed.json"] = Route(
        body=json_feed([(s, link(s), f"json-{s.slug}") for s in stories[5:]]), content_type=JSONFEED
    )
    site.stories = stories
    return site


def test_full_poll_end_to_end(prefect_api, newsflow_env, tmp_path, news_site):
    feeds = [news_site.url(p) for p in ("/rss.xml", "/atom.xml", "/feed.json")]
    result = poll(tmp_path, feeds, newsflow_env)

    assert result["feeds_polled"] == 3 and result["feeds_failed"] == 0
    assert result["new_entries"] == 6
    assert result["pages_fetched"] == 6 and result["articles_extracted"] == 6
    assert result["failures"] == []

    rows = query(
        newsflow_env,
        "SELECT url, feed_url, title, author, text, language, extractor_version, "
        "content_hash, duplicate_of, raw_path, raw_offset, published_at FROM articles ORDER BY published_at",
    )
    assert len(rows) == 6
    for story, row in zip(news_site.stories, rows, strict=True):
        (
            url,
            feed_url,
            title,
            author,
            text,
            language,
            extractor,
            digest,
            dup,
            raw_path,
            raw_offset,
            published,
        ) = row
        assert title == story.title and author == story.author
        assert language == "en" and extractor.startswith("trafilatura ")
        assert dup is None and len(digest) == 64
        assert published == story.published
        for p in story.paragraphs:  # all the story, none of the chrome
            assert p in text
        for chrome in (
            "Related: Unrelated headline",
            "We use cookies",
            "First comment",
            "All rights reserved",
        ):
            assert chrome not in text
        # The raw page is archived and readable without the network.
        target, headers, body = read_raw_record(newsflow_env, raw_path, raw_offset)
        assert story.paragraphs[0].encode() in body and target.startswith(news_site.base_url)
    # The link is kept exactly as the feed gave it (tracking parameters included).
    assert rows[0][0].endswith("?utm_source=rss")
    formats = dict(query(newsflow_env, "SELECT feed_url, format FROM feeds"))
    assert sorted(formats.values()) == ["atom10", "jsonfeed11", "rss20"]
    # Every fetch is logged: 3 feeds + 6 pages.
    assert query(newsflow_env, "SELECT kind, count(*) FROM fetch_log GROUP BY kind ORDER BY kind") == [
        ("feed", 3),
        ("page", 6),
    ]
    # Parquet agrees with DuckDB, and no temporary file is visible.
    for table in ("articles", "entries", "fetch_log"):
        assert parquet_rows(newsflow_env, table) == query(newsflow_env, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
    assert not list(newsflow_env.rglob("*.newsflow-tmp"))
    con = duckdb.connect()
    glob = str(newsflow_env / "parquet" / "articles" / "*" / "*.parquet")
    assert (
        con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning=true)", [glob]).fetchone()[0] == 6
    )
    import polars as pl

    frame = pl.read_parquet(
        str(newsflow_env / "parquet" / "articles" / "**" / "*.parquet"), hive_partitioning=True
    )
    assert (
        frame.height == 6
        and "ingest_date" in frame.columns
        and set(frame["title"]) == {s.title for s in news_site.stories}
    )
    runs = query(newsflow_env, "SELECT status, pages_fetched FROM runs")
    assert runs == [("completed", 6)]
    # The run summary is published as a Prefect artifact of the flow run.
    table = latest_artifact("poll-summary").data
    summary = {
        row["measure"]: row["value"] for row in (json.loads(table) if isinstance(table, str) else table)
    }
    assert summary["pages_fetched"] == 6 and summary["feeds_polled"] == 3


def test_second_poll_is_not_modified_and_adds_nothing(prefect_api, newsflow_env, tmp_path, news_site):
    feeds = [news_site.url(p) for p in ("/rss.xml", "/atom.xml", "/feed.json")]
    poll(tmp_path, feeds, newsflow_env)
    page_hits = sum(n for p, n in news_site.hits.items() if p.startswith("/news/"))
    before = {t: query(newsflow_env, f"SELECT count(*) FROM {t}")[0][0] for t in ("articles", "entries")}  # noqa: S608

    second = poll(tmp_path, feeds, newsflow_env)

    assert second["feeds_not_modified"] == 3 and second["new_entries"] == 0 and second["pages_fetched"] == 0
    assert sum(n for p, n in news_site.hits.items() if p.startswith("/news/")) == page_hits
    # The stored validators were sent back.
    feed_requests = [h for p, h in news_site.requests if p == "/rss.xml"]
    assert "If-None-Match" not in feed_requests[0] and feed_requests[1]["If-None-Match"].startswith('"')
    after = {t: query(newsflow_env, f"SELECT count(*) FROM {t}")[0][0] for t in ("articles", "entries")}  # noqa: S608
    assert after == before


def test_rerun_is_idempotent_when_server_ignores_validators(prefect_api, newsflow_env, tmp_path, news_site):
    for path in ("/rss.xml", "/atom.xml", "/feed.json"):
        news_site.routes[path].conditional = False  # always 200 with the same bytes
    feeds = [news_site.url(p) for p in ("/rss.xml", "/atom.xml", "/feed.json")]
    poll(tmp_path, feeds, newsflow_env)
    second = poll(tmp_path, feeds, newsflow_env)
    assert second["feeds_not_modified"] == 3 and second["pages_fetched"] == 0

    # A changed feed: only its new entry is fetched; the known ones are not fetched again.
    extra = make_story(99)
    news_site.routes[f"/news/{extra.slug}.html"] = page_route(extra)
    stories = news_site.stories[:3] + [extra]
    news_site.routes["/rss.xml"].body = rss_feed(
        [(s, news_site.url(f"/news/{s.slug}.html?utm_source=rss"), f"rss-{s.slug}") for s in stories]
    )
    third = poll(tmp_path, feeds, newsflow_env)
    assert third["new_entries"] == 1 and third["pages_fetched"] == 1
    assert news_site.hits[f"/news/{stories[0].slug}.html"] == 1
    assert query(newsflow_env, "SELECT count(*), count(DISTINCT article_id) FROM articles") == [(7, 7)]
    assert query(newsflow_env, "SELECT count(*), count(DISTINCT entry_key) FROM entries") == [(7, 7)]
    assert parquet_rows(newsflow_env, "articles") == 7


def test_same_story_in_two_feeds_is_stored_once_with_a_recorded_duplicate(
    prefect_api, newsflow_env, tmp_path, site, site_factory
):
    story, syndicated = make_story(1), make_story(2)
    site.routes[f"/a/{story.slug}.html"] = page_route(story)
    # Another outlet (another host) republishes the same text under its own URL and template.
    other = site_factory("127.0.0.2")
    other.routes["/copy.html"] = page_route(story, site_name="Other Outlet")
    # And a third URL on the first site declares the first one canonical.
    site.routes["/print/1.html"] = page_route(syndicated, canonical=site.url(f"/a/{story.slug}.html"))
    feed_a = rss_feed([(story, site.url(f"/a/{story.slug}.html?utm_source=a&utm_medium=rss"), "a-1")])
    feed_b = rss_feed(
        [
            (story, site.url(f"/a/{story.slug}.html?fbclid=XYZ&utm_campaign=b"), "b-1"),
            (story, other.url("/copy.html"), "b-2"),
            (syndicated, site.url("/print/1.html"), "b-3"),
        ]
    )
    site.routes["/a.xml"] = Route(body=feed_a, content_type=RSS)
    site.routes["/b.xml"] = Route(body=feed_b, content_type=RSS)

    result = poll(tmp_path, [site.url("/a.xml"), site.url("/b.xml")], newsflow_env)

    assert site.hits[f"/a/{story.slug}.html"] == 1  # fetched once for both feeds
    articles = query(
        newsflow_env,
        "SELECT url, duplicate_of, duplicate_reason, article_id FROM articles ORDER BY fetched_at, url",
    )
    by_url = {r[0].split("?")[0]: r for r in articles}
    original = by_url[site.url(f"/a/{story.slug}.html")]
    assert original[1] is None
    assert by_url[other.url("/copy.html")][1:3] == (original[3], "content_hash")
    assert by_url[site.url("/print/1.html")][1:3] == (original[3], "canonical_url")
    entries = query(
        newsflow_env, "SELECT feed_url, guid, article_id, duplicate_of, duplicate_reason, status FROM entries"
    )
    same_link = [e for e in entries if e[1] in ("a-1", "b-1")]
    assert {e[2] for e in same_link} == {original[3]}
    assert sorted(((e[3], e[4]) for e in same_link), key=str) == [(original[3], "url"), (None, None)]
    assert result["duplicates"] == 3

    # Across runs: a new feed linking the same story again adds no article, only a duplicate entry.
    site.routes["/c.xml"] = Route(
        body=rss_feed([(story, site.url(f"/a/{story.slug}.html?utm_source=c"), "c-1")]), content_type=RSS
    )
    poll(tmp_path, [site.url("/a.xml"), site.url("/b.xml"), site.url("/c.xml")], newsflow_env)
    assert site.hits[f"/a/{story.slug}.html"] == 1
    assert query(newsflow_env, "SELECT count(*) FROM articles")[0][0] == 3
    assert query(newsflow_env, "SELECT duplicate_of, status FROM entries WHERE guid = 'c-1'") == [
        (original[3], "duplicate")
    ]


def test_private_addresses_are_refused_when_not_allowed(
    prefect_api, newsflow_env, tmp_path, news_site, monkeypatch
):
    monkeypatch.setenv("NEWSFLOW_ALLOW_PRIVATE_NETWORKS", "0")
    result = poll(tmp_path, [news_site.url("/rss.xml")], newsflow_env)
    assert result["feeds_failed"] == 1
    assert result["failures"][0]["error_class"] == "blocked_address"
    assert sum(news_site.hits.values()) == 0  # not one request reached the loopback server
    assert query(newsflow_env, "SELECT error_class FROM fetch_log") == [("blocked_address",)]


def test_broken_feeds_are_recorded_and_the_run_completes(
    prefect_api, newsflow_env, tmp_path, news_site, monkeypatch
):
    monkeypatch.setenv("NEWSFLOW_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("NEWSFLOW_REQUEST_DEADLINE", "1.5")
    news_site.routes["/slow.xml"] = Route(body=b"<rss/>", delay=3.0, content_type=RSS)
    news_site.routes["/garbage.xml"] = Route(body=bytes(range(256)) * 40, content_type=RSS)
    news_site.routes["/page.xml"] = Route(body=b"<html><body><h1>Oops</h1><p>Error page</p></body></html>")
    news_site.routes["/gone.xml"] = Route(status=404, body=b"no")
    feeds = [news_site.url(p) for p in ("/slow.xml", "/garbage.xml", "/page.xml", "/gone.xml", "/rss.xml")]

    started = time.monotonic()
    result = poll(tmp_path, feeds, newsflow_env)
    assert time.monotonic() - started < 30

    assert result["feeds_failed"] == 4 and result["pages_fetched"] == 3  # the good feed went through
    classes = dict(query(newsflow_env, "SELECT url, error_class FROM fetch_log WHERE kind = 'feed'"))
    assert classes[news_site.url("/slow.xml")] == "timeout"
    assert classes[news_site.url("/garbage.xml")] in ("not_a_feed", "parse_error")
    assert classes[news_site.url("/page.xml")] == "not_a_feed"
    assert classes[news_site.url("/gone.xml")] == "http_4xx"  # a 404
    assert classes[news_site.url("/rss.xml")] is None
    state = dict(query(newsflow_env, "SELECT feed_url, consecutive_failures FROM feeds"))
    assert state[news_site.url("/slow.xml")] == 1 and state[news_site.url("/rss.xml")] == 0


def test_extraction_in_a_process_pool_gives_the_same_rows(
    prefect_api, newsflow_env, tmp_path, news_site, monkeypatch
):
    feeds = [news_site.url(p) for p in ("/rss.xml", "/atom.xml", "/feed.json")]
    poll(tmp_path, feeds, newsflow_env)
    serial = query(newsflow_env, "SELECT article_id, text, title, content_hash FROM articles ORDER BY 1")

    monkeypatch.setenv("NEWSFLOW_EXTRACT_WORKERS", "2")
    pooled_dir = tmp_path / "pooled"
    poll(tmp_path, feeds, pooled_dir)
    assert (
        query(pooled_dir, "SELECT article_id, text, title, content_hash FROM articles ORDER BY 1") == serial
    )


class _CountingList(list):
    """A batch that counts how often it is walked."""

    iterations = 0

    def __iter__(self):
        _CountingList.iterations += 1
        return super().__iter__()


def test_batch_tasks_get_their_arguments_without_prefect_walking_them(prefect_api):
    from prefect import flow, task

    from tasks.prefect_tasks import batch_task

    @batch_task("count-pages")
    def count_pages(pages):
        return len(pages)

    @task
    def count_pages_plain(pages):
        return len(pages)

    @flow
    def count_flow():
        pages = _CountingList([b"<html>page</html>"] * 5)
        walked = []
        for call in (
            lambda: count_pages(pages),
            lambda: count_pages.submit(pages).result(),
            lambda: count_pages_plain(pages),
        ):
            _CountingList.iterations = 0
            walked.append((call(), _CountingList.iterations))
        return walked

    by_batch_task, submitted, by_plain_task = count_flow()
    assert by_batch_task == (5, 0) and submitted == (5, 0)
    assert by_plain_task[0] == 5 and by_plain_task[1] > 0  # what a plain task costs: the walk
