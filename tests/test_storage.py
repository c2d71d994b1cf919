"""The warehouse's Parquet files and raw archive on another filesystem (NEWSFLOW_STORAGE_URL):
an fsspec in-memory filesystem, and a second local directory given as a file:// URL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import fsspec
import pytest
from builders import RSS, feeds_toml, make_story, page_route, rss_feed
from conftest import warehouse_rows
from test_warehouse import DAY1, _result, make_rows

from newsflow.loopback import Route
from tasks.load import RunContext, archive_raw
from tasks.reextract import Candidate, raw_jobs
from warehouse.maintenance import check_warehouse, compact_partitions, prune_raw_archive, rebuild_duckdb
from warehouse.queries import parquet_connection
from warehouse.raw_archive import read_raw_record
from warehouse.storage import STORAGE_RECORD, StorageMismatch
from warehouse.store import Warehouse


@pytest.fixture
def memory_url():
    url = f"memory://newsflow-test-{uuid.uuid4().hex[:12]}"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def test_warehouse_on_an_in_memory_filesystem(tmp_path, memory_url):
    ctx = RunContext(run_id="0123456789abcdef", flow="test", started_at=DAY1)
    data = tmp_path / "data"
    fs = fsspec.filesystem("memory")
    pages = [
        _result(f"https://courier.example/news/p{i}.html", DAY1, body=f"<html>{i}</html>".encode())
        for i in range(3)
    ]
    with Warehouse(data, memory_url) as wh:
        storage = wh.storage
        refs = archive_raw(wh.storage, "B1", pages)
        wh.load_batch("B1", ctx.run_id, make_rows(ctx, "B1", 3, DAY1))
        wh.load_batch("B2", ctx.run_id, make_rows(ctx, "B2", 2, DAY1, prefix="q"))
        wh.export_snapshots()
    assert storage.protocol == "memory" and not storage.local
    # Only the DuckDB side is in the data dir; the files are in memory, and the URL is recorded.
    assert not (data / "parquet").exists() and not (data / "raw").exists()
    assert (data / STORAGE_RECORD).read_text().strip() == storage.url
    assert len(fs.glob(storage.path("parquet", "articles", "ingest_date=2024-03-01", "*.parquet"))) == 2
    assert not list(data.rglob("*.newsflow-tmp"))

    # The raw archive read back (a seek in the stored object), as re-extraction reads it.
    raw_path, offset = refs[1]
    assert read_raw_record(data, raw_path, offset)[2] == b"<html>1</html>"
    jobs, missing = raw_jobs(data, [Candidate("a1", pages[2].final_url, raw_path, refs[2][1])])
    assert [j.body for j in jobs] == [b"<html>2</html>"] and missing == []

    # DuckDB reads the Parquet files through the registered filesystem (the readers' fallback).
    con = parquet_connection(data)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT ingest_date) FROM articles").fetchone() == (5, 1)
        assert con.execute("SELECT count(*) FROM entries").fetchone()[0] == 5
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # the snapshot is there
    finally:
        con.close()

    # The writer and the readers follow the record; another URL is refused.
    with Warehouse(data) as wh:
        assert wh.storage == storage
        wh.rewrite_partitions("articles", [DAY1.date()])  # one file instead of two, in place
    assert [p.rsplit("/", 1)[1][:10] for p in fs.glob(storage.path("parquet", "articles", "*", "*"))] == [
        "compacted-"
    ]
    with pytest.raises(StorageMismatch, match="keeps its Parquet files"):
        Warehouse(data, f"file://{tmp_path / 'elsewhere'}")

    # Maintenance through the filesystem: check, compaction, rebuild, retention.
    assert check_warehouse(data).consistent
    report = compact_partitions(data, "entries", before=date(2024, 3, 2))
    assert [(p.files_merged, p.rows, p.atomic) for p in report.partitions] == [(2, 5, False)]
    assert len(fs.glob(storage.path("parquet", "entries", "*", "*.parquet"))) == 1
    assert check_warehouse(data).consistent
    rebuilt = rebuild_duckdb(data)
    assert rebuilt.rows["articles"] == 5 and rebuilt.rows["entries"] == 5
    today = datetime.now(UTC).date()
    pruned = prune_raw_archive(data, 1, today=today + timedelta(days=2))
    assert pruned.days_removed == [today.isoformat()] and pruned.files_removed == 1
    assert raw_jobs(data, [Candidate("a1", "u", raw_path, offset)]) == ([], ["a1"])


@pytest.fixture
def small_site(site):
    stories = [make_story(i) for i in range(3)]
    for s in stories:
        site.routes[f"/news/{s.slug}.html"] = page_route(s)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/news/{s.slug}.html"), f"rss-{s.slug}") for s in stories]),
        content_type=RSS,
    )
    return site


def test_poll_sql_and_reextraction_with_the_files_in_a_second_directory(
    prefect_api, newsflow_env, tmp_path, small_site, monkeypatch, capsys
):
    from flows.backfill import backfill_flow
    from flows.poll import poll_flow
    from newsflow.cli import main
    from tasks import load

    files = tmp_path / "files"
    monkeypatch.setenv("NEWSFLOW_STORAGE_URL", f"file://{files}")
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml([small_site.url("/rss.xml")]))
    result = poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), all_feeds=True)
    assert result["articles_extracted"] == 3, result

    # Parquet and raw archive in the second directory, the DuckDB file in the data dir.
    assert (newsflow_env / "newsflow.duckdb").is_file()
    assert not (newsflow_env / "parquet").exists() and not (newsflow_env / "raw").exists()
    assert len(list((files / "raw").glob("*/*.warc.gz"))) == 2  # the feed's batch, the pages' batch
    con = parquet_connection(newsflow_env)  # DuckDB reading the Parquet files there
    try:
        from_parquet = con.execute("SELECT article_id, text FROM articles ORDER BY 1").fetchall()
    finally:
        con.close()
    assert from_parquet == warehouse_rows(newsflow_env, "SELECT article_id, text FROM articles ORDER BY 1")
    assert len(from_parquet) == 3

    monkeypatch.delenv("NEWSFLOW_STORAGE_URL")  # readers find the files from the record
    assert (
        main(
            ["sql", "--data-dir", str(newsflow_env), "--format", "json", "SELECT count(*) AS n FROM articles"]
        )
        == 0
    )
    assert '"n": 3' in capsys.readouterr().out

    # Re-extraction from the raw archive there, without the network; the rewritten partition is there too.
    hits = sum(small_site.hits.values())
    monkeypatch.setattr(load, "extractor_version", lambda: "trafilatura 99.0")
    changed = backfill_flow(data_dir=str(newsflow_env), reextract=True)
    assert changed["articles_changed"] == 3 and sum(small_site.hits.values()) == hits
    con = parquet_connection(newsflow_env)
    try:
        assert con.execute("SELECT DISTINCT extractor_version FROM articles").fetchall() == [
            ("trafilatura 99.0",)
        ]
        assert con.execute("SELECT count(*) FROM extraction_history").fetchone()[0] == 3
    finally:
        con.close()
    check = check_warehouse(newsflow_env)
    assert check.consistent, check.problems()
    assert not (files / ".staging").exists() and not (newsflow_env / ".staging").exists()
