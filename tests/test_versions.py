"""Article versions (issue 5): a stored URL whose text changed is a new version of its article, not
a new article or a new story. Real flows against a loopback site whose article body and feed
entry <updated> change between polls, real DuckDB and Parquet read back."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from builders import ATOM, article_page, feeds_toml, make_story

from newsflow.loopback import Route
from tasks.dedup import DedupCandidate, DedupDecision, KnownKey, article_id_for, decide_duplicates
from warehouse import maintenance as m
from warehouse.store import Warehouse, parquet_glob

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def atom(items: list[tuple]) -> bytes:
    """items: (story, link, entry id, updated)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        "<title>Versions</title><id>urn:test:versions</id><updated>2026-11-30T00:00:00Z</updated>",
    ]
    for story, link, entry_id, updated in items:
        out.append(
            f'<entry><title>{escape(story.title)}</title><link rel="alternate" href="{escape(link)}"/>'
            f"<id>{escape(entry_id)}</id><published>{story.published.isoformat()}</published>"
            f"<updated>{updated.isoformat()}</updated><author><name>{escape(story.author)}</name></author>"
            f"<summary>{escape(story.paragraphs[0][:80])}</summary></entry>"
        )
    out.append("</feed>")
    return "\n".join(out).encode()


class VersionSite:
    """One Atom feed over article pages whose body and <updated> the test changes."""

    def __init__(self, site, tmp_path: Path):
        self.site = site
        self.stories = {}
        self.updated = {}
        self.feeds_file = tmp_path / "feeds.toml"
        self.feeds_file.write_text(feeds_toml([site.url("/atom.xml")]))

    def link(self, slug: str) -> str:
        return self.site.url(f"/n/{slug}.html")

    def publish(self, story, updated: datetime | None = None, site_name: str = "Test Gazette") -> None:
        self.stories[story.slug] = story
        self.updated[story.slug] = updated or self.updated.get(story.slug) or story.published
        self.site.routes[f"/n/{story.slug}.html"] = Route(body=article_page(story, site_name=site_name))
        items = [
            (s, self.link(s.slug), f"urn:v:{s.slug}", self.updated[s.slug]) for s in self.stories.values()
        ]
        self.site.routes["/atom.xml"] = Route(body=atom(items), content_type=ATOM)

    def hits(self, slug: str) -> int:
        return self.site.hits[f"/n/{slug}.html"]


def poll(vs: VersionSite, data: Path) -> dict:
    from flows.poll import poll_flow

    # Every listed feed, due or not (the per-feed schedule would skip a feed polled seconds ago).
    return poll_flow(feeds_file=str(vs.feeds_file), data_dir=str(data), all_feeds=True)


def backfill(data: Path, **kwargs) -> dict:
    from flows.backfill import backfill_flow

    return backfill_flow(data_dir=str(data), **kwargs)


def query(data: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def rewritten(story, seed: int):
    """The same article with an entirely different text (a distance no story match would bridge)."""
    other = make_story(90 + seed, seed=seed)
    return replace(story, paragraphs=other.paragraphs)


def versions(data: Path, url_key_like: str) -> list[tuple]:
    return query(
        data,
        "SELECT version, article_id, article_key, story_id, duplicate_of, content_hash FROM articles "
        "WHERE url_key LIKE ? ORDER BY version",
        [url_key_like],
    )


def assert_consistent(data: Path) -> None:
    check = m.check_warehouse(data)
    assert check.consistent, check.problems()
    table = pq.read_table(parquet_glob(data, "articles").replace("*/*.parquet", ""))
    assert {"version", "article_key"} <= set(table.column_names)


@pytest.fixture
def vsite(site, tmp_path):
    return VersionSite(site, tmp_path)


# --------------------------------------------------------------------------- the poll


def test_a_changed_entry_is_fetched_again_and_stored_as_a_new_version(prefect_api, newsflow_env, vsite):
    data = newsflow_env
    a, b = make_story(1, seed=7), make_story(2, seed=7)
    vsite.publish(a, T0)
    vsite.publish(b, T0)
    first = poll(vsite, data)
    assert first["pages_fetched"] == 2 and first["new_versions"] == 0
    (v1,) = versions(data, f"%{a.slug}%")
    assert v1[0] == 1 and v1[1] == v1[2] == article_id_for(vsite.link(a.slug)) and v1[3] == v1[1]

    # Nothing changed: nothing is fetched again.
    assert poll(vsite, data)["pages_fetched"] == 0
    assert vsite.hits(a.slug) == 1

    # The article is rewritten and its entry's <updated> moves: fetched again, a second version.
    a2 = rewritten(a, 1)
    vsite.publish(a2, T0 + timedelta(hours=3))
    second = poll(vsite, data)
    assert second["pages_fetched"] == 1 and second["new_versions"] == 1 and second["new_entries"] == 0
    assert vsite.hits(a.slug) == 2 and vsite.hits(b.slug) == 1
    rows = versions(data, f"%{a.slug}%")
    assert [r[0] for r in rows] == [1, 2]
    old, new = rows
    assert new[1] == article_id_for(vsite.link(a.slug), 2) != old[1]  # an id of its own
    assert new[2] == old[1]  # article_key: the first version's id
    assert new[3] == old[3] == old[1]  # the story is kept, however far the text moved
    assert new[4] is None  # not a duplicate of its own earlier version
    texts = dict(query(data, "SELECT version, text FROM articles WHERE url_key LIKE ?", [f"%{a.slug}%"]))
    assert a.paragraphs[0] in texts[1] and a2.paragraphs[0] in texts[2]  # the old version is kept

    # The latest view: one row per URL, the latest version.
    latest = query(data, "SELECT url_key, version, versions, article_key, text FROM articles_latest")
    by_url = {r[0]: r[1:] for r in latest}
    assert len(latest) == 2
    assert (
        by_url[vsite.link(a.slug)][:3] == (2, 2, old[1]) and a2.paragraphs[0] in by_url[vsite.link(a.slug)][3]
    )
    assert by_url[vsite.link(b.slug)][:2] == (1, 1)
    # One article in its story (not two), one entry per feed entry, its new date stored.
    assert query(data, "SELECT articles FROM stories WHERE story_id = ?", [old[1]]) == [(1,)]
    assert query(data, "SELECT count(*) FROM entries") == [(2,)]
    assert query(data, "SELECT updated_at FROM entries WHERE link LIKE ?", [f"%{a.slug}%"]) == [
        (T0 + timedelta(hours=3),)
    ]
    assert query(data, "SELECT count(*) FROM fetch_log WHERE kind = 'page'") == [(3,)]
    assert_consistent(data)

    # The stored date is the new one: the next poll does not fetch it again.
    assert poll(vsite, data)["pages_fetched"] == 0 and vsite.hits(a.slug) == 2

    # <updated> moves but the text does not: fetched again, no new version, the date is stored.
    vsite.publish(a2, T0 + timedelta(hours=5))
    unchanged = poll(vsite, data)
    assert unchanged["pages_fetched"] == 1 and unchanged["refetched_unchanged"] == 1
    assert unchanged["new_versions"] == 0 and vsite.hits(a.slug) == 3
    assert len(versions(data, f"%{a.slug}%")) == 2
    assert poll(vsite, data)["pages_fetched"] == 0 and vsite.hits(a.slug) == 3

    # Back to the first text: a third version (it differs from the latest), not a copy of the first.
    vsite.publish(a, T0 + timedelta(hours=7))
    poll(vsite, data)
    third = versions(data, f"%{a.slug}%")
    assert [r[0] for r in third] == [1, 2, 3]
    assert third[2][4] is None and third[2][5] == third[0][5] and third[2][3] == old[1]

    # Another outlet carries the second text: it joins the story through the second version's
    # band keys, and as an exact copy it is the second version's duplicate.
    copy = replace(
        rewritten(a, 1), slug="copy-of-a", title="Another headline", published=T0 + timedelta(hours=9)
    )
    vsite.publish(copy, T0 + timedelta(hours=9), site_name="Wire Service")
    poll(vsite, data)
    ((copy_story, copy_dup, copy_reason),) = query(
        data, "SELECT story_id, duplicate_of, duplicate_reason FROM articles WHERE url_key LIKE '%copy-of-a%'"
    )
    assert copy_story == old[1] and copy_dup == new[1] and copy_reason == "content_hash"
    assert_consistent(data)

    # Recluster replays the versions in order: nothing changes.
    from warehouse.stories import recluster

    with Warehouse(data) as wh:
        report = recluster(wh, "recluster-test", "recluster-test-0001")
    assert report.changed == 0

    # Rebuilt from Parquet alone, the versions are all there.
    before = query(data, "SELECT * FROM articles ORDER BY article_id")
    (data / "newsflow.duckdb").unlink()
    m.rebuild_duckdb(data)
    assert query(data, "SELECT * FROM articles ORDER BY article_id") == before


def test_a_new_version_equal_to_another_article_is_its_duplicate(prefect_api, newsflow_env, vsite):
    data = newsflow_env
    a, b = make_story(1, seed=8), make_story(2, seed=8)
    vsite.publish(a, T0)
    vsite.publish(b, T0)
    poll(vsite, data)
    # A's page now carries B's text (a syndicated copy replacing the article).
    vsite.publish(replace(a, paragraphs=b.paragraphs), T0 + timedelta(hours=1))
    assert poll(vsite, data)["new_versions"] == 1
    rows = versions(data, f"%{a.slug}%")
    b_id = article_id_for(vsite.link(b.slug))
    assert rows[1][0] == 2 and rows[1][4] == b_id
    assert query(data, "SELECT duplicate_reason FROM articles WHERE article_id = ?", [rows[1][1]]) == [
        ("content_hash",)
    ]
    assert rows[1][3] == rows[0][3]  # still its own article's story


# --------------------------------------------------------------------------- backfill


def test_backfill_refetch_makes_versions_and_skips_by_default(prefect_api, newsflow_env, vsite, tmp_path):
    data = newsflow_env
    a, b = make_story(1, seed=9), make_story(2, seed=9)
    vsite.publish(a, T0)
    vsite.publish(b, T0)
    poll(vsite, data)
    vsite.publish(rewritten(b, 2))  # the page changes, the feed does not say so
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{vsite.link(a.slug)}\n{vsite.link(b.slug)}\n")

    skipped = backfill(data, urls_file=str(urls))
    assert skipped["skipped_known"] == 2 and skipped["pages_fetched"] == 0

    refetched = backfill(data, urls_file=str(urls), refetch=True)
    assert refetched["pages_fetched"] == 2
    assert refetched["new_versions"] == 1 and refetched["refetched_unchanged"] == 1
    assert [r[0] for r in versions(data, f"%{b.slug}%")] == [1, 2]
    assert [r[0] for r in versions(data, f"%{a.slug}%")] == [1]
    assert vsite.hits(a.slug) == 2 and vsite.hits(b.slug) == 2

    # Again: the text is the latest version's, nothing new.
    again = backfill(data, urls_file=str(urls), refetch=True)
    assert again["new_versions"] == 0 and again["refetched_unchanged"] == 2
    assert query(data, "SELECT count(*) FROM articles") == [(3,)]
    assert_consistent(data)


def test_backfill_feed_refetch_updates_the_entries(prefect_api, newsflow_env, vsite):
    data = newsflow_env
    a = make_story(1, seed=10)
    vsite.publish(a, T0)
    poll(vsite, data)
    vsite.publish(rewritten(a, 3))  # same <updated>: only --refetch fetches it again
    assert backfill(data, feed=vsite.site.url("/atom.xml"), pages=1)["pages_fetched"] == 0
    result = backfill(data, feed=vsite.site.url("/atom.xml"), pages=1, refetch=True)
    assert result["pages_fetched"] == 1 and result["new_versions"] == 1 and result["new_entries"] == 0
    assert [r[0] for r in versions(data, f"%{a.slug}%")] == [1, 2]
    assert query(data, "SELECT count(*), min(status) FROM entries") == [(1, "fetched")]
    assert_consistent(data)


def sitemap(entries: list[tuple[str, str]]) -> bytes:
    items = "".join(f"<url><loc>{loc}</loc><lastmod>{lastmod}</lastmod></url>" for loc, lastmod in entries)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{items}</urlset>'
    ).encode()


def test_sitemap_lastmod_later_than_the_last_fetch_fetches_again(prefect_api, newsflow_env, vsite):
    data = newsflow_env
    a, b = make_story(1, seed=11), make_story(2, seed=11)
    vsite.publish(a, T0)
    vsite.publish(b, T0)
    poll(vsite, data)
    vsite.publish(rewritten(a, 4))
    vsite.publish(rewritten(b, 5))
    long_ago = "2020-01-01T00:00:00Z"
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()  # after the poll's fetch
    vsite.site.routes["/sitemap.xml"] = Route(
        body=sitemap([(vsite.link(a.slug), later), (vsite.link(b.slug), long_ago)]),
        content_type="application/xml",
    )
    result = backfill(data, sitemap=vsite.site.url("/sitemap.xml"))
    assert result["pages_fetched"] == 1 and result["skipped_known"] == 1 and result["new_versions"] == 1
    assert vsite.hits(a.slug) == 2 and vsite.hits(b.slug) == 1
    assert [r[0] for r in versions(data, f"%{a.slug}%")] == [1, 2]


def test_backfill_refetch_and_reextract_exclude_each_other(newsflow_env):
    from flows.backfill import BackfillError
    from newsflow import cli_backfill

    with pytest.raises(BackfillError):
        backfill(newsflow_env, reextract=True, refetch=True)
    import argparse

    parser = argparse.ArgumentParser()
    cli_backfill.register(parser.add_subparsers())
    args = parser.parse_args(["backfill", "--reextract", "--refetch"])
    assert args.func(args) == 2


def test_reextraction_updates_each_version_from_its_own_raw_page(prefect_api, newsflow_env, vsite):
    data = newsflow_env
    a = make_story(1, seed=12)
    vsite.publish(a, T0)
    poll(vsite, data)
    a2 = rewritten(a, 6)
    vsite.publish(a2, T0 + timedelta(hours=1))
    poll(vsite, data)
    (v1, v2) = versions(data, f"%{a.slug}%")
    # Spoil both stored texts: re-extraction gives each its own page's text back.
    with Warehouse(data) as wh:
        wh.con.execute(
            "UPDATE articles SET text = 'spoilt', content_hash = 'x' WHERE url_key LIKE ?", [f"%{a.slug}%"]
        )
    result = backfill(data, reextract=True)
    assert result["articles_changed"] == 2
    texts = dict(query(data, "SELECT version, text FROM articles WHERE url_key LIKE ?", [f"%{a.slug}%"]))
    assert a.paragraphs[0] in texts[1] and a2.paragraphs[0] not in texts[1]
    assert a2.paragraphs[0] in texts[2] and a.paragraphs[0] not in texts[2]
    assert versions(data, f"%{a.slug}%") == [v1, v2]  # hashes and stories back as they were
    assert_consistent(data)


# --------------------------------------------------------------------------- the migration


def _old_migrations(monkeypatch):
    """Create warehouses as migrations 001-006 left them (before article versions). Today's code
    writes them, and its story lookups read the archive of band keys: migration 009 (one table of
    its own, touching nothing of 007's) comes first here."""
    import warehouse.store as store

    every = store._migrations()
    monkeypatch.setattr(store, "_migrations", lambda: [x for x in every if x[0] < 7 or x[0] == 9])
    return lambda: monkeypatch.setattr(store, "_migrations", lambda: every)


def _old_rows(numbers: range, fetched_at: datetime, run: str, batch: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"articles": [], "entries": []}
    for i in numbers:
        url = f"https://old.example/news/{i}.html"
        text = " ".join(make_story(i, seed=13).paragraphs)
        rows["articles"].append(
            {"article_id": article_id_for(url), "url": url, "url_key": url, "final_url": url,
             "canonical_url": url, "title": f"Old {i}", "text": text, "text_chars": len(text),
             "content_hash": f"h{i}", "fetched_at": fetched_at, "run_id": run, "load_batch": batch,
             "ingest_date": fetched_at.date()}
        )  # fmt: skip
        rows["entries"].append(
            {"entry_key": f"e{i}", "feed_url": "https://old.example/feed", "link": url, "link_key": url,
             "article_id": article_id_for(url), "status": "fetched", "first_seen_at": fetched_at,
             "run_id": run, "load_batch": batch, "ingest_date": fetched_at.date()}
        )  # fmt: skip
    return rows


def test_the_migration_upgrades_an_old_warehouse_keeping_its_rows(tmp_path, monkeypatch):
    data = tmp_path / "data"
    restore = _old_migrations(monkeypatch)
    with Warehouse(data) as wh:
        assert "version" not in {r[0] for r in wh.con.execute("DESCRIBE articles").fetchall()}
        wh.load_batch("B1", "run-old", _old_rows(range(3), T0, "run-old", "B1"))
        wh.load_batch("B2", "run-old", _old_rows(range(3, 4), T0 + timedelta(days=1), "run-old", "B2"))
        old_articles = wh.con.execute("SELECT * FROM articles ORDER BY article_id").fetchall()
        old_stories = wh.con.execute("SELECT * FROM stories ORDER BY story_id").fetchall()
        with pytest.raises(duckdb.ConstraintException):  # url_key was unique then
            wh.con.execute(
                "INSERT INTO articles SELECT * REPLACE ('dup' AS article_id) FROM articles LIMIT 1"
            )
    assert (
        "version" not in pq.read_table(parquet_glob(data, "articles").replace("*/*.parquet", "")).column_names
    )
    before_migration = tmp_path / "copy"
    shutil.copytree(data, before_migration)
    restore()

    with Warehouse(data) as wh:
        applied = wh.con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert (7,) in applied
        rows = wh.con.execute(
            "SELECT * EXCLUDE (version, article_key) FROM articles ORDER BY article_id"
        ).fetchall()
        assert rows == old_articles
        assert wh.con.execute("SELECT DISTINCT version FROM articles").fetchall() == [(1,)]
        assert wh.con.execute("SELECT count(*) FROM articles WHERE article_key <> article_id").fetchone() == (
            0,
        )
        assert wh.con.execute("SELECT * FROM stories ORDER BY story_id").fetchall() == old_stories
        assert wh.con.execute("SELECT count(*) FROM articles_latest").fetchone() == (4,)
        # No secondary index (see the migration), a version once per URL.
        assert wh.con.execute(
            "SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'articles'"
        ).fetchone() == (0,)
        with pytest.raises(duckdb.ConstraintException):
            wh.con.execute(
                "INSERT INTO articles SELECT * REPLACE ('dup' AS article_id) FROM articles LIMIT 1"
            )
        # The Parquet files get the new columns from the next writer's recovery, both partitions.
        assert wh.recover()["batches_reexported"] == 1
        # url_key is no longer unique: a second version goes in.
        v2 = wh.con.execute("SELECT * FROM articles LIMIT 1").fetch_arrow_table().to_pylist()[0]
        v2 |= {"article_id": article_id_for(v2["url_key"], 2), "version": 2, "load_batch": "B3",
               "content_hash": "h-new", "fetched_at": T0 + timedelta(days=2), "ingest_date": (T0 + timedelta(days=2)).date()}  # fmt: skip
        wh.load_batch("B3", "run-new", {"articles": [v2]})
        assert wh.con.execute("SELECT count(*) FROM articles_latest").fetchone() == (4,)
    table = pq.read_table(parquet_glob(data, "articles").replace("*/*.parquet", ""))
    assert table.num_rows == 5 and {"version", "article_key"} <= set(table.column_names)
    assert sorted(table.column("version").to_pylist()) == [1, 1, 1, 1, 2]
    assert m.check_warehouse(data).consistent

    # A warehouse whose Parquet files were all written before 007 rebuilds from them alone.
    (before_migration / "newsflow.duckdb").unlink()
    m.rebuild_duckdb(before_migration)
    con = duckdb.connect(str(before_migration / "newsflow.duckdb"), read_only=True)
    try:
        assert (
            con.execute(
                "SELECT * EXCLUDE (version, article_key) FROM articles ORDER BY article_id"
            ).fetchall()
            == old_articles
        )
        assert con.execute("SELECT count(*), min(version), max(version) FROM articles").fetchone() == (
            4,
            1,
            1,
        )
        assert con.execute("SELECT count(*) FROM articles WHERE article_key = article_id").fetchone() == (4,)
    finally:
        con.close()


# --------------------------------------------------------------------------- dedup decisions


def test_a_version_is_compared_with_other_articles_not_its_own_versions():
    known_hash = {
        "h1": [KnownKey("a1", "a1"), KnownKey("a1", "z")],  # a1's first text, and a copy of it at z
        "hb": [KnownKey("b", "b")],
    }
    known_canonical = {"https://x.example/a": [KnownKey("b", "a1")]}  # a1 was once a copy of b
    cands = [
        DedupCandidate("a3", "https://x.example/a", "h1", article_key="a1"),  # back to its first text
        DedupCandidate("a4", "https://x.example/a2", "hb", article_key="a1"),  # now b's text
    ]
    assert decide_duplicates(cands, known_canonical, known_hash, {"a1": "a1", "b": "b"}) == [
        DedupDecision("a3", None, None),
        DedupDecision("a4", "b", "content_hash"),
    ]
