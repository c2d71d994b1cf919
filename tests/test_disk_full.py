"""Disk full while writing: the run fails cleanly with a clear message, the warehouse keeps every
batch committed before (and no part of the one that failed), and once there is space again the
next run completes as if nothing had happened.

The warehouse lives on a small tmpfs mounted by the test (root only; skipped elsewhere): a real
ENOSPC from the kernel, wherever it strikes first (raw archive, DuckDB's WAL, Parquet).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from builders import RSS, feeds_toml, make_story, measured, page_route, rss_feed
from conftest import subprocess_env
from conftest import warehouse_rows as _rows

from newsflow.loopback import Route
from warehouse.files import TMP_SUFFIX

NEWSFLOW = [sys.executable, "-m", "newsflow.cli"]
EX_IOERR = 74


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "3m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _publish(site, stories) -> None:
    for s in stories:
        site.routes[f"/a/{s.slug}.html"] = page_route(s)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/a/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )


def test_disk_full_fails_cleanly_and_the_next_run_completes(prefect_api, tmp_path, site, small_disk):
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([site.url("/rss.xml")]))
    data = small_disk / "data"
    env = subprocess_env(prefect_api, data, NEWSFLOW_BATCH_SIZE="10")
    poll = NEWSFLOW + ["poll", "--all", "--feeds", str(feeds), "--data-dir", str(data)]

    first = [make_story(i, seed=5, paragraphs=40) for i in range(30)]
    _publish(site, first)
    done = subprocess.run(poll, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _rows(data, "SELECT count(*) FROM articles") == [(30,)]

    # Far more than the disk holds: the run stops at ENOSPC.
    more = first + [make_story(i, seed=6, paragraphs=40) for i in range(120)]
    _publish(site, more)
    done = subprocess.run(poll, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == EX_IOERR, (done.returncode, done.stderr[-3000:])
    # One clear line of ours (Prefect's own log of the failed task comes before it).
    ours = [
        line for line in done.stderr.splitlines() if line.startswith("newsflow: the warehouse's disk is full")
    ]
    assert len(ours) == 1 and "No space left on device" in ours[0] and "free some space" in ours[0]

    # What a reader sees: whole batches only, every visible Parquet file whole, no partial WARC.
    stored = _rows(data, "SELECT count(*), count(DISTINCT url_key) FROM articles")[0]
    measured(
        "disk_full",
        "poll on a full disk: rows kept (whole batches of 10)",
        rows=stored[0],
        rows_twice=stored[0] - stored[1],
    )
    assert stored[0] == stored[1] and 30 <= stored[0] < 150 and (stored[0] - 30) % 10 == 0
    for f in data.rglob("*.parquet"):
        pq.read_metadata(f)
    referenced = {
        r[0] for r in _rows(data, "SELECT DISTINCT raw_path FROM articles WHERE raw_path IS NOT NULL")
    }
    on_disk = {str(p.relative_to(data)) for p in (data / "raw").rglob("*.warc.gz")}
    feeds_raw = {
        r[0] for r in _rows(data, "SELECT DISTINCT raw_path FROM fetch_log WHERE raw_path IS NOT NULL")
    }
    assert on_disk <= referenced | feeds_raw, (
        f"raw files no row refers to: {sorted(on_disk - referenced - feeds_raw)}"
    )

    # A backfill on the full disk stops the same way.
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(site.url(f"/a/{s.slug}.html") for s in more) + "\n")
    done = subprocess.run(
        NEWSFLOW + ["backfill", "--urls", str(urls), "--data-dir", str(data)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == EX_IOERR, (done.returncode, done.stderr[-3000:])
    assert any(line.startswith("newsflow: the warehouse's disk is full") for line in done.stderr.splitlines())

    # Space again: the next run completes and the warehouse is whole and consistent.
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    done = subprocess.run(poll, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _rows(data, "SELECT count(*), count(DISTINCT url_key) FROM articles") == [(150, 150)]
    assert not list(data.rglob(f"*{TMP_SUFFIX}"))
    check = subprocess.run(
        NEWSFLOW + ["warehouse", "check", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert os.path.ismount(small_disk)
