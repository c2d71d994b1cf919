"""Backfills: URL lists, sitemaps, feed archives; idempotent, resumable, beside a poll."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from builders import ATOM, RSS, atom_feed, feeds_toml, make_story, page_route, rss_feed
from conftest import latest_artifact, subprocess_env

from newsflow.loopback import Route
from tasks.sources import parse_sitemap, read_url_list, wordpress_page_url

NEWSFLOW = [sys.executable, "-m", "newsflow.cli"]


def backfill(data_dir: Path, **kwargs) -> dict:
    from flows.backfill import backfill_flow

    return backfill_flow(data_dir=str(data_dir), **kwargs)


def rows(data_dir: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def parquet_count(data_dir: Path, table: str) -> int:
    files = list((data_dir / "parquet" / table).glob("*/*.parquet"))
    return ds.dataset(files, format="parquet").count_rows() if files else 0


@pytest.fixture
def archive_site(site):
    """A site with 12 articles."""
    site.stories = [make_story(i, seed=3) for i in range(12)]
    for s in site.stories:
        site.routes[f"/a/{s.slug}.html"] = page_route(s)
    site.page_url = lambda s: site.url(f"/a/{s.slug}.html")
    return site


# --------------------------------------------------------------------------- URL lists


def test_url_list_reading(tmp_path):
    f = tmp_path / "urls.txt"
    f.write_text(
        "# my list\n\nhttps://a.example/1  # first\nhttps://a.example/1\nftp://x.example/f\n"
        "javascript:alert(1)\n   http://b.example/2\n"
    )
    urls, rejected = read_url_list(f)
    assert urls == ["https://a.example/1", "http://b.example/2"]
    assert rejected == ["ftp://x.example/f", "javascript:alert(1)"]


def test_url_list_backfill_is_idempotent(prefect_api, newsflow_env, tmp_path, archive_site):
    urls = tmp_path / "urls.txt"
    lines = [archive_site.page_url(s) + "?utm_source=list" for s in archive_site.stories[:5]]
    urls.write_text("# five articles\n" + "\n".join(lines) + "\n" + lines[0].replace("list", "again") + "\n")
    first = backfill(newsflow_env, urls_file=str(urls))
    assert first["pages_fetched"] == 5 and first["articles_extracted"] == 5
    second = backfill(newsflow_env, urls_file=str(urls))
    assert second["pages_fetched"] == 0 and second["skipped_known"] == 5
    assert rows(newsflow_env, "SELECT count(*), count(DISTINCT url_key), count(feed_url) FROM articles") == [
        (5, 5, 0)
    ]
    assert sum(n for path, n in archive_site.hits.items() if path.startswith("/a/")) == 5
    assert parquet_count(newsflow_env, "articles") == 5
    assert rows(newsflow_env, "SELECT flow, pages_fetched FROM runs ORDER BY started_at") == [
        ("backfill", 5),
        ("backfill", 0),
    ]
    # The Prefect run shows the progress (an artifact that reached 100 %) and a report.
    assert latest_artifact("backfill-progress").data == 100.0
    assert "skipped_known | 5" in latest_artifact("backfill-report").data


# --------------------------------------------------------------------------- sitemaps


def _urlset(entries: list[tuple[str, str | None, str | None]]) -> bytes:
    """entries: (loc, lastmod, news publication date)."""
    items = []
    for loc, lastmod, news in entries:
        item = f"<url><loc>{loc}</loc>"
        if lastmod:
            item += f"<lastmod>{lastmod}</lastmod>"
        if news:
            item += (
                "<news:news><news:publication><news:name>T</news:name><news:language>en</news:language>"
                f"</news:publication><news:publication_date>{news}</news:publication_date>"
                "<news:title>A title</news:title></news:news>"
            )
        items.append(item + "</url>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:news="http://www.google.com/schemas/sitemap-news/0.9">' + "".join(items) + "</urlset>"
    ).encode()


def test_sitemap_parsing_index_gzip_and_news():
    index = (
        b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<sitemap><loc>/s1.xml.gz</loc><lastmod>2026-11-01</lastmod></sitemap></sitemapindex>"
    )
    parsed = parse_sitemap(index, "http://s.example/index.xml", 10_000)
    assert parsed.children[0][0] == "http://s.example/s1.xml.gz" and parsed.urls == ()
    body = gzip.compress(_urlset([("http://s.example/a", None, "2026-11-02T10:00:00Z")]))
    urls = parse_sitemap(body, "http://s.example/s1.xml.gz", 10_000).urls
    assert urls[0].loc == "http://s.example/a" and urls[0].date.isoformat() == "2026-11-02T10:00:00+00:00"
    assert urls[0].news_title == "A title"
    with pytest.raises(Exception, match="larger than"):
        parse_sitemap(gzip.compress(b" " * 50_000), "http://s.example/big.xml.gz", 10_000)


def test_sitemap_backfill_recurses_and_respects_the_date_window(
    prefect_api, newsflow_env, archive_site, site_factory
):
    other = site_factory("127.0.0.2")  # a child sitemap on another host
    s = archive_site.stories
    child_a = _urlset(
        [(archive_site.page_url(x), f"2026-11-{10 + i:02d}", None) for i, x in enumerate(s[:4])]
        + [(archive_site.page_url(s[4]), None, None)]  # undated: kept
    )
    child_b = gzip.compress(
        _urlset(
            [
                (archive_site.page_url(x), None, f"2026-10-{20 + i:02d}T08:00:00Z")
                for i, x in enumerate(s[5:9])
            ]
        )
    )
    archive_site.routes["/sitemap-a.xml"] = Route(body=child_a, content_type="application/xml")
    other.routes["/sitemap-b.xml.gz"] = Route(body=child_b, content_type="application/gzip")
    archive_site.routes["/old.xml"] = Route(body=_urlset([(archive_site.page_url(s[11]), None, None)]))
    archive_site.routes["/index.xml"] = Route(
        body=(
            '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{archive_site.url('/sitemap-a.xml')}</loc></sitemap>"
            f"<sitemap><loc>{other.url('/sitemap-b.xml.gz')}</loc></sitemap>"
            f"<sitemap><loc>{archive_site.url('/old.xml')}</loc><lastmod>2025-01-01</lastmod></sitemap>"
            "</sitemapindex>"
        ).encode(),
        content_type="application/xml",
    )
    from datetime import date

    result = backfill(
        newsflow_env,
        sitemap=archive_site.url("/index.xml"),
        since=date(2026, 10, 21),
        until=date(2026, 11, 11),
    )
    # In the window: 11 Nov and 10 Nov from A, the undated one, 21-23 Oct from B (news dates).
    expected = {s[0].slug, s[1].slug, s[4].slug, s[6].slug, s[7].slug, s[8].slug}
    got = {
        r[0].rsplit("/", 1)[1].removesuffix(".html") for r in rows(newsflow_env, "SELECT url FROM articles")
    }
    assert got == expected and result["pages_fetched"] == 6
    assert archive_site.hits["/old.xml"] == 0  # a child sitemap older than `since` is not even fetched
    # The sitemaps fetched are in fetch_log too (the index and two children).
    assert rows(newsflow_env, "SELECT count(*), sum(bytes) > 0 FROM fetch_log WHERE kind = 'sitemap'") == [
        (3, True)
    ]


# --------------------------------------------------------------------------- feed archives


def test_feed_archive_rfc5005(prefect_api, newsflow_env, archive_site):
    s = archive_site.stories
    pages = [s[0:4], s[4:8], s[8:12]]
    for n, chunk in enumerate(pages):
        body = atom_feed([(x, archive_site.page_url(x), f"urn:{x.slug}") for x in chunk]).decode()
        if n + 1 < len(pages):
            link = f'<link rel="next" href="/archive/{n + 2}.xml"/>'
            body = body.replace("<title>", link + "<title>", 1)
        archive_site.routes["/feed.xml" if n == 0 else f"/archive/{n + 1}.xml"] = Route(
            body=body.encode(), content_type=ATOM
        )
    result = backfill(newsflow_env, feed=archive_site.url("/feed.xml"), pages=10)
    assert result["pages_fetched"] == 12 and result["new_entries"] == 12
    assert "rfc5005" in " ".join(result["notes"])
    assert rows(newsflow_env, "SELECT count(*), count(DISTINCT feed_url) FROM entries") == [(12, 1)]
    assert rows(newsflow_env, "SELECT count(*) FROM fetch_log WHERE kind = 'feed'") == [(3,)]
    # Only two pages asked for: the first eight entries.
    again = backfill(newsflow_env, feed=archive_site.url("/feed.xml"), pages=2)
    assert again["pages_fetched"] == 0 and again["new_entries"] == 0


def test_feed_archive_wordpress_paged(prefect_api, newsflow_env, archive_site):
    s = archive_site.stories

    def paged(handler):
        query = handler.path.partition("?")[2]
        page = int(query.split("paged=")[1]) if "paged=" in query else 1
        chunk = s[(page - 1) * 5 : page * 5]
        if not chunk:
            handler._send(404, b"not found", "text/plain", {})
            return
        body = rss_feed([(x, archive_site.page_url(x), x.slug) for x in chunk])
        handler._send(200, body, RSS, {})

    archive_site.routes["/feed/"] = Route(handler=paged)
    assert wordpress_page_url("http://w.example/feed/?x=1&paged=9", 3) == "http://w.example/feed/?x=1&paged=3"
    result = backfill(newsflow_env, feed=archive_site.url("/feed/"), pages=10)
    assert result["pages_fetched"] == 12 and result["failures"] == []
    assert "wordpress-paged" in " ".join(result["notes"])


# --------------------------------------------------------------------------- kill, resume, concurrency


def _slow_site(site, stories, delay: float):
    for s in stories:
        site.routes[f"/a/{s.slug}.html"].delay = delay


def _article_files(data) -> int:
    return len(list((data / "parquet" / "articles").rglob("*.parquet")))


def test_killed_backfill_resumes_and_ends_as_if_run_once(prefect_api, tmp_path, archive_site):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(archive_site.page_url(s) for s in archive_site.stories) + "\n")
    _slow_site(archive_site, archive_site.stories, 0.3)
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_BATCH_SIZE="2")
    args = NEWSFLOW + ["backfill", "--urls", str(urls), "--data-dir", str(data)]
    killed = 0
    for _ in range(2):  # kill twice, each time just after the run's first batch is stored
        stored = _article_files(data)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _article_files(data) == stored and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 1
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert rows(data, "SELECT count(*), count(DISTINCT url_key) FROM articles") == [(12, 12)]
    assert (
        parquet_count(data, "articles") == 12
        and parquet_count(data, "fetch_log") == rows(data, "SELECT count(*) FROM fetch_log")[0][0]
    )
    assert not list(data.rglob("*.newsflow-tmp"))
    # The same as one clean run: the same articles with the same text.
    clean = tmp_path / "clean"
    assert (
        subprocess.run(
            NEWSFLOW + ["backfill", "--urls", str(urls), "--data-dir", str(clean)],
            env=subprocess_env(prefect_api, clean),
            capture_output=True,
            timeout=240,
        ).returncode
        == 0
    )
    query = "SELECT article_id, url_key, content_hash, title FROM articles ORDER BY 1"
    assert rows(data, query) == rows(clean, query)


def test_a_poll_and_a_backfill_at_once_both_finish(prefect_api, tmp_path, archive_site):
    s = archive_site.stories
    _slow_site(archive_site, s, 0.25)
    archive_site.routes["/rss.xml"] = Route(
        body=rss_feed([(x, archive_site.page_url(x), x.slug) for x in s[:6]]), content_type=RSS
    )
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([archive_site.url("/rss.xml")]))
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(archive_site.page_url(x) for x in s[4:]) + "\n")  # overlaps the feed on 2
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_BATCH_SIZE="2")
    backfill_proc = subprocess.Popen(
        NEWSFLOW + ["backfill", "--urls", str(urls), "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    poll_proc = subprocess.Popen(
        NEWSFLOW + ["poll", "--feeds", str(feeds), "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    outs = [p.communicate(timeout=240) for p in (backfill_proc, poll_proc)]
    assert backfill_proc.returncode == 0 and poll_proc.returncode == 0, outs
    assert not any("Traceback" in err or "Could not set lock" in err for _, err in outs)
    assert rows(data, "SELECT count(*), count(DISTINCT url_key) FROM articles") == [(12, 12)]
    # Every page stored once; a page the poll stored while the backfill had it in flight may be fetched twice.
    assert sum(n for p, n in archive_site.hits.items() if p.startswith("/a/")) >= 12
    assert "backfill" in outs[0][1] and "pages" in outs[0][1]  # the progress bar went to stderr


# --------------------------------------------------------------------------- re-extraction


def test_reextract_updates_in_place_and_keeps_what_it_replaces(
    prefect_api, newsflow_env, tmp_path, archive_site, monkeypatch
):
    import shutil

    import pyarrow.parquet as pq

    from tasks import load

    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(archive_site.page_url(s) for s in archive_site.stories[:4]) + "\n")
    backfill(newsflow_env, urls_file=str(urls))
    hits = sum(archive_site.hits.values())
    before = rows(newsflow_env, "SELECT article_id, text, extractor_version FROM articles ORDER BY 1")

    # Nothing changed: nothing to do.
    same = backfill(newsflow_env, reextract=True)
    assert same["articles_considered"] == 4 and same["articles_changed"] == 0

    # "Upgrade" the extractor: every article is re-extracted, the old values are kept.
    monkeypatch.setattr(load, "extractor_version", lambda: "trafilatura 99.0")
    changed = backfill(newsflow_env, reextract=True)
    assert changed["articles_changed"] == 4 and sum(archive_site.hits.values()) == hits  # no network
    after = rows(newsflow_env, "SELECT article_id, text, extractor_version FROM articles ORDER BY 1")
    assert [(a, t) for a, t, _ in after] == [(a, t) for a, t, _ in before]
    assert {v for _, _, v in after} == {"trafilatura 99.0"}
    history = rows(
        newsflow_env, "SELECT article_id, extractor_version, text FROM extraction_history ORDER BY 1"
    )
    assert [(a, v, t) for a, v, t in history] == [(a, v, t) for a, t, v in before]
    # Parquet agrees with DuckDB: the articles partition was rewritten, the history exported.
    files = list((newsflow_env / "parquet" / "articles").glob("*/*.parquet"))
    versions = {
        v for f in files for v in pq.read_table(f, columns=["extractor_version"]).column(0).to_pylist()
    }
    assert versions == {"trafilatura 99.0"} and parquet_count(newsflow_env, "articles") == 4
    assert parquet_count(newsflow_env, "extraction_history") == 4
    assert not (newsflow_env / ".staging").exists() or not any((newsflow_env / ".staging").iterdir())

    # Idempotent, and a pruned raw archive is counted, not an error.
    assert backfill(newsflow_env, reextract=True)["articles_changed"] == 0
    shutil.rmtree(newsflow_env / "raw")
    monkeypatch.setattr(load, "extractor_version", lambda: "trafilatura 100.0")
    gone = backfill(newsflow_env, reextract=True)
    assert gone["raw_missing"] == 4 and gone["articles_changed"] == 0
