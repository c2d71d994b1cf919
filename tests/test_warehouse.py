"""Unit tests for the warehouse: migrations, load_batch (DuckDB + Parquet), recover, writer lock,
raw archive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tasks.dedup import PageJob, PlannedEntry, article_id_for, canonicalize_url, content_hash, entry_key_for
from tasks.extract import Extracted
from tasks.fetch import FetchResult
from tasks.load import PageArticle, RunContext, article_row, entry_row, fetch_log_row
from tasks.parse import Enclosure, FeedEntry
from warehouse.files import TMP_SUFFIX, remove_orphaned_temporaries, write_parquet_atomic
from warehouse.lock import WarehouseBusy, WriterLock
from warehouse.raw_archive import RawArchiveWriter, raw_path_for, read_raw_record
from warehouse.store import Warehouse, connect, migrate, parquet_glob

FEED = "https://courier.example/rss.xml"
DAY1 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
DAY2 = datetime(2024, 3, 2, 11, 30, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def _result(
    url: str, fetched_at: datetime, body: bytes | None = b"<html>page</html>", status: int | None = 200
):
    return FetchResult(
        url=url,
        final_url=url,
        status=status,
        headers=(("Content-Type", "text/html; charset=utf-8"),),
        body=body,
        fetched_at=fetched_at,
        elapsed_ms=12,
        redirects=(),
        attempts=1,
    )


def make_rows(
    ctx: RunContext, batch: str, n: int, fetched_at: datetime, prefix: str = "p", first_n: int = 0
) -> dict[str, list[dict]]:
    """n pages, each with one entry, one article and one fetch_log row (built with tasks.load)."""
    rows: dict[str, list[dict]] = {"entries": [], "articles": [], "fetch_log": []}
    for i in range(n):
        link = f"https://courier.example/news/{prefix}{i}.html?utm_source=rss"
        key = canonicalize_url(link)
        fe = FeedEntry(
            guid=f"{prefix}-{i}",
            link=link,
            title=f"Story {prefix}{i}",
            published_at=fetched_at,
            updated_at=None,
            summary="summary",
            author="Reporter",
            categories=("News", "Local"),
            enclosures=(
                Enclosure(url=f"https://courier.example/img/{i}.jpg", type="image/jpeg", length=100 + i),
            ),
        )
        planned = PlannedEntry(entry_key_for(FEED, fe.identity), FEED, fe, key)
        job = PageJob(article_id=article_id_for(key), url=link, url_key=key, entries=(planned,))
        result = _result(link, fetched_at)
        text = f"Body text of story {prefix}{i}."
        page = PageArticle(
            job, result, Extracted(key=key, text=text, title=fe.title), key, content_hash(text)
        )
        rows["fetch_log"].append(
            fetch_log_row(result, "page", ctx, batch, first_n + i, ("raw/x.warc.gz", i * 100))
        )
        rows["articles"].append(article_row(page, ctx, batch, ("raw/x.warc.gz", i * 100)))
        rows["entries"].append(
            entry_row(planned, ctx, batch, fetched_at, status="fetched", article_id=job.article_id)
        )
    return rows


def _count(con, table: str, batch: str | None = None) -> int:
    if batch is None:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
    return con.execute(f"SELECT count(*) FROM {table} WHERE load_batch = ?", [batch]).fetchone()[0]  # noqa: S608


def _parquet_count(data_dir: Path, table: str) -> int:
    return duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{parquet_glob(data_dir, table)}', hive_partitioning = true)"  # noqa: S608
    ).fetchone()[0]


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TMP_SUFFIX)]


@pytest.fixture
def ctx() -> RunContext:
    return RunContext(run_id="0123456789abcdef", flow="test", started_at=DAY1)


# --------------------------------------------------------------------------- migrations


def test_migrate_twice_is_a_noop(tmp_path):
    con = connect(tmp_path / "w.duckdb")
    applied = migrate(con)
    assert applied[0] == "001_initial.sql" and applied == sorted(applied)
    tables_before = sorted(
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    )
    assert migrate(con) == []
    tables_after = sorted(
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    )
    assert tables_before == tables_after
    assert {"runs", "feeds", "entries", "articles", "fetch_log", "load_batches", "schema_migrations"} <= set(
        tables_after
    )
    recorded = con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert [name for _, name in recorded] == applied and [v for v, _ in recorded] == [
        int(n[:3]) for n in applied
    ]
    con.close()
    # and across processes / reopenings
    with Warehouse(tmp_path / "data") as wh:
        assert _count(wh.con, "schema_migrations") == len(applied)
    with Warehouse(tmp_path / "data") as wh:
        assert _count(wh.con, "schema_migrations") == len(applied)


# --------------------------------------------------------------------------- load_batch


def test_load_batch_writes_duckdb_and_parquet(tmp_path, ctx):
    data = tmp_path / "data"
    rows = make_rows(ctx, "B0001", 3, DAY1)
    day2 = make_rows(ctx, "B0001", 2, DAY2, prefix="q", first_n=3)
    for t in rows:
        rows[t] += day2[t]
    with Warehouse(data) as wh:
        counts = wh.load_batch("B0001", ctx.run_id, rows)
        assert counts == {"entries": 5, "articles": 5, "fetch_log": 5}
        for t in ("entries", "articles", "fetch_log"):
            assert _count(wh.con, t) == 5
        assert wh.con.execute("SELECT load_batch, run_id, tables, exported FROM load_batches").fetchall() == [
            ("B0001", ctx.run_id, ["entries", "articles", "fetch_log"], True)
        ]
        # values survive the round trip
        row = wh.con.execute(
            "SELECT categories, enclosures, published_at, ingest_date FROM entries WHERE guid = 'p-1'"
        ).fetchone()
        assert row[0] == ["News", "Local"]
        assert row[1] == [{"url": "https://courier.example/img/1.jpg", "type": "image/jpeg", "length": 101}]
        assert row[2] == DAY1
        assert row[3] == date(2024, 3, 1)

    for t in ("entries", "articles", "fetch_log"):
        f1 = data / "parquet" / t / "ingest_date=2024-03-01" / "B0001.parquet"
        f2 = data / "parquet" / t / "ingest_date=2024-03-02" / "B0001.parquet"
        assert f1.is_file() and f2.is_file()
        assert pq.read_table(f1).num_rows == 3
        assert pq.read_table(f2).num_rows == 2
        assert "ingest_date" not in pq.read_table(f1).column_names  # it is the partition key
        assert "load_batch" in pq.read_table(f1).column_names
        assert _parquet_count(data, t) == 5
    assert _tmp_files(data) == []

    by_day = duckdb.sql(
        f"SELECT ingest_date::VARCHAR, count(*) FROM read_parquet('{parquet_glob(data, 'articles')}', "  # noqa: S608
        "hive_partitioning = true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert by_day == [("2024-03-01", 3), ("2024-03-02", 2)]
    titles = duckdb.sql(
        f"SELECT title FROM read_parquet('{parquet_glob(data, 'articles')}', hive_partitioning = true) "  # noqa: S608
        "ORDER BY title"
    ).fetchall()
    assert [t[0] for t in titles] == ["Story p0", "Story p1", "Story p2", "Story q0", "Story q1"]


def test_two_batches_two_files_same_partition(tmp_path, ctx):
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        wh.load_batch("B0001", ctx.run_id, make_rows(ctx, "B0001", 2, DAY1, prefix="a"))
        wh.load_batch("B0002", ctx.run_id, make_rows(ctx, "B0002", 3, DAY1, prefix="b"))
        assert _count(wh.con, "articles") == 5
    files = sorted(p.name for p in (data / "parquet" / "articles" / "ingest_date=2024-03-01").iterdir())
    assert files == ["B0001.parquet", "B0002.parquet"]
    assert _parquet_count(data, "articles") == 5


SQL_ROW_GROUPS = """
    SELECT row_group_id, sum(count) AS rows FROM pragma_storage_info('articles')
    WHERE column_id = 0 AND segment_type <> 'VALIDITY' GROUP BY row_group_id ORDER BY row_group_id
"""


def test_writers_append_in_small_row_groups_that_later_writers_keep(tmp_path, ctx, monkeypatch):
    # A checkpoint rewrites the row group that a batch appended to, whole: the groups must stay
    # small however many batches come, each batch from a new writer, as a backfill opens them.
    import warehouse.store

    monkeypatch.setattr(warehouse.store, "ROW_GROUP_SIZE", 2048)  # the smallest DuckDB allows
    data = tmp_path / "data"
    for b in range(3):  # 2,100 rows: one group with DuckDB's default size
        with Warehouse(data) as wh:
            wh.load_batch(f"B{b:04}", ctx.run_id, make_rows(ctx, f"B{b:04}", 700, DAY1, prefix=f"b{b}-"))
    con = connect(data / "newsflow.duckdb", read_only=True)
    groups = [rows for _, rows in con.execute(SQL_ROW_GROUPS).fetchall()]
    assert sum(groups) == 2100 and len(groups) >= 2 and max(groups) <= 2048, groups


def test_load_batch_only_present_tables(tmp_path, ctx):
    data = tmp_path / "data"
    rows = make_rows(ctx, "B0001", 2, DAY1)
    with Warehouse(data) as wh:
        assert wh.load_batch("B0000", ctx.run_id, {}) == {}
        assert wh.load_batch("B0001", ctx.run_id, {"fetch_log": rows["fetch_log"]}) == {"fetch_log": 2}
        assert wh.con.execute("SELECT tables FROM load_batches").fetchall() == [(["fetch_log"],)]
    assert not (data / "parquet" / "articles").exists()
    assert (data / "parquet" / "fetch_log" / "ingest_date=2024-03-01" / "B0001.parquet").is_file()


def test_failed_batch_is_rolled_back(tmp_path, ctx):
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        wh.load_batch("B0001", ctx.run_id, make_rows(ctx, "B0001", 2, DAY1))
        again = make_rows(ctx, "B0002", 3, DAY1)  # p0, p1 collide with batch 1's primary keys
        with pytest.raises(duckdb.ConstraintException):
            wh.load_batch("B0002", ctx.run_id, again)
        for t in ("entries", "articles", "fetch_log"):
            assert _count(wh.con, t, "B0002") == 0
        assert _count(wh.con, "load_batches") == 1
        # the connection is usable afterwards
        assert wh.load_batch("B0003", ctx.run_id, make_rows(ctx, "B0003", 1, DAY1, prefix="z")) == {
            "entries": 1,
            "articles": 1,
            "fetch_log": 1,
        }
    assert not list((data / "parquet").rglob("B0002.parquet"))
    assert _parquet_count(data, "articles") == 3


def test_snapshots_export(tmp_path, ctx):
    data = tmp_path / "data"
    counters = {"consecutive_failures": 0, "entries_seen": 3}
    with Warehouse(data) as wh:
        wh.upsert_feeds(
            [
                {
                    "feed_url": FEED,
                    "name": "Courier",
                    "tags": ["local"],
                    "added_at": DAY1,
                    "etag": '"1"',
                    **counters,
                }
            ]
        )
        wh.upsert_feeds(
            [
                {
                    "feed_url": FEED,
                    "name": "Courier 2",
                    "tags": ["local"],
                    "added_at": DAY1,
                    "etag": '"2"',
                    **counters,
                }
            ]
        )
        wh.record_run({"run_id": ctx.run_id, "flow": "poll", "started_at": DAY1, "status": "ok"})
        wh.export_snapshots()
        assert wh.feed_validators([FEED]) == {FEED: ('"2"', None, None)}
        assert wh.feed_row(FEED)["name"] == "Courier 2"
    feeds = pq.read_table(parquet_glob(data, "feeds")).to_pylist()
    assert [(f["feed_url"], f["name"], f["etag"]) for f in feeds] == [(FEED, "Courier 2", '"2"')]
    assert pq.read_table(parquet_glob(data, "runs")).num_rows == 1
    assert _tmp_files(data) == []


def test_lookups(tmp_path, ctx):
    with Warehouse(tmp_path / "data") as wh:
        rows = make_rows(ctx, "B0001", 2, DAY1)
        wh.load_batch("B0001", ctx.run_id, rows)
        keys = [r["entry_key"] for r in rows["entries"]]
        assert wh.seen_entry_keys(keys + ["nope"]) == set(keys)
        url_key = rows["articles"][0]["url_key"]
        assert wh.known_url_keys([url_key, "https://nope.example/"]) == {
            url_key: rows["articles"][0]["article_id"]
        }
        h = rows["articles"][1]["content_hash"]
        assert wh.known_hashes([h]) == {h: rows["articles"][1]["article_id"]}
        assert wh.seen_entry_keys([]) == set()


# --------------------------------------------------------------------------- recover


def test_recover_reexports_a_committed_but_unexported_batch_once(tmp_path, ctx):
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        wh.load_batch("B0001", ctx.run_id, make_rows(ctx, "B0001", 2, DAY1, prefix="a"))
        rows = make_rows(ctx, "B0002", 3, DAY1, prefix="b")
        day2 = make_rows(ctx, "B0002", 1, DAY2, prefix="c", first_n=3)
        for t in rows:
            rows[t] += day2[t]
        wh.load_batch("B0002", ctx.run_id, rows)
        original = {
            t: sorted(pq.read_table(data / "parquet" / t / "ingest_date=2024-03-01" / "B0002.parquet").to_pylist(),
                      key=str)
            for t in ("entries", "articles", "fetch_log")
        }  # fmt: skip
        # the crash: committed, but the Parquet export never happened (or only partly)
        for f in (data / "parquet").rglob("B0002.parquet"):
            if "articles" in f.parts or "fetch_log" in f.parts:
                f.unlink()
        wh.con.execute("UPDATE load_batches SET exported = false WHERE load_batch = 'B0002'")

    with Warehouse(data) as wh:
        assert wh.recover() == {"temporary_files_removed": 0, "batches_reexported": 1, "indexes_rebuilt": 0}
        assert wh.con.execute("SELECT bool_and(exported) FROM load_batches").fetchone()[0] is True
        assert wh.recover() == {"temporary_files_removed": 0, "batches_reexported": 0, "indexes_rebuilt": 0}
        for t in ("entries", "articles", "fetch_log"):
            assert _count(wh.con, t) == 6
            assert _parquet_count(data, t) == 6  # equal, not doubled
            again = pq.read_table(
                data / "parquet" / t / "ingest_date=2024-03-01" / "B0002.parquet"
            ).to_pylist()
            assert sorted(again, key=str) == original[t]
            assert (data / "parquet" / t / "ingest_date=2024-03-02" / "B0002.parquet").is_file()
    # the re-exported files read together with the others (same schema)
    assert pq.read_schema(
        data / "parquet" / "articles" / "ingest_date=2024-03-01" / "B0001.parquet"
    ) == pq.read_schema(data / "parquet" / "articles" / "ingest_date=2024-03-01" / "B0002.parquet")
    assert _tmp_files(data) == []


def test_recover_removes_orphaned_temporaries(tmp_path, ctx):
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        wh.load_batch("B0001", ctx.run_id, make_rows(ctx, "B0001", 1, DAY1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer that is gone: its pid names its leftovers
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    part = data / "parquet" / "articles" / "ingest_date=2024-03-01"
    orphan1 = part / f".B0009.parquet.{dead.pid}{TMP_SUFFIX}"
    orphan1.write_bytes(b"half a parquet file")
    (data / "raw" / "2024-03-01").mkdir(parents=True)
    orphan2 = data / "raw" / "2024-03-01" / f".B0009.warc.gz.{dead.pid}{TMP_SUFFIX}"
    orphan2.write_bytes(b"half a warc")
    # A backfill writes its raw archive outside the writer lock: a live writer's file stays.
    in_flight = data / "raw" / "2024-03-01" / f".B0010.warc.gz.{alive.pid}{TMP_SUFFIX}"
    in_flight.write_bytes(b"a warc being written")
    keep = part / "B0001.parquet"
    # readers never see the temporaries
    assert _parquet_count(data, "articles") == 1
    try:
        with Warehouse(data) as wh:
            assert wh.recover() == {
                "temporary_files_removed": 2,
                "batches_reexported": 0,
                "indexes_rebuilt": 0,
            }
        assert not orphan1.exists() and not orphan2.exists()
        assert in_flight.exists()
    finally:
        alive.kill()
        alive.wait()
    with Warehouse(data) as wh:
        assert wh.recover()["temporary_files_removed"] == 1  # its writer is gone now
    assert keep.is_file()
    assert _tmp_files(data) == []
    assert remove_orphaned_temporaries(tmp_path / "does-not-exist") == []


def test_write_parquet_atomic_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    import pyarrow as pa

    target = tmp_path / "t" / "x.parquet"
    write_parquet_atomic(pa.table({"a": [1, 2]}), target)
    assert pq.read_table(target).column("a").to_pylist() == [1, 2]

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(pa.table({"a": [3]}), target)
    assert pq.read_table(target).column("a").to_pylist() == [1, 2]  # the old file is intact
    assert _tmp_files(tmp_path) == []


# --------------------------------------------------------------------------- writer lock


def test_second_writer_gives_up_with_the_holder_named(tmp_path):
    data = tmp_path / "data"
    messages: list[str] = []
    with WriterLock(data, timeout=5, purpose="poll run r1"):
        started = time.monotonic()
        with pytest.raises(WarehouseBusy) as info:
            with WriterLock(
                data, timeout=0.5, purpose="backfill", on_wait=messages.append, poll_interval=0.05
            ):
                pytest.fail("acquired a held lock")
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3
    text = str(info.value)
    assert "poll run r1" in text
    assert f"pid {os.getpid()}" in text
    assert len(messages) == 1
    assert "poll run r1" in messages[0] and "waiting" in messages[0]
    # released: the next writer gets it at once and no wait is reported
    quiet: list[str] = []
    with WriterLock(data, timeout=0.5, purpose="after", on_wait=quiet.append) as lock:
        assert "after" in lock.path.read_text()
    assert quiet == []


def test_waiting_writer_gets_the_lock_when_released(tmp_path):
    import threading

    data = tmp_path / "data"
    first = WriterLock(data, timeout=1, purpose="first")
    first.__enter__()
    timer = threading.Timer(0.3, first.__exit__, args=(None, None, None))
    timer.start()
    try:
        messages: list[str] = []
        with WriterLock(data, timeout=5, purpose="second", on_wait=messages.append, poll_interval=0.05):
            assert len(messages) == 1
    finally:
        timer.join()


def test_lock_of_a_killed_process_is_released(tmp_path):
    data = tmp_path / "data"
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from warehouse.lock import WriterLock
        with WriterLock(Path({str(data)!r}), timeout=5, purpose="doomed writer", run_id="run-1"):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(WarehouseBusy) as info:
            with WriterLock(data, timeout=0.3, purpose="probe", poll_interval=0.05):
                pass
        assert "doomed writer" in str(info.value) and f"pid {proc.pid}" in str(info.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        found = []
        with WriterLock(
            data, timeout=3, purpose="survivor", poll_interval=0.05, on_dead_holder=found.append
        ) as lock:
            assert "survivor" in lock.path.read_text()
        # The dead holder is named to the next writer (who marks its flow run crashed) ...
        assert found == [lock.dead_holder]
        assert (lock.dead_holder["purpose"], lock.dead_holder["run_id"], lock.dead_holder["pid"]) == (
            "doomed writer",
            "run-1",
            proc.pid,
        )
        # ... while a holder that let go normally leaves nobody to report.
        with WriterLock(data, timeout=3, purpose="next", on_dead_holder=found.append) as lock:
            assert lock.dead_holder is None
        assert len(found) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- raw archive


def test_raw_archive_roundtrip(tmp_path):
    data = tmp_path / "data"
    rel = raw_path_for("B0001", DAY1)
    assert rel == "raw/2024-03-01/B0001.warc.gz"
    writer = RawArchiveWriter(data, rel)
    page = FetchResult(
        url="https://courier.example/a?x=1",
        final_url="https://courier.example/a",
        status=200,
        headers=(("Content-Type", "text/html"), ("Content-Encoding", "gzip"), ("Content-Length", "12")),
        body=b"<html>\x00\xff decoded body</html>",
        fetched_at=DAY1,
        elapsed_ms=5,
        remote_address="127.0.0.1",
    )
    feed = FetchResult(
        url="https://courier.example/rss.xml",
        final_url="https://courier.example/rss.xml",
        status=200,
        headers=(("Content-Type", "application/rss+xml"),),
        body=b"<rss/>",
        fetched_at=DAY1,
        elapsed_ms=5,
    )
    failed = FetchResult(
        url="https://courier.example/b",
        final_url="https://courier.example/b",
        status=None,
        headers=(),
        body=None,
        fetched_at=DAY1,
        elapsed_ms=5,
        error_class="timeout",
    )
    off1 = writer.add(page)
    off2 = writer.add(feed)
    assert writer.add(failed) is None
    assert off1 == 0 and off2 > off1
    assert not (data / rel).exists()  # not visible before commit
    assert writer.commit() == rel
    assert (data / rel).is_file()
    assert _tmp_files(data) == []

    url, headers, body = read_raw_record(data, rel, off1)
    assert url == "https://courier.example/a"
    assert body == b"<html>\x00\xff decoded body</html>"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert "content-encoding" not in lowered
    assert lowered["x-newsflow-original-content-encoding"] == "gzip"
    assert lowered["content-length"] == str(len(body))
    assert lowered["content-type"] == "text/html"

    url, headers, body = read_raw_record(data, rel, off2)
    assert (url, body) == ("https://courier.example/rss.xml", b"<rss/>")


def test_raw_archive_empty_commit_and_abort(tmp_path):
    data = tmp_path / "data"
    empty = RawArchiveWriter(data, "raw/2024-03-01/E.warc.gz")
    assert empty.commit() is None
    assert not (data / "raw/2024-03-01/E.warc.gz").exists()
    aborted = RawArchiveWriter(data, "raw/2024-03-01/A.warc.gz")
    aborted.add(_result("https://x.example/", DAY1))
    aborted.abort()
    assert not (data / "raw/2024-03-01/A.warc.gz").exists()
    assert _tmp_files(data) == []


def test_a_writer_that_died_has_its_secondary_indexes_rebuilt(tmp_path, ctx):
    """DuckDB 1.5.5 can recover a killed writer's CREATE INDEX indexes with entries missing: the
    next open after a death (the open marker still there) rebuilds them; a clean close does not."""
    import subprocess
    import sys

    from warehouse.store import OPEN_MARKER

    data = tmp_path / "data"
    with Warehouse(data) as wh:
        wh.load_batch("B0001", ctx.run_id, make_rows(ctx, "B0001", 3, DAY1))
        assert wh.rebuilt_indexes == []
    assert not (data / OPEN_MARKER).exists()
    with Warehouse(data) as wh:
        assert wh.rebuilt_indexes == [] and wh.recover()["indexes_rebuilt"] == 0

    # A writer killed with the database open.
    code = (
        "import os, signal, sys; from pathlib import Path; from warehouse.store import Warehouse; "
        "wh = Warehouse(Path(sys.argv[1])); os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code, str(data)], check=False)
    assert (data / OPEN_MARKER).exists()
    with Warehouse(data) as wh:
        indexes = {
            r[0]
            for r in wh.con.execute(
                "SELECT index_name FROM duckdb_indexes() WHERE NOT is_unique AND NOT is_primary"
            ).fetchall()
        }
        assert set(wh.rebuilt_indexes) == indexes and "story_index_band" in indexes
        assert wh.recover()["indexes_rebuilt"] == len(indexes)
        assert (
            wh.con.execute(
                "SELECT count(*) FROM entries WHERE feed_url = (SELECT any_value(feed_url) FROM entries)"
            ).fetchone()[0]
            > 0
        )
    assert not (data / OPEN_MARKER).exists()


def test_the_raw_archive_gzip_level_trades_size_for_time_and_reads_back_the_same(tmp_path):
    from tasks.load import archive_raw

    html = b"".join(
        b"<p>Paragraph %d of a long article, with words that repeat.</p>\n" % i for i in range(3000)
    )
    pages = [
        _result(f"https://courier.example/news/p{i}.html", DAY1, body=html + bytes([i])) for i in range(4)
    ]
    sizes = {}
    for level in (1, 9):
        data = tmp_path / f"level{level}"
        refs = archive_raw(data, f"B{level}", pages, level)
        sizes[level] = sum(f.stat().st_size for f in (data / "raw").rglob("*.warc.gz"))
        assert [read_raw_record(data, path, offset)[2] for path, offset in refs] == [p.body for p in pages]
    assert sizes[9] < sizes[1]
