"""Extraction on a real Dask cluster (prefect-dask's DaskTaskRunner): a poll whose pages are
extracted by the worker processes of a ``distributed.LocalCluster`` stores exactly what a poll
extracting in its own process stores."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import RSS, article_page, feeds_toml, make_story, rss_feed
from conftest import warehouse_rows
from distributed import LocalCluster

from flows.dask_extraction import chunk_sizes
from newsflow.loopback import Route
from newsflow.settings import Settings

NOW = datetime(2026, 12, 1, tzinfo=UTC)
# Columns that say when and in which run and batch a row was written: the rest must be equal.
RUN_COLUMNS = {"run_id", "load_batch", "ingest_date", "fetched_at", "first_seen_at", "raw_path", "raw_offset"}


def table(data_dir: Path, name: str, key: str) -> list[tuple]:
    columns = [c for (c,) in warehouse_rows(data_dir, f"SELECT column_name FROM (DESCRIBE {name})")]  # noqa: S608
    kept = ", ".join(c for c in columns if c not in RUN_COLUMNS)
    return warehouse_rows(data_dir, f"SELECT {kept} FROM {name} ORDER BY {key}")  # noqa: S608


def task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return [r.name.rsplit("-", 1)[0] for r in runs]  # the name without its run suffix

    return asyncio.run(names())


@pytest.fixture
def wire_site(site):
    """Twelve stories in one feed, plus a copy of one under another headline and template (a
    content_hash duplicate) and a lightly edited copy of another (the same story, not a copy)."""
    stories = [make_story(i, seed=7) for i in range(12)]
    copy = replace(stories[0], slug="wire-copy", title="Wire: the same story under another headline")
    edited = replace(
        stories[1],
        slug="edited",
        title="An edited version",
        paragraphs=(*stories[1].paragraphs[:-1], "A last paragraph written by another desk entirely."),
    )
    items = []
    for s in [*stories, copy, edited]:
        site.routes[f"/news/{s.slug}.html"] = Route(
            body=article_page(s, site_name="Other Paper" if s in (copy, edited) else "Test Gazette")
        )
        items.append((s, site.url(f"/news/{s.slug}.html"), s.slug))
    site.routes["/rss.xml"] = Route(body=rss_feed(items), content_type=RSS)
    return site


def test_chunks_per_batch_stay_few_and_cover_every_page():
    assert chunk_sizes(0, 4) == []
    assert chunk_sizes(5, 4) == [5]  # under MIN_CHUNK_PAGES: one task run
    assert chunk_sizes(14, 2) == [7, 7]
    assert chunk_sizes(200, 2) == [50, 50, 50, 50]  # two per worker thread
    assert chunk_sizes(201, 64) == [8] * 19 + [7] * 7  # never (much) smaller than 8 pages
    assert all(sum(chunk_sizes(n, t)) == n for n in range(0, 300, 7) for t in (1, 2, 3, 16))


def test_dask_setting():
    assert Settings().dask is None
    assert Settings(dask="off").dask is None
    assert Settings(dask="LOCAL").dask == "local"
    assert Settings(dask="10.0.0.5:8786").dask == "tcp://10.0.0.5:8786"
    with pytest.raises(ValueError, match="scheduler address"):
        Settings(dask="http://scheduler/")


def test_poll_on_a_dask_cluster_stores_what_a_local_poll_stores(
    prefect_api, newsflow_env, tmp_path, wire_site
):
    from flows.backfill import backfill_flow
    from flows.poll import poll_flow

    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml([wire_site.url("/rss.xml")]))
    on_dask_dir, local_dir = tmp_path / "on-dask", tmp_path / "local"

    started = time.monotonic()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        workers = set(cluster.scheduler_info["workers"])
        on_dask = poll_flow(
            feeds_file=str(feeds_file), data_dir=str(on_dask_dir), now=NOW, dask=cluster.scheduler_address
        )
        # Re-extraction of the stored raw pages on the cluster finds the same texts.
        reextracted = backfill_flow(reextract=True, data_dir=str(on_dask_dir), dask=cluster.scheduler_address)
    on_dask_seconds = time.monotonic() - started
    local = poll_flow(feeds_file=str(feeds_file), data_dir=str(local_dir), now=NOW)
    local_seconds = time.monotonic() - started - on_dask_seconds

    assert on_dask["articles_extracted"] == 14 and on_dask["failures"] == []
    assert {k: v for k, v in on_dask.items() if k != "run_id"} == {
        k: v for k, v in local.items() if k != "run_id"
    }
    # One task run per chunk (14 pages, 2 worker threads: 2 chunks), none per page; none in the
    # local run.
    assert task_run_names(on_dask["run_id"]).count("extract-on-worker") == 2
    assert "extract-pages" not in task_run_names(on_dask["run_id"])
    assert "extract-on-worker" not in task_run_names(local["run_id"])
    assert reextracted["articles_considered"] == 14 and reextracted["articles_changed"] == 0
    assert task_run_names(reextracted["run_id"]).count("extract-on-worker") == 2
    assert len(workers) == 2

    for name, key in (("articles", "article_id"), ("entries", "entry_key")):
        dask_rows, local_rows = table(on_dask_dir, name, key), table(local_dir, name, key)
        assert len(dask_rows) == 14 and dask_rows == local_rows
    stories = "SELECT story_id, list(article_id ORDER BY article_id) FROM articles GROUP BY 1 ORDER BY 1"
    assert warehouse_rows(on_dask_dir, stories) == warehouse_rows(local_dir, stories)
    # Not a vacuous comparison: texts were extracted, a copy found, a story of two articles.
    texts = warehouse_rows(on_dask_dir, "SELECT count(*) FROM articles WHERE text_chars > 500")
    assert texts == [(14,)]
    assert warehouse_rows(
        on_dask_dir, "SELECT count(*) FROM articles WHERE duplicate_reason = 'content_hash'"
    ) == [(1,)]
    assert max(len(ids) for _, ids in warehouse_rows(on_dask_dir, stories)) >= 2
    print(
        f"poll on Dask (cluster start and stop included) {on_dask_seconds:.1f} s, local poll {local_seconds:.1f} s"
    )
