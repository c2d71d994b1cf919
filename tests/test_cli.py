"""The command line, as a user runs it: subprocesses of the installed ``newsflow`` command.

They share the session's Prefect test server (PREFECT_API_URL) instead of each starting one."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import duckdb
import pytest
from builders import RSS, feeds_toml, make_story, page_route, rss_feed
from conftest import subprocess_env

from newsflow.loopback import Route
from warehouse.report import collect

NEWSFLOW = [sys.executable, "-m", "newsflow.cli"]


def run(args: list[str], env: dict, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(NEWSFLOW + args, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        NEWSFLOW + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def small_site(site, tmp_path):
    stories = [make_story(i, seed=7) for i in range(4)]
    # For the README's phrase search: one story holds the phrase, another both words apart.
    p0, p1 = stories[0].paragraphs, stories[1].paragraphs
    stories[0] = replace(stories[0], paragraphs=(p0[0] + " Talks on a security guarantee went on.", *p0[1:]))
    stories[1] = replace(
        stories[1], paragraphs=(p1[0] + " Security was tight; no guarantee was given.", *p1[1:])
    )
    for s in stories:
        site.routes[f"/p/{s.slug}.html"] = page_route(s)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/p/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml([site.url("/rss.xml")]))
    site.feeds_file = feeds_file
    site.stories = stories
    return site


def test_poll_then_sql_in_every_format(prefect_api, tmp_path, small_site):
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data)
    done = run(["poll", "--feeds", str(small_site.feeds_file), "--data-dir", str(data)], env)
    assert done.returncode == 0, done.stderr
    assert "Run summary" in done.stdout and re.search(r"articles extracted\s+│\s+4", done.stdout)

    sql = "SELECT title, author FROM articles ORDER BY title"
    as_json = run(["sql", "--data-dir", str(data), "--format", "json", sql], env)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["title"] for r in rows] == sorted(s.title for s in small_site.stories)

    as_csv = run(["sql", "--data-dir", str(data), "--format", "csv", sql], env)
    parsed = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert parsed[0] == ["title", "author"] and len(parsed) == 5

    table = run(["sql", "--data-dir", str(data), "SELECT count(*) AS n FROM articles"], env)
    assert table.returncode == 0 and "│ 4 │" in table.stdout.replace(" 4 ", " 4 ")

    bad = run(["sql", "--data-dir", str(data), "SELECT * FROM no_such_table"], env)
    assert bad.returncode == 1 and "no_such_table" in bad.stderr and "Traceback" not in bad.stderr


def test_readme_queries_run_as_written(prefect_api, tmp_path, small_site, monkeypatch):
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data)
    assert run(["poll", "--feeds", str(small_site.feeds_file), "--data-dir", str(data)], env).returncode == 0
    # The phrase search reads the full-text index, which maintenance builds.
    assert run(["warehouse", "maintain", "--data-dir", str(data)], env).returncode == 0
    monkeypatch.chdir(tmp_path)  # the README's paths are relative to where ./data is
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    assert len(blocks) >= 5
    for sql in blocks:
        con.execute(sql).fetchall()
    shipped = [p.name for p in files("warehouse").joinpath("queries").iterdir() if p.name.endswith(".sql")]
    for name in shipped:
        sql = files("warehouse").joinpath("queries", name).read_text()
        if not re.search(r"\$[a-z_]+", sql):  # queries with $parameters are run by their callers
            con.execute(sql).fetchall()
    assert collect(data, days=2).articles.total == 4  # the health report's (report_*.sql)
    counts = con.execute(
        files("warehouse").joinpath("queries", "articles_per_outlet_per_day.sql").read_text()
    )
    assert sum(r[2] for r in counts.fetchall()) == 4
    # The phrase search through the index finds what a scan finds.
    phrase = files("warehouse").joinpath("queries", "phrase_search.sql").read_text()
    scan = (
        "SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.url "
        "FROM articles_latest a LEFT JOIN feeds f USING (feed_url) "
        "WHERE a.duplicate_of IS NULL AND a.text ILIKE '%security guarantee%'"
    )
    found = con.execute(phrase).fetchall()
    assert sorted(found) == sorted(con.execute(scan).fetchall())
    assert [r[2] for r in found] == [small_site.stories[0].title]


def test_two_polls_at_once_both_complete_and_nothing_is_duplicated(prefect_api, tmp_path, small_site):
    for s in small_site.stories:  # slow pages keep the first run inside the warehouse a while
        small_site.routes[f"/p/{s.slug}.html"].delay = 1.2
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data)
    args = ["poll", "--feeds", str(small_site.feeds_file), "--data-dir", str(data)]
    first, second = start(args, env), start(args, env)
    outs = [p.communicate(timeout=240) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert any("waiting up to" in err for _, err in outs)  # the one that waited said so
    assert not any("Could not set lock" in err or "Traceback" in err for _, err in outs)
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT url_key) FROM articles").fetchone() == (4, 4)
    assert con.execute("SELECT count(*) FROM entries").fetchone()[0] == 4
    assert sum(n for p, n in small_site.hits.items() if p.startswith("/p/")) == 4


def test_a_second_writer_gives_up_cleanly_after_the_lock_timeout(prefect_api, tmp_path, small_site):
    from warehouse.lock import WriterLock

    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_LOCK_TIMEOUT="1")
    with WriterLock(data, timeout=1, purpose="test holder"):
        done = run(["poll", "--feeds", str(small_site.feeds_file), "--data-dir", str(data)], env)
    assert done.returncode == 75
    assert "test holder" in done.stderr and "Nothing was changed" in done.stderr
    assert "Traceback" not in done.stderr
    assert sum(small_site.hits.values()) == 0


def test_sql_reads_parquet_while_a_writer_holds_the_database(prefect_api, tmp_path, small_site):
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data)
    assert run(["poll", "--feeds", str(small_site.feeds_file), "--data-dir", str(data)], env).returncode == 0
    writer = duckdb.connect(str(data / "newsflow.duckdb"))  # holds DuckDB's file lock
    try:
        done = run(
            ["sql", "--data-dir", str(data), "--format", "json", "SELECT count(*) AS n FROM articles"], env
        )
    finally:
        writer.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 4}] and "Parquet" in done.stderr


def test_poll_without_network_reports_every_feed_failure(prefect_api, tmp_path):
    """The shipped feed list, with no route to the Internet: the run completes and says why."""
    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_ALLOW_PRIVATE_NETWORKS="0", NEWSFLOW_CONNECT_TIMEOUT="2")
    repo_feeds = Path(__file__).resolve().parents[1] / "feeds.toml"
    done = run(["poll", "--feeds", str(repo_feeds), "--data-dir", str(data)], env)
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    failed = con.execute("SELECT count(*), count(error_class) FROM fetch_log WHERE kind = 'feed'").fetchone()
    feeds = con.execute("SELECT count(*) FROM feeds").fetchone()[0]
    assert failed[0] == feeds >= 5 and failed[1] == feeds  # every feed has a recorded error class
    assert "teleSUR" in repo_feeds.read_text()


def test_feeds_list(tmp_path, small_site):
    done = run(
        ["feeds", "list", "--feeds", str(small_site.feeds_file), "--format", "json"],
        {**subprocess_env("", tmp_path)},
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)[0]["url"] == small_site.url("/rss.xml")


def _must_not_appear() -> dict[str, list[str]]:
    """From the demo site's EXPECTED.md: per article, phrases that are boilerplate."""
    text = files("newsflow.demo").joinpath("site", "EXPECTED.md").read_text()
    out: dict[str, list[str]] = {}
    for section in text.split("\n### ")[1:]:
        slug = section.split("\n", 1)[0].strip()
        if "Must NOT appear" in section:
            block = section.split("Must NOT appear", 1)[1].split("- May appear", 1)[0]
            out[slug] = re.findall(r'^\s*- "(.+)"\s*$', block, re.M)
    return out


def test_demo(prefect_api, tmp_path):
    data = tmp_path / "demo"
    env = subprocess_env(prefect_api, data)
    done = run(["demo", "--data-dir", str(data)], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Run summary" in out and "Example query" in out and "Harbour Gazette" in out
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM articles WHERE text IS NOT NULL").fetchone()[0] == 8
    # The mobile copy (same page, no canonical link) is an exact duplicate by content hash.
    assert con.execute(
        "SELECT d.url LIKE '%/m/ferry-bus-strike.html', o.url LIKE '%/articles/ferry-bus-strike.html%' "
        "FROM articles d JOIN articles o ON o.article_id = d.duplicate_of WHERE d.duplicate_reason = 'content_hash'"
    ).fetchall() == [(True, True)]
    # The storm story is in both feeds with different tracking parameters: fetched once.
    assert (
        con.execute("SELECT count(*) FROM articles WHERE url LIKE '%harbour-storm-damage%'").fetchone()[0]
        == 1
    )
    assert con.execute("SELECT count(*) FROM entries WHERE duplicate_reason = 'url'").fetchone()[0] == 1
    texts = dict(
        con.execute(
            "SELECT regexp_extract(url, 'articles/([a-z0-9-]+)\\.html', 1), text FROM articles "
            "WHERE url LIKE '%/articles/%'"
        ).fetchall()
    )
    phrases = _must_not_appear()
    assert set(phrases) == set(texts)
    leaks = {slug: [p for p in ps if p.lower() in texts[slug].lower()] for slug, ps in phrases.items()}
    assert not any(leaks.values()), leaks


def test_malloc_arenas_are_capped_on_glibc():
    import platform

    from newsflow.cli import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert limit_malloc_arenas() is True
