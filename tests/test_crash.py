"""Crashes: polls and backfills SIGKILLed at many random moments (while fetching, extracting,
inside a DuckDB transaction, while writing Parquet), and the invariants after each kill:

- no torn file is visible to readers: every ``*.parquet`` under the warehouse reads whole, and
  ``read_parquet('<table>/*/*.parquet')`` works;
- no committed row is lost: what DuckDB held after one kill it still holds after the next;
- none is duplicated, in DuckDB or in Parquet;
- the next run completes, repairs what the killed one left (unexported batches, temporary files),
  and the warehouse ends equal to one clean run's.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from builders import RSS, feeds_toml, make_story, page_route, rss_feed
from conftest import subprocess_env

from newsflow.loopback import Route
from warehouse.files import TMP_SUFFIX

NEWSFLOW = [sys.executable, "-m", "newsflow.cli"]
PAGES = 24
KILLS = 6


def _rows(data_dir: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _invariants(data_dir: Path, before: set[str]) -> set[str]:
    """Check what a reader sees after a kill; returns the article ids committed so far."""
    parquet = data_dir / "parquet"
    visible = sorted(parquet.rglob("*.parquet")) if parquet.exists() else []
    for f in visible:  # each file a reader's glob can see is whole
        pq.read_metadata(f)
    stored: set[str] = set()
    if (data_dir / "newsflow.duckdb").exists():
        ids = [r[0] for r in _rows(data_dir, "SELECT article_id FROM articles")]
        assert len(ids) == len(set(ids))
        urls = _rows(data_dir, "SELECT count(*), count(DISTINCT url_key) FROM articles")[0]
        assert urls[0] == urls[1], "an article stored twice"
        stored = set(ids)
    assert before <= stored, f"committed articles lost: {sorted(before - stored)}"
    if any((parquet / "articles").glob("*/*.parquet")):
        con = duckdb.connect()
        try:
            glob = str(parquet / "articles" / "*" / "*.parquet")
            in_parquet = [r[0] for r in con.execute("SELECT article_id FROM read_parquet(?)", [glob]).fetchall()]
        finally:
            con.close()
        assert len(in_parquet) == len(set(in_parquet)), "an article twice in Parquet"
        assert set(in_parquet) <= stored, "Parquet holds an article DuckDB does not"
    return stored


@pytest.fixture
def crash_site(site):
    stories = [make_story(i, seed=11) for i in range(PAGES)]
    for s in stories:
        # slow enough that a run spends several seconds fetching, extracting and loading
        site.routes[f"/a/{s.slug}.html"] = page_route(s)
        site.routes[f"/a/{s.slug}.html"].delay = 0.08
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/a/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )
    site.stories = stories
    return site


def test_killed_at_random_moments_nothing_lost_nothing_torn_nothing_twice(prefect_api, tmp_path, crash_site):
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([crash_site.url("/rss.xml")]))
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(crash_site.url(f"/a/{s.slug}.html") for s in crash_site.stories) + "\n")

    def command(data: Path, kind: str) -> list[str]:
        if kind == "poll":
            return NEWSFLOW + ["poll", "--all", "--feeds", str(feeds), "--data-dir", str(data)]
        return NEWSFLOW + ["backfill", "--urls", str(urls), "--data-dir", str(data)]

    # One clean run: the reference, and how long a run takes here.
    clean = tmp_path / "clean"
    env_clean = subprocess_env(prefect_api, clean, NEWSFLOW_BATCH_SIZE="3")
    started = time.monotonic()
    done = subprocess.run(command(clean, "poll"), env=env_clean, capture_output=True, text=True, timeout=300)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr

    data = tmp_path / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_BATCH_SIZE="3")
    rng = random.Random(20261130)
    committed: set[str] = set()
    killed = 0
    for n in range(KILLS):
        kind = "poll" if n % 2 == 0 else "backfill"
        proc = subprocess.Popen(command(data, kind), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.25, 1.0) * duration)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        time.sleep(0.3)  # the killed run's extraction workers notice their parent is gone
        committed = _invariants(data, committed)
    assert killed >= KILLS // 2, f"only {killed} of {KILLS} runs were still going when killed"

    # The next runs complete and repair; the warehouse equals the clean run's.
    for kind in ("backfill", "poll"):
        done = subprocess.run(command(data, kind), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    committed = _invariants(data, committed)
    assert len(committed) == PAGES
    assert not list(data.rglob(f"*{TMP_SUFFIX}")), "orphaned temporary files left behind"
    check = subprocess.run(
        NEWSFLOW + ["warehouse", "check", "--data-dir", str(data)], env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    query = "SELECT url_key, content_hash, title, text FROM articles ORDER BY url_key"
    assert _rows(data, query) == _rows(clean, query)
