"""Warehouse maintenance on a real warehouse (built by the poll flow against a loopback site):
compaction (atomic for readers, safe with recovery), rebuild, check, raw-archive pruning, the
maintenance flow on the Prefect engine, and the ``newsflow warehouse`` commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from builders import RSS, feeds_toml, make_story, page_route, rss_feed
from conftest import TEST_ENV, latest_artifact, subprocess_env

from newsflow.loopback import LoopbackSite, Route
from warehouse import maintenance as m
from warehouse.files import TMP_SUFFIX
from warehouse.lock import WriterLock
from warehouse.store import APPEND_TABLES, SNAPSHOT_TABLES, Warehouse, parquet_glob

TODAY = datetime.now(UTC).date()
TOMORROW = TODAY + timedelta(days=1)
PAST = date(2024, 5, 1)
KEYS = m.KEYS
ALL_TABLES = APPEND_TABLES + SNAPSHOT_TABLES
POLLED = ("entries", "articles", "fetch_log")  # the append tables a poll writes


# --------------------------------------------------------------------------- a real warehouse


def _publish(site: LoopbackSite, stories) -> None:
    for s in stories:
        site.routes[f"/n/{s.slug}.html"] = page_route(s)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/n/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )


@pytest.fixture(scope="module")
def site():
    with LoopbackSite("127.0.0.1") as s:
        yield s


@pytest.fixture(scope="module")
def built(prefect_api, site, tmp_path_factory) -> Path:
    """Two polls with batches of 2 pages (5 then 3 new stories): several files per partition."""
    from flows.poll import poll_flow

    root = tmp_path_factory.mktemp("built")
    data = root / "data"
    feeds_file = root / "feeds.toml"
    feeds_file.write_text(feeds_toml([site.url("/rss.xml")]))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**TEST_ENV, "NEWSFLOW_BATCH_SIZE": "2", "NEWSFLOW_DATA_DIR": str(data)}.items():
            mp.setenv(key, value)
        stories = [make_story(i, seed=3) for i in range(5)]
        _publish(site, stories)
        assert poll_flow(feeds_file=str(feeds_file), data_dir=str(data))["articles_extracted"] == 5
        stories += [make_story(i, seed=3) for i in range(5, 8)]
        _publish(site, stories)
        assert (
            poll_flow(feeds_file=str(feeds_file), data_dir=str(data), all_feeds=True)["articles_extracted"]
            == 3
        )
    site.feeds_file = feeds_file
    site.stories = stories
    return data


@pytest.fixture
def data(built, tmp_path) -> Path:
    """A private copy of the built warehouse."""
    copy = tmp_path / "data"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def env(monkeypatch, data) -> Path:
    for key, value in {**TEST_ENV, "NEWSFLOW_DATA_DIR": str(data)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NEWSFLOW_RAW_RETENTION_DAYS", raising=False)
    return data


def add_past_batches(data: Path, day: date, batches: int, tag: str, days: int = 1) -> list[str]:
    """Copies of existing rows (new keys) loaded with ``Warehouse.load_batch``: ``batches`` batches,
    each with rows in the partitions of ``days`` days from ``day`` (one file per batch and day)."""
    names = []
    with Warehouse(data) as wh:
        source = {
            t: wh.con.execute(f"SELECT * FROM {t} ORDER BY {KEYS[t]} LIMIT 2").fetch_arrow_table().to_pylist()  # noqa: S608
            for t in POLLED
        }
        for b in range(batches):
            batch = f"{day:%Y%m%d}T000000-{tag}-{b:04d}"
            rows = {t: [] for t in POLLED}
            for d in range(days):
                when = day + timedelta(days=d)
                for t, items in source.items():
                    for r in items:
                        r = {
                            **r,
                            KEYS[t]: f"{r[KEYS[t]]}-{tag}{b}-{d}",
                            "load_batch": batch,
                            "ingest_date": when,
                        }
                        r["run_id"] = f"run-{tag}"
                        if t == "articles":
                            r["url_key"] = f"{r['url_key']}#{tag}{b}-{d}"
                        rows[t].append(r)
            wh.load_batch(batch, f"run-{tag}", rows)
            names.append(batch)
    return names


def parquet_rows(data: Path, table: str) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(
            f"SELECT * FROM read_parquet(?, hive_partitioning = true) ORDER BY {KEYS[table]}",  # noqa: S608
            [parquet_glob(data, table)],
        ).fetchall()
    finally:
        con.close()


def partition_files(data: Path, table: str) -> dict[str, list[str]]:
    if not (data / "parquet" / table).is_dir():
        return {}
    return {
        p.name: sorted(f.name for f in p.iterdir())
        for p in sorted((data / "parquet" / table).iterdir())
        if p.name.startswith("ingest_date=")
    }


def db_dump(data: Path) -> dict[str, tuple]:
    """Every row and every column type of every table (bookkeeping timestamps set aside)."""
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    try:
        out = {}
        for t in ALL_TABLES:
            out[t] = (
                con.execute(f"DESCRIBE {t}").fetchall(),
                con.execute(f"SELECT * FROM {t} ORDER BY {KEYS[t]}").fetchall(),  # noqa: S608
            )
        out["load_batches"] = (
            con.execute("DESCRIBE load_batches").fetchall(),
            con.execute(
                "SELECT load_batch, run_id, tables, exported FROM load_batches ORDER BY 1"
            ).fetchall(),
        )
        out["schema_migrations"] = ([], con.execute("SELECT version, name FROM schema_migrations").fetchall())
        return out
    finally:
        con.close()


def leftovers(data: Path) -> list[Path]:
    return [p for p in data.rglob("*") if p.name.endswith(TMP_SUFFIX) or m.STAGING_DIR in p.parts]


# --------------------------------------------------------------------------- compaction


def test_compaction_merges_past_partitions_and_keeps_every_row(data):
    before = {t: partition_files(data, t) for t in POLLED}
    assert len(before["articles"][f"ingest_date={TODAY}"]) >= 4  # 8 pages in batches of 2
    rows = {t: parquet_rows(data, t) for t in POLLED}

    # Today's partition is still being written: left alone by default.
    assert m.compact_partitions(data, "articles").partitions == []
    assert partition_files(data, "articles") == before["articles"]

    for t in POLLED:
        report = m.compact_partitions(data, t, before=TOMORROW)
        assert [p.partition for p in report.partitions] == [f"ingest_date={TODAY}"]
        (done,) = report.partitions
        assert done.atomic and done.files_merged == len(before[t][done.partition]) and done.files_kept == 0
        assert done.rows == len(rows[t]) and done.duplicate_rows_dropped == 0
        files = partition_files(data, t)[done.partition]
        assert files == [done.merged_file] and done.merged_file.startswith("compacted-")
        assert (
            pq.ParquetFile(data / "parquet" / t / done.partition / done.merged_file).metadata.num_rows
            == done.rows
        )
        assert parquet_rows(data, t) == rows[t]  # the same rows, the same values
        # Once compact, nothing more to do.
        again = m.compact_partitions(data, t, before=TOMORROW)
        assert again.partitions == [] and again.partitions_already_compact == 1
    assert leftovers(data) == []
    assert m.check_warehouse(data).consistent


def test_compaction_merges_again_with_later_files_and_leaves_unexported_batches_to_recovery(
    data, monkeypatch
):
    add_past_batches(data, PAST, 3, "old")
    assert m.compact_partitions(data, "entries", before=TODAY).files_merged == 3
    add_past_batches(data, PAST, 1, "late")  # a late file next to the merged one
    # A batch whose export is interrupted after its entries file: committed, not exported.
    real_export = Warehouse._export_append

    def crash_after_entries(self, table, load_batch, part):
        if table != "entries":
            raise OSError("disk full")
        real_export(self, table, load_batch, part)

    monkeypatch.setattr(Warehouse, "_export_append", crash_after_entries)
    with pytest.raises(OSError, match="disk full"):
        add_past_batches(data, PAST, 1, "crash")
    monkeypatch.setattr(Warehouse, "_export_append", real_export)
    unexported = f"{PAST:%Y%m%d}T000000-crash-0000.parquet"
    assert unexported in partition_files(data, "entries")[f"ingest_date={PAST}"]
    assert m.check_warehouse(data).unexported_batches == [unexported.removesuffix(".parquet")]

    report = m.compact_partitions(data, "entries", before=TODAY)
    (done,) = report.partitions
    # The merged file and the late batch are merged; the unexported batch stays as it is, so that
    # recovery rewrites it under its own name and nothing is counted twice.
    assert done.files_merged == 2 and done.files_kept == 1
    assert sorted(partition_files(data, "entries")[done.partition]) == sorted([done.merged_file, unexported])
    with Warehouse(data) as wh:
        assert wh.recover()["batches_reexported"] == 1
    check = m.check_warehouse(data)
    assert check.consistent, check.problems()


def test_readers_never_see_a_torn_or_doubled_partition_during_compactions(data):
    days = 30
    add_past_batches(data, PAST, 3, "old", days=days)
    table = "fetch_log"
    sizes = {p: pq.read_table(data / "parquet" / table / p).num_rows for p in partition_files(data, table)}
    expected = sum(sizes.values())
    assert len(sizes) == days + 1 and all(len(f) > 1 for f in partition_files(data, table).values())
    glob = parquet_glob(data, table)
    stop = threading.Event()
    by_glob: list[int] = []  # DuckDB's own glob, as the README's query does it
    by_listing: list[int] = []  # one listing of each partition directory, then read_parquet(files)
    errors: list[str] = []

    def glob_reader():
        con = duckdb.connect()
        while not stop.is_set():
            try:
                sql = "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)"
                by_glob.append(con.execute(sql, [glob]).fetchone()[0])
            except duckdb.IOException as exc:  # listed just before a swap, opened after it
                errors.append(str(exc))
        con.close()

    def listing_reader():
        con = duckdb.connect()
        while not stop.is_set():
            files = []
            for part in os.scandir(data / "parquet" / table):
                files += [f.path for f in os.scandir(part.path) if f.name.endswith(".parquet")]
            try:
                by_listing.append(con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0])
            except duckdb.IOException as exc:
                errors.append(str(exc))
        con.close()

    readers = [threading.Thread(target=glob_reader), threading.Thread(target=listing_reader)]
    for r in readers:
        r.start()
    swaps = 0
    try:
        time.sleep(0.1)
        for d in range(1, days + 1):  # one past partition at a time, over about two seconds
            swaps += len(m.compact_partitions(data, table, before=PAST + timedelta(days=d)).partitions)
            time.sleep(0.06)
        swaps += len(m.compact_partitions(data, table, before=TOMORROW).partitions)
        time.sleep(0.1)
    finally:
        stop.set()
        for r in readers:
            r.join()
    print(
        f"\n{swaps} swaps; listing reader: {len(by_listing)} reads; DuckDB glob reader: {len(by_glob)} reads, "
        f"{sum(n != expected for n in by_glob)} short; {len(errors)} retryable errors"
    )
    assert swaps == days + 1 and len(by_listing) >= 30 and len(by_glob) >= 30
    assert all(len(f) == 1 for f in partition_files(data, table).values())
    # A reader that lists each directory once sees every row exactly once, at every instant.
    assert [n for n in by_listing if n != expected] == []
    # DuckDB's glob stats each listed name by path again: one that straddles a swap can drop that
    # partition from its answer (see warehouse/maintenance.py). Never a doubled row, never part of
    # a partition, and rare.
    whole_partitions = {0}
    for size in sizes.values():
        whole_partitions |= {s + size for s in whole_partitions}
    assert all(n <= expected and expected - n in whole_partitions for n in by_glob)
    assert sum(n != expected for n in by_glob) <= max(1, len(by_glob) // 50)
    vanished = ("No such file or directory", "No files found that match the pattern")
    assert all(any(v in e for v in vanished) for e in errors), [
        e for e in errors if not any(v in e for v in vanished)
    ]
    assert len(parquet_rows(data, table)) == expected and leftovers(data) == []


def test_replace_partition_swaps_in_the_rows_duckdb_holds(data):
    """What a re-extraction uses (``Warehouse.rewrite_partition``): one partition rewritten whole."""
    part = f"ingest_date={TODAY}"
    rows = parquet_rows(data, "articles")
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    fresh = con.execute("SELECT * FROM articles WHERE ingest_date = ?", [TODAY]).fetch_arrow_table()
    con.close()

    m.replace_partition(data, "articles", TODAY, fresh.drop_columns(["ingest_date"]))

    (only,) = partition_files(data, "articles")[part]
    assert only.startswith(m.COMPACTED_PREFIX) and parquet_rows(data, "articles") == rows
    assert m.check_warehouse(data).consistent and leftovers(data) == []
    # A later compaction takes the rewritten file like a merged one.
    add_past_batches(data, PAST, 2, "old")
    m.replace_partition(
        data, "entries", PAST, pq.read_table(data / "parquet" / "entries" / f"ingest_date={PAST}")
    )
    assert m.compact_partitions(data, "entries", before=TODAY).partitions == []
    add_past_batches(data, PAST, 1, "late")
    assert m.compact_partitions(data, "entries", before=TODAY).files_merged == 2
    assert m.check_warehouse(data).consistent and leftovers(data) == []


# --------------------------------------------------------------------------- rebuild


def test_rebuild_gives_identical_tables_and_the_warehouse_keeps_working(env, site):
    data = env
    add_past_batches(data, PAST, 3, "old")
    m.compact_partitions(data, "articles", before=TODAY)  # a rebuild reads merged files too
    before = db_dump(data)

    report = m.rebuild_duckdb(data)
    assert report.rows == {t: len(before[t][1]) for t in ALL_TABLES}
    assert report.load_batches == len(before["load_batches"][1])
    assert db_dump(data) == before
    assert not (data / m.BACKUP_NAME).exists() and not (data / m.REBUILD_NAME).exists()

    # From Parquet alone: the database file is gone.
    (data / "newsflow.duckdb").unlink()
    m.rebuild_duckdb(data, keep_backup=True)
    assert db_dump(data) == before
    assert m.check_warehouse(data).consistent

    # And polling goes on in the rebuilt warehouse.
    from flows.poll import poll_flow

    _publish(site, site.stories + [make_story(50, seed=3)])
    try:
        result = poll_flow(feeds_file=str(site.feeds_file), data_dir=str(data), all_feeds=True)
    finally:
        _publish(site, site.stories)
    assert result["articles_extracted"] == 1 and result["pages_fetched"] == 1  # the 8 known ones not again
    after = db_dump(data)
    assert len(after["articles"][1]) == len(before["articles"][1]) + 1
    assert m.check_warehouse(data).consistent


# --------------------------------------------------------------------------- check


def test_check_reports_exactly_what_is_wrong(data):
    assert set(m.KEYS) == set(ALL_TABLES)  # every table has its key
    check = m.check_warehouse(data)
    assert check.consistent and check.exit_status == 0 and check.problems() == []
    counts = {t.table: t.duckdb_rows for t in check.tables}
    assert counts["articles"] == 8 and all(t.parquet_rows == t.duckdb_rows for t in check.tables)

    # A Parquet file deleted: its keys are missing from Parquet, nothing else is wrong.
    victim = sorted((data / "parquet" / "articles").glob("*/*.parquet"))[0]
    lost = sorted(pq.read_table(victim).column("article_id").to_pylist())
    saved = victim.read_bytes()
    victim.unlink()
    check = m.check_warehouse(data)
    assert not check.consistent and check.exit_status == 1
    bad = [t for t in check.tables if not t.consistent]
    assert [t.table for t in bad] == ["articles"]
    assert bad[0].missing_in_parquet == len(lost) and bad[0].examples_missing_in_parquet == lost
    assert bad[0].parquet_rows == 8 - len(lost) and bad[0].missing_in_duckdb == 0
    assert check.unexported_batches == [] and check.temporary_files == [] and check.staging == []
    victim.write_bytes(saved)

    # A stray temporary file, and a staging leftover.
    stray = victim.parent / f".x.parquet.123{TMP_SUFFIX}"
    stray.write_bytes(b"partial")
    (data / m.STAGING_DIR / "entries.ingest_date=2024-05-01.99").mkdir(parents=True)
    check = m.check_warehouse(data)
    assert all(t.consistent for t in check.tables) and check.unexported_batches == []
    assert check.temporary_files == [str(stray)]
    assert check.staging == [str(data / m.STAGING_DIR / "entries.ingest_date=2024-05-01.99")]
    assert len(m.remove_staging(data)) == 1
    stray.unlink()
    assert m.check_warehouse(data).consistent

    # A row in DuckDB that Parquet does not have, and a batch not marked exported.
    con = duckdb.connect(str(data / "newsflow.duckdb"))
    con.execute(
        "INSERT INTO fetch_log (fetch_id, run_id, kind, url, fetched_at, load_batch, ingest_date) "
        "VALUES ('stray-fetch', 'r', 'page', 'http://x.example/', now(), 'b', current_date)"
    )
    batch = con.execute("SELECT min(load_batch) FROM load_batches").fetchone()[0]
    con.execute("UPDATE load_batches SET exported = false WHERE load_batch = ?", [batch])
    con.close()
    check = m.check_warehouse(data)
    bad = [t for t in check.tables if not t.consistent]
    assert [t.table for t in bad] == ["fetch_log"]
    assert bad[0].missing_in_parquet == 1 and bad[0].examples_missing_in_parquet == ["stray-fetch"]
    assert bad[0].duckdb_rows == bad[0].parquet_rows + 1
    assert check.unexported_batches == [batch]
    assert check.temporary_files == [] and check.staging == []


# --------------------------------------------------------------------------- raw archive


def test_prune_removes_old_raw_day_folders_only(data):
    raw = data / "raw"
    polled = sorted(p.name for p in raw.iterdir())
    assert polled == [TODAY.isoformat()]
    for day, size in (("2020-01-01", 100), ("2020-01-02", 50), ((TODAY - timedelta(days=2)).isoformat(), 10)):
        (raw / day).mkdir()
        (raw / day / "a.warc.gz").write_bytes(b"x" * size)
    (raw / "2020-01-01" / "b.warc.gz").write_bytes(b"x" * 7)
    (raw / "notes").mkdir()  # not a day folder: never touched
    articles = m.check_warehouse(data).tables

    assert m.prune_raw_archive(data, None).days_removed == []
    report = m.prune_raw_archive(data, 2, today=TODAY)
    assert report.days_removed == ["2020-01-01", "2020-01-02"]
    assert report.files_removed == 3 and report.bytes_removed == 157
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [TODAY.isoformat(), (TODAY - timedelta(days=2)).isoformat(), "notes"]
    )
    assert m.check_warehouse(data).tables == articles  # no row touched


# --------------------------------------------------------------------------- the flow


def test_maintenance_flow_runs_on_prefect(prefect_api, env, monkeypatch):
    from flows.maintenance import maintenance_flow
    from flows.poll import BUSY_STATE
    from newsflow.settings import build_settings

    data = env
    add_past_batches(data, PAST, 3, "old")
    (data / "raw" / "2020-01-01").mkdir()
    (data / "raw" / "2020-01-01" / "a.warc.gz").write_bytes(b"x" * 10)
    monkeypatch.setenv("NEWSFLOW_RAW_RETENTION_DAYS", "30")
    assert build_settings().raw_retention_days == 30

    report = maintenance_flow(data_dir=str(data))

    assert report["recovered"] == {
        "temporary_files_removed": 0,
        "batches_reexported": 0,
        "indexes_rebuilt": 0,
    }
    # The past partition of every table is merged; today's is left to the polls.
    assert report["partitions_compacted"] == 3 and report["files_merged"] == 9
    for t in POLLED:
        assert len(partition_files(data, t)[f"ingest_date={PAST}"]) == 1
        assert len(partition_files(data, t)[f"ingest_date={TODAY}"]) > 1
    assert report["raw_retention_days"] == 30
    assert (
        report["raw_pruned"]["days_removed"] == ["2020-01-01"] and report["raw_pruned"]["bytes_removed"] == 10
    )
    assert (data / "raw" / TODAY.isoformat()).is_dir()
    assert m.check_warehouse(data).consistent
    markdown = latest_artifact("maintenance-report").data
    assert f"ingest_date={PAST}" in markdown and "2020-01-01" in markdown

    # Another writer holds the warehouse: the flow waits, then stops cleanly, changing nothing.
    monkeypatch.setenv("NEWSFLOW_LOCK_TIMEOUT", "0.3")
    with WriterLock(data, timeout=1, purpose="test holder"):
        state = maintenance_flow(data_dir=str(data), return_state=True)
    assert state.name == BUSY_STATE and "test holder" in state.message

    monkeypatch.setenv("NEWSFLOW_RAW_RETENTION_DAYS", "soon")
    with pytest.raises(ValueError, match="raw_retention_days"):
        build_settings()
    monkeypatch.setenv("NEWSFLOW_RAW_RETENTION_DAYS", "-1")
    with pytest.raises(ValueError, match="raw_retention_days"):
        build_settings()


# --------------------------------------------------------------------------- the commands


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "newsflow.cli", "warehouse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_warehouse_commands(prefect_api, data):
    import json

    env = subprocess_env(prefect_api, data)
    add_past_batches(data, PAST, 2, "old")
    (data / "raw" / "2020-01-01").mkdir()

    done = _cli(["check", "--data-dir", str(data), "--format", "json"], env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["consistent"] is True and report["problems"] == []
    assert {t["table"]: t["duckdb_rows"] for t in report["tables"]}["articles"] == 12

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # the stray's writer is dead: maintenance removes what it left
    stray = data / "parquet" / "articles" / f".y.parquet.{gone.pid}{TMP_SUFFIX}"
    stray.write_bytes(b"")
    done = _cli(["check", "--data-dir", str(data)], env)
    assert done.returncode == 1 and "NOT consistent" in done.stdout and stray.name in done.stdout

    before = db_dump(data)
    done = _cli(["maintain", "--data-dir", str(data), "--raw-retention-days", "7"], env)
    assert done.returncode == 0, done.stderr
    assert "articles: files merged" in done.stdout and not stray.exists()  # recovery removed it
    assert not (data / "raw" / "2020-01-01").exists()

    done = _cli(["rebuild", "--data-dir", str(data)], env)
    assert done.returncode == 0, done.stderr
    assert "Rebuilt" in done.stdout
    assert db_dump(data) == before

    with WriterLock(data, timeout=1, purpose="test holder"):
        busy = _cli(["check", "--data-dir", str(data)], {**env, "NEWSFLOW_LOCK_TIMEOUT": "0.3"})
    assert busy.returncode == 75 and "test holder" in busy.stderr and "Traceback" not in busy.stderr
    # A process that ignores the writer lock has the database open: rebuild changes nothing.
    intruder = duckdb.connect(str(data / "newsflow.duckdb"))
    try:
        busy = _cli(["rebuild", "--data-dir", str(data)], env)
    finally:
        intruder.close()
    assert (
        busy.returncode == 75 and "open in another process" in busy.stderr and "Traceback" not in busy.stderr
    )
    assert not (data / m.REBUILD_NAME).exists() and db_dump(data) == before
    for command in ("check", "rebuild", "maintain"):
        assert _cli([command, "--data-dir", str(data / "nowhere")], env).returncode == 2
    assert not (data / "nowhere").exists()
