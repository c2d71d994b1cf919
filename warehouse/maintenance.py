"""Warehouse maintenance: compaction, checkpoint, raw-archive retention, rebuild, consistency check.

Plain functions, no Prefect (``flows/maintenance.py`` and ``newsflow warehouse …`` call them).
Every function that changes files must run while the caller holds the
:class:`~warehouse.lock.WriterLock`; :func:`check_warehouse` only reads but should hold it too,
so that no batch is half-written while it compares.

Replacing a partition while readers read it
-------------------------------------------
:func:`compact_partitions` (many small files into one) and :func:`replace_partition` (a partition
rewritten from DuckDB, after a re-extraction) change the files of an ``ingest_date=`` directory:

1. the new partition directory is built under ``<data>/.staging/``: outside ``parquet/``
   altogether, because DuckDB's glob ``*/*.parquet`` *does* match dot-directories and dot-files
   (measured with DuckDB 1.5: a ``parquet/<table>/.x/`` directory is read as a partition; pyarrow's
   dataset discovery skips names starting with ``.`` or ``_``; DuckDB, polars and pathlib do not);
2. the two directories are swapped in one system call, ``renameat2(RENAME_EXCHANGE)``: the
   partition's name points at the old directory, then at the new one, never at neither and never
   at a mixture; the new file has a name the old directory never had;
3. the old directory, now under ``.staging/``, is removed.

What a reader sees: a reader that lists the partition directory through one directory handle
(``os.scandir``) sees the old files or the new one, complete (pyarrow's dataset discovery, measured:
complete, or a ``FileNotFoundError``); one that listed the old files and opens them after the swap
gets a "No such file" error and must retry. One gap remains, in DuckDB's
glob itself: it reads a directory's names, then ``stat``s each one *by path* and silently skips a
name that no longer exists. A DuckDB glob that read the old directory's names and stats them after
the swap drops that partition's rows from that one query (shown with DuckDB 1.5: a ``glob()``
straddling a swap of a 3,000-file directory returned 2,663 names; in stress runs swapping about 25
partitions a second, rarely, a ``count(*)`` short by exactly one whole partition; never a doubled
row, never part of a partition). No file layout closes this gap (the old names would have to stay
visible, and be read twice); compaction touches past partitions once a day, and a reader that
needs certainty reads the DuckDB file, or retries.

Whatever a crash leaves under ``.staging/`` is never needed (a new directory not swapped in, or a
replaced old one), so the next maintenance run removes it (:func:`remove_staging`).

Without ``renameat2`` (not Linux, or a file system that refuses RENAME_EXCHANGE) a non-atomic
path is used and logged as such: the new file is renamed into the partition, then the files it
replaces are deleted; for that moment a reader sees those rows twice.

On storage that is not a local directory
----------------------------------------
With the Parquet files on an object store (``NEWSFLOW_STORAGE_URL``, warehouse/storage.py) there is
no directory to swap: the new file is written in one PUT, then the files it replaces are deleted.
Between the two a reader listing the partition sees both, so those rows twice (as with the
non-atomic local fallback above); a crash between the two leaves both, and the next compaction's
deduplication by key repairs it (``newsflow warehouse check`` reports the repeated keys meanwhile).
Nothing is staged: ``.staging/`` exists only on local storage, under the storage root.

Compaction and recovery
-----------------------
:meth:`Warehouse.recover` re-exports a committed batch that was not marked exported as
``<load_batch>.parquet``. So compaction merges only files of batches with ``exported = true`` (and
earlier merged files); a file of an unexported batch, or any file it does not recognise, is carried
over unchanged (hard link) into the new directory. Merged and rewritten files are named
``compacted-<id>.parquet``; load batch ids start with a timestamp and the name is checked against
``load_batches`` before use, so recovery can never write a file whose rows are already in a
merged file. Rows are deduplicated by the table's key while merging (DuckDB's primary keys allow
no duplicates, so a repeated key in Parquet is a doubled export), which also repairs what an
interrupted non-atomic compaction left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.files import TMP_SUFFIX, fsync_dir
from warehouse.search import build_fts_index
from warehouse.storage import Storage, as_storage
from warehouse.store import (
    APPEND_TABLES,
    SNAPSHOT_TABLES,
    SQL_READ_PARTITIONED,
    Warehouse,
    connect,
    has_parquet,
    migrate,
    parquet_glob,
    parquet_relation,
)
from warehouse.stories import archive_story_index, rebuild_story_index

log = logging.getLogger(__name__)

DB_NAME = "newsflow.duckdb"
REBUILD_NAME = "newsflow.duckdb.rebuild"  # the new database while it is built
BACKUP_NAME = "newsflow.duckdb.bak"  # the replaced database, until the new one is verified
STAGING_DIR = ".staging"  # under the data dir, outside every reader's glob
BUILD_PREFIX = "build-"  # .staging/build-…/<partition>: a new partition directory, then the old one
COMPACTED_PREFIX = "compacted-"
PARTITION_RE = re.compile(r"^ingest_date=(\d{4}-\d{2}-\d{2})$")
RAW_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# The key of each table: what check compares, what compaction deduplicates on.
KEYS = {
    "articles": "article_id",
    "entries": "entry_key",
    "fetch_log": "fetch_id",
    "extraction_history": "history_id",
    "feeds": "feed_url",
    "runs": "run_id",
    "feed_events": "event_id",
}
# When a row was written, per append table: load_batches.committed_at is rebuilt from it.
ROW_TIMES = {
    "entries": "first_seen_at",
    "articles": "fetched_at",
    "fetch_log": "fetched_at",
    "extraction_history": "replaced_at",
}
# Table names and keys are fixed identifiers, never user input: each statement is a constant.
SQL_COUNT = {t: f"SELECT count(*) FROM {t}" for t in KEYS}  # noqa: S608
SQL_KEYS = {t: f"SELECT {k} AS k FROM {t}" for t, k in KEYS.items()}  # noqa: S608
SQL_INSERT_FROM_PARQUET = {
    t: f"INSERT INTO {t} BY NAME SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"  # noqa: S608
    for t in APPEND_TABLES
}
# Articles written to Parquet before migration 007 (article versions) have no `version` and
# `article_key`: they are first versions. Files with and without them can sit side by side until
# the migration's rewrite of the partitions has run, so both cases are read.
SQL_INSERT_ARTICLES_FROM_PARQUET = """
    INSERT INTO articles BY NAME
    SELECT * REPLACE (coalesce(version, 1) AS version, coalesce(article_key, article_id) AS article_key)
    FROM read_parquet(?, hive_partitioning = true, union_by_name = true)
"""
SQL_INSERT_UNVERSIONED_ARTICLES_FROM_PARQUET = """
    INSERT INTO articles BY NAME
    SELECT *, 1 AS version, article_id AS article_key
    FROM read_parquet(?, hive_partitioning = true, union_by_name = true)
"""
SQL_INSERT_SNAPSHOT = {t: f"INSERT INTO {t} BY NAME SELECT * FROM read_parquet(?)" for t in SNAPSHOT_TABLES}  # noqa: S608
SQL_EXPORTED_BATCHES = "SELECT load_batch FROM load_batches WHERE exported"
SQL_ALL_BATCHES = "SELECT load_batch FROM load_batches"
# load_batches from the rows themselves: every batch found in Parquet was exported. Not in Parquet:
# committed_at (taken as the latest row time of the batch, a lower bound of the commit) and the
# "articles@<day>" marks of re-extraction batches (they matter only while a batch is unexported).
_BATCH_ROWS = " UNION ALL ".join(
    f"SELECT load_batch, run_id, {ROW_TIMES.get(t, 'CAST(ingest_date AS TIMESTAMPTZ)')} AS ts, "  # noqa: S608
    f"'{t}' AS t, {pos} AS pos FROM {t}"
    for pos, t in enumerate(APPEND_TABLES)
)
SQL_RECONSTRUCT_BATCHES = f"""
    INSERT INTO load_batches
    SELECT load_batch, min(run_id), max(ts), list(t ORDER BY pos), true FROM (
        SELECT load_batch, min(run_id) AS run_id, max(ts) AS ts, t, pos FROM ({_BATCH_ROWS})
        GROUP BY load_batch, t, pos
    ) GROUP BY load_batch
"""  # noqa: S608

# --------------------------------------------------------------------------- atomic directory swap

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


class ExchangeUnsupported(OSError):
    """The platform or file system cannot swap two paths atomically."""


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``), same file system."""
    if _RENAMEAT2 is None:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available in this C library")
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.EOPNOTSUPP):
            raise ExchangeUnsupported(err, f"renameat2(RENAME_EXCHANGE) refused: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _build_dir(data_dir: Path, table: str, partition: str) -> Path:
    """A fresh ``.staging/build-…/<partition>`` directory for a partition's new files."""
    root = data_dir / STAGING_DIR / f"{BUILD_PREFIX}{table}.{partition}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    new = root / partition
    new.mkdir(parents=True)
    return new


def _remove_build(data_dir: Path, new_dir: Path) -> None:
    """Remove a build root (the unused new directory, or the old one after a swap)."""
    shutil.rmtree(new_dir.parent, ignore_errors=True)
    try:
        (data_dir / STAGING_DIR).rmdir()  # only when empty
    except OSError:
        pass


def remove_staging(location: Path | str | Storage) -> list[str]:
    """Remove what an interrupted compaction or partition rewrite left under ``.staging/`` (never
    needed: see the module docstring). Hold the writer lock."""
    storage = as_storage(location)
    if not storage.local:
        return []
    staging = storage.local_path(STAGING_DIR)
    removed = []
    if staging.is_dir():
        for entry in sorted(staging.iterdir()):
            removed.append(str(entry))
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        try:
            staging.rmdir()
        except OSError:
            pass
    return removed


def _swap_in(new_dir: Path, part: Path, replaced: list[Path], what: str) -> bool:
    """Put ``new_dir`` (``.staging/build-…/<partition>``) in place of the partition ``part``.

    Returns True when that was atomic for readers; the caller then removes the build root, which
    holds the old directory. Without renameat2 the new files are renamed into ``part``, then
    ``replaced`` are deleted (False).
    """
    if not part.exists():
        part.parent.mkdir(parents=True, exist_ok=True)
        os.rename(new_dir, part)  # a new partition: one rename is atomic
        fsync_dir(part.parent)
        return True
    try:
        exchange_paths(new_dir, part)
    except ExchangeUnsupported as exc:
        log.warning(
            "%s of %s is NOT atomic for readers (%s): the new file is renamed in, then the files it "
            "replaces are deleted; a reader may see those rows twice meanwhile",
            what,
            part,
            exc,
        )
        for f in sorted(new_dir.iterdir()):
            if not (part / f.name).exists():
                tmp = part / f".{f.name}.{os.getpid()}{TMP_SUFFIX}"
                os.rename(f, tmp)
                os.replace(tmp, part / f.name)
        fsync_dir(part)
        for f in replaced:
            f.unlink(missing_ok=True)
        fsync_dir(part)
        return False
    fsync_dir(part.parent)
    fsync_dir(new_dir.parent)
    return True


def replace_partition(location: Path | str | Storage, table: str, day: date, data: pa.Table) -> None:
    """Make ``data`` (without the ``ingest_date`` column) the whole content of one partition,
    atomically for readers: one file ``compacted-<id>.parquet`` (an empty directory when ``data``
    is empty). Used after rows of a partition changed in DuckDB (re-extraction). Hold the writer lock.
    On storage that is not a local directory: not atomic (see the module docstring).
    """
    storage = as_storage(location)
    if not storage.local:
        _replace_partition_elsewhere(storage, table, day, data)
        return
    data_dir = storage.local_path()  # the storage root: .staging/ must be on its file system
    part = data_dir / "parquet" / table / f"ingest_date={day.isoformat()}"
    if data.num_rows == 0 and not part.exists():
        return
    new_dir = _build_dir(data_dir, table, part.name)
    try:
        if data.num_rows:
            with open(new_dir / f"{COMPACTED_PREFIX}{uuid.uuid4().hex[:20]}.parquet", "wb") as fh:
                pq.write_table(data, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(new_dir)
        replaced = sorted(part.iterdir()) if part.exists() else []
        _swap_in(new_dir, part, replaced, f"rewrite of {table}")
    finally:
        _remove_build(data_dir, new_dir)


def _replace_partition_elsewhere(storage: Storage, table: str, day: date, data: pa.Table) -> None:
    """The new file in one PUT, then the replaced files deleted (readers may see both meanwhile)."""
    part = storage.path("parquet", table, f"ingest_date={day.isoformat()}")
    fs = storage.fs
    replaced = [p for p in fs.glob(f"{part}/*") if fs.isfile(p)]
    if data.num_rows:
        buffer = pa.BufferOutputStream()
        pq.write_table(data, buffer, compression="zstd")
        fs.pipe_file(
            f"{part}/{COMPACTED_PREFIX}{uuid.uuid4().hex[:20]}.parquet", buffer.getvalue().to_pybytes()
        )
    if replaced:
        fs.rm(replaced)


# --------------------------------------------------------------------------- compaction


@dataclass
class PartitionCompaction:
    partition: str  # ingest_date=YYYY-MM-DD
    files_merged: int
    files_kept: int  # carried over unchanged (unexported batches, unknown files)
    rows: int
    bytes_before: int
    bytes_after: int
    merged_file: str
    atomic: bool  # False when the non-atomic fallback was used
    duplicate_rows_dropped: int = 0


@dataclass
class CompactionReport:
    table: str
    before: str  # partitions strictly before this date were considered
    partitions: list[PartitionCompaction] = field(default_factory=list)
    partitions_already_compact: int = 0
    staging_removed: list[str] = field(default_factory=list)

    @property
    def files_merged(self) -> int:
        return sum(p.files_merged for p in self.partitions)

    def to_dict(self) -> dict:
        return {**asdict(self), "files_merged": self.files_merged}


def _batch_sets(con: duckdb.DuckDBPyConnection | None, data_dir: Path) -> tuple[set[str], set[str]]:
    """(exported batches, all batches) from ``load_batches``."""
    own = con is None
    if own:
        db = data_dir / DB_NAME
        if not db.exists():
            raise FileNotFoundError(f"no warehouse database at {db}: compaction needs load_batches")
        con = connect(db, read_only=True)
    try:
        exported = {r[0] for r in con.execute(SQL_EXPORTED_BATCHES).fetchall()}
        every = {r[0] for r in con.execute(SQL_ALL_BATCHES).fetchall()}
    finally:
        if own:
            con.close()
    return exported, every


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_merged(
    members: list[Path] | list[str], key: str, target: Path, filesystem=None
) -> tuple[int, int]:
    """Merge ``members`` (paths in ``filesystem``, an fsspec one, or local) into the local file
    ``target`` (fsynced), dropping repeated keys. Returns (rows, dropped)."""
    on = {"filesystem": filesystem} if filesystem is not None else {}
    schema = pa.unify_schemas([pq.read_schema(p, **on) for p in members], promote_options="permissive")
    seen: set[str] = set()
    rows = dropped = 0
    buffered: list[pa.Table] = []
    buffered_bytes = 0
    with open(target, "wb") as fh:
        with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for path in members:
                data = _conform(pq.ParquetFile(path, **on).read(), schema)  # no partition discovery
                keep = []
                for k in data.column(key).to_pylist():
                    keep.append(k not in seen)
                    seen.add(k)
                if not all(keep):
                    dropped += keep.count(False)
                    data = data.filter(pa.array(keep))
                rows += data.num_rows
                buffered.append(data)
                buffered_bytes += data.nbytes
                if buffered_bytes >= 64 * 1024 * 1024:  # row groups of a useful size, bounded memory
                    writer.write_table(pa.concat_tables(buffered))
                    buffered, buffered_bytes = [], 0
            if buffered:
                writer.write_table(pa.concat_tables(buffered))
        fh.flush()
        os.fsync(fh.fileno())
    written = pq.ParquetFile(target).metadata.num_rows
    if written != rows:
        raise RuntimeError(f"merged file {target} has {written} rows, expected {rows}")
    return rows, dropped


def compact_partitions(
    data_dir: Path | str,
    table: str,
    before: date | None = None,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
) -> CompactionReport:
    """Merge each past partition (``ingest_date`` < ``before``, default today UTC) of an append
    table that holds more than one mergeable file into one file, atomically for readers.

    ``con``: an open connection to the warehouse database (the caller's writer connection); when
    None the database is opened read-only for the ``load_batches`` lookup. Hold the writer lock.
    """
    if table not in APPEND_TABLES:
        raise ValueError(f"{table!r} is not an append table ({', '.join(APPEND_TABLES)})")
    storage = as_storage(data_dir)
    before = before or datetime.now(UTC).date()
    report = CompactionReport(table=table, before=before.isoformat())
    if not storage.local:
        _compact_elsewhere(storage, table, before, con, report)
        return report
    root = storage.local_path()  # the storage root (the data dir by default)
    report.staging_removed = remove_staging(storage)
    table_dir = root / "parquet" / table
    if not table_dir.is_dir():
        return report
    exported, every = _batch_sets(con, storage.data_dir)
    for part in sorted(table_dir.iterdir()):
        _consider(root, table, part, before, exported, every, report)
    return report


def _mergeable(name: str, exported: set[str], every: set[str]) -> bool:
    stem = name.removesuffix(".parquet")
    return (
        name.endswith(".parquet")
        and not name.startswith(".")
        and (stem in exported or (stem.startswith(COMPACTED_PREFIX) and stem not in every))
    )


def _compact_elsewhere(
    storage: Storage,
    table: str,
    before: date,
    con: duckdb.DuckDBPyConnection | None,
    report: CompactionReport,
) -> None:
    """Compaction on storage that is not a local directory: the merged file is built in the spool
    directory, sent in one PUT, then the merged files are deleted (not atomic for readers: see the
    module docstring)."""
    fs = storage.fs
    parts: dict[str, list[str]] = defaultdict(list)
    for rel in storage.glob("parquet", table, "ingest_date=*", "*"):
        partition, name = rel.split("/")[-2:]
        parts[partition].append(name)
    if not parts:
        return
    exported, every = _batch_sets(con, storage.data_dir)
    for partition, names in sorted(parts.items()):
        m = PARTITION_RE.match(partition)
        if not m or date.fromisoformat(m.group(1)) >= before:
            continue
        members = [n for n in sorted(names) if _mergeable(n, exported, every)]
        if len(members) < 2:
            report.partitions_already_compact += 1
            continue
        digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:20]
        merged_name = f"{COMPACTED_PREFIX}{digest}.parquet"
        if merged_name.removesuffix(".parquet") in every or merged_name in names:
            raise RuntimeError(f"merged file name {merged_name} is already taken in {partition}")
        paths = [storage.path("parquet", table, partition, n) for n in members]
        storage.spool_dir.mkdir(parents=True, exist_ok=True)
        spooled = storage.spool_dir / f".{table}.{partition}.{merged_name}.{os.getpid()}{TMP_SUFFIX}"
        target = storage.path("parquet", table, partition, merged_name)
        try:
            rows, dropped = _write_merged(paths, KEYS[table], spooled, filesystem=fs)
            bytes_after = spooled.stat().st_size
            fs.put_file(str(spooled), target)
        finally:
            spooled.unlink(missing_ok=True)
        bytes_before = sum(fs.size(p) for p in paths)
        fs.rm(paths)
        report.partitions.append(
            PartitionCompaction(
                partition=partition,
                files_merged=len(members),
                files_kept=len(names) - len(members),
                rows=rows,
                bytes_before=bytes_before,
                bytes_after=bytes_after,
                merged_file=merged_name,
                atomic=False,
                duplicate_rows_dropped=dropped,
            )
        )


def _consider(
    data_dir: Path,
    table: str,
    part: Path,
    before: date,
    exported: set[str],
    every: set[str],
    report: CompactionReport,
) -> None:
    """Compact one partition directory when it is past and holds more than one mergeable file."""
    m = PARTITION_RE.match(part.name)
    if not m or not part.is_dir() or date.fromisoformat(m.group(1)) >= before:
        return
    members, kept = [], []
    for f in sorted(part.iterdir()):
        if f.is_file() and _mergeable(f.name, exported, every):
            members.append(f)
        else:
            kept.append(f)
    if len(members) < 2:
        report.partitions_already_compact += 1
        return
    report.partitions.append(_compact_one(data_dir, table, part, members, kept, every))


def _compact_one(
    data_dir: Path,
    table: str,
    part: Path,
    members: list[Path],
    kept: list[Path],
    every: set[str],
) -> PartitionCompaction:
    digest = hashlib.sha256("\n".join(p.name for p in members).encode()).hexdigest()[:20]
    merged_name = f"{COMPACTED_PREFIX}{digest}.parquet"
    if merged_name.removesuffix(".parquet") in every or (part / merged_name).exists():
        raise RuntimeError(f"merged file name {merged_name} is already taken in {part}")
    bytes_before = sum(p.stat().st_size for p in members)
    new_dir = _build_dir(data_dir, table, part.name)
    try:
        rows, dropped = _write_merged(members, KEYS[table], new_dir / merged_name)
        if dropped:
            log.warning("%s/%s: %d repeated key(s) dropped while merging", table, part.name, dropped)
        for f in kept:  # the same inode: a file recovery may rewrite, or one we do not know
            try:
                os.link(f, new_dir / f.name)
            except OSError:
                shutil.copy2(f, new_dir / f.name)
        fsync_dir(new_dir)
        atomic = _swap_in(new_dir, part, members, f"compaction of {table}")
    finally:
        _remove_build(data_dir, new_dir)  # the old directory after the swap; else the unused new one
    return PartitionCompaction(
        partition=part.name,
        files_merged=len(members),
        files_kept=len(kept),
        rows=rows,
        bytes_before=bytes_before,
        bytes_after=(part / merged_name).stat().st_size,
        merged_file=merged_name,
        atomic=atomic,
        duplicate_rows_dropped=dropped,
    )


# --------------------------------------------------------------------------- checkpoint


def checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write DuckDB's WAL into the database file (and let it reuse freed blocks), after the work
    that costs in proportion to the whole warehouse and so is done here, once a day, never in a
    poll: the day's story band keys moved into ``story_index_archive`` (this checkpoint writes the
    archive's index out whole), and the full-text index of the articles built again when articles
    changed (``warehouse.search``: the extension can only build it whole)."""
    archive_story_index(con)
    fts = build_fts_index(con, datetime.now(UTC))
    if not fts.built and fts.reason and "not installed" in fts.reason:
        log.warning("full-text index not built: %s; phrase search scans the texts", fts.reason)
    con.execute("CHECKPOINT")


# --------------------------------------------------------------------------- raw archive retention


@dataclass
class PruneReport:
    retention_days: int | None
    cutoff: str | None  # day folders strictly before this date were removed
    days_removed: list[str] = field(default_factory=list)
    files_removed: int = 0
    bytes_removed: int = 0


def prune_raw_archive(
    data_dir: Path | str | Storage, older_than_days: int | None, *, today: date | None = None
) -> PruneReport:
    """Delete ``raw/YYYY-MM-DD/`` day folders older than ``older_than_days`` days (None keeps all).

    Only the raw WARC files go: articles keep their rows (their ``raw_path`` then names a file that
    is gone, so those pages can no longer be re-extracted without fetching them again). Hold the
    writer lock.
    """
    if older_than_days is None:
        return PruneReport(retention_days=None, cutoff=None)
    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=older_than_days)
    report = PruneReport(retention_days=older_than_days, cutoff=cutoff.isoformat())
    storage = as_storage(data_dir)
    if not storage.local:
        _prune_elsewhere(storage, cutoff, report)
        return report
    raw = storage.local_path("raw")
    if not raw.is_dir():
        return report
    for day in sorted(raw.iterdir()):
        if not (day.is_dir() and not day.is_symlink() and RAW_DAY_RE.match(day.name)):
            continue
        try:
            when = date.fromisoformat(day.name)
        except ValueError:
            continue
        if when >= cutoff:
            continue
        for f in day.rglob("*"):
            if f.is_file():
                report.files_removed += 1
                report.bytes_removed += f.stat().st_size
        shutil.rmtree(day)
        report.days_removed.append(day.name)
    if report.days_removed:
        fsync_dir(raw)
    return report


def _prune_elsewhere(storage: Storage, cutoff: date, report: PruneReport) -> None:
    fs = storage.fs
    for day in storage.glob("raw", "*"):
        name = day.rsplit("/", 1)[-1]
        if not RAW_DAY_RE.match(name) or date.fromisoformat(name) >= cutoff:
            continue
        path = storage.path(day)
        if not fs.isdir(path):
            continue
        sizes = fs.du(path, total=False)
        report.files_removed += len(sizes)
        report.bytes_removed += sum(sizes.values())
        fs.rm(path, recursive=True)
        report.days_removed.append(name)


# --------------------------------------------------------------------------- consistency check


@dataclass
class TableCheck:
    table: str
    duckdb_rows: int
    parquet_rows: int
    missing_in_parquet: int  # keys in DuckDB with no Parquet row
    missing_in_duckdb: int  # keys in Parquet with no DuckDB row
    duplicate_keys_in_parquet: int
    examples_missing_in_parquet: list[str] = field(default_factory=list)
    examples_missing_in_duckdb: list[str] = field(default_factory=list)
    examples_duplicate_in_parquet: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return (
            self.duckdb_rows == self.parquet_rows
            and not self.missing_in_parquet
            and not self.missing_in_duckdb
            and not self.duplicate_keys_in_parquet
        )


@dataclass
class WarehouseCheck:
    data_dir: str
    tables: list[TableCheck]
    unexported_batches: list[str]  # committed in DuckDB, Parquet not (fully) written
    temporary_files: list[str]  # *.newsflow-tmp, an unfinished rebuild
    staging: list[str]  # what an interrupted compaction or rewrite left under .staging/

    @property
    def consistent(self) -> bool:
        return (
            all(t.consistent for t in self.tables)
            and not self.unexported_batches
            and not self.temporary_files
            and not self.staging
        )

    @property
    def exit_status(self) -> int:
        return 0 if self.consistent else 1

    def problems(self) -> list[str]:
        out = []
        for t in self.tables:
            if t.duckdb_rows != t.parquet_rows:
                out.append(f"{t.table}: {t.duckdb_rows} rows in DuckDB, {t.parquet_rows} in Parquet")
            for n, what, ex in (
                (t.missing_in_parquet, "in DuckDB but not in Parquet", t.examples_missing_in_parquet),
                (t.missing_in_duckdb, "in Parquet but not in DuckDB", t.examples_missing_in_duckdb),
                (t.duplicate_keys_in_parquet, "more than once in Parquet", t.examples_duplicate_in_parquet),
            ):
                if n:
                    out.append(f"{t.table}: {n} {KEYS[t.table]}(s) {what}, e.g. {', '.join(ex[:3])}")
        if self.unexported_batches:
            out.append(f"{len(self.unexported_batches)} batch(es) committed but not exported")
        out += [f"temporary file: {p}" for p in self.temporary_files]
        out += [f"staging leftover: {p}" for p in self.staging]
        return out

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "consistent": self.consistent,
            "problems": self.problems(),
        }


_EXAMPLES = 20
# Per table, against the table's Parquet keys registered as the relation ``pq`` (column ``k``).
_CHECK_SQL = {
    t: {
        "missing_in_parquet": f"SELECT d.{k} AS k FROM {t} d ANTI JOIN pq ON d.{k} = pq.k",  # noqa: S608
        "missing_in_duckdb": f"SELECT DISTINCT pq.k FROM pq ANTI JOIN {t} d ON d.{k} = pq.k",  # noqa: S608
        "duplicate_in_parquet": "SELECT k FROM pq GROUP BY k HAVING count(*) > 1",
    }
    for t, k in KEYS.items()
}


def _parquet_relation(con: duckdb.DuckDBPyConnection, data_dir: Path | Storage, table: str):
    """The table's Parquet rows as a relation of ``con``, or None when there are none."""
    storage = as_storage(data_dir)
    if not has_parquet(storage, table):
        return None
    return parquet_relation(con, storage, table)


def check_warehouse(data_dir: Path | str) -> WarehouseCheck:
    """Compare Parquet with DuckDB, table by table; list unfinished work and leftovers.

    Opens the database read-only (raises ``duckdb.IOException`` while another process writes it:
    hold the writer lock, as ``newsflow warehouse check`` does).
    """
    data_dir = Path(data_dir)
    storage = as_storage(data_dir)
    db = data_dir / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"no warehouse database at {db}")
    con = connect(db, read_only=True)
    try:
        tables = [_check_table(con, storage, t) for t in APPEND_TABLES + SNAPSHOT_TABLES]
        unexported = [
            r[0]
            for r in con.execute(
                "SELECT load_batch FROM load_batches WHERE NOT exported ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    roots = [data_dir]
    if storage.local and storage.local_path().resolve() != data_dir.resolve():
        roots.append(storage.local_path())  # elsewhere nothing is written under a temporary name
    temporary = sorted(
        str(p) for root in roots for p in root.rglob(f"*{TMP_SUFFIX}") if STAGING_DIR not in p.parts
    )
    temporary += sorted(str(p) for p in data_dir.glob(f"{REBUILD_NAME}*"))
    staging_dir = storage.local_path(STAGING_DIR) if storage.local else None
    staging = sorted(str(p) for p in staging_dir.iterdir()) if staging_dir and staging_dir.is_dir() else []
    return WarehouseCheck(str(data_dir), tables, unexported, temporary, staging)


def _check_table(con: duckdb.DuckDBPyConnection, data_dir: Path | Storage, table: str) -> TableCheck:
    duck_rows = con.execute(SQL_COUNT[table]).fetchone()[0]
    rel = _parquet_relation(con, data_dir, table)
    if rel is None:
        keys = pa.table({"k": pa.array([], pa.string())})
        con.register("pq", keys)
    else:
        con.register("pq", rel.select(f"{KEYS[table]} AS k"))
    try:
        parquet_rows = con.execute("SELECT count(*) FROM pq").fetchone()[0]
        found = {}
        for name, sql in _CHECK_SQL[table].items():
            rows = [r[0] for r in con.execute(sql).fetchall()]
            found[name] = (len(rows), sorted(rows)[:_EXAMPLES])
    finally:
        con.unregister("pq")
    return TableCheck(
        table,
        duck_rows,
        parquet_rows,
        found["missing_in_parquet"][0],
        found["missing_in_duckdb"][0],
        found["duplicate_in_parquet"][0],
        found["missing_in_parquet"][1],
        found["missing_in_duckdb"][1],
        found["duplicate_in_parquet"][1],
    )


# --------------------------------------------------------------------------- rebuild


class DatabaseInUse(RuntimeError):
    """Another process has the DuckDB file open (one that does not take the writer lock)."""


@dataclass
class RebuildReport:
    data_dir: str
    rows: dict[str, int]  # per table, in the new database
    load_batches: int
    recovered_first: dict[str, int] | None  # what recover() repaired before the rebuild
    previous_database_unreadable: str | None  # why the old database could not be used first
    backup: str | None  # kept only with keep_backup=True


def _parquet_counts(data_dir: Path | Storage) -> dict[str, int]:
    con = duckdb.connect(":memory:")
    try:
        out = {}
        for t in APPEND_TABLES + SNAPSHOT_TABLES:
            rel = _parquet_relation(con, data_dir, t)
            out[t] = rel.aggregate("count(*)").fetchone()[0] if rel is not None else 0
        return out
    finally:
        con.close()


def _db_counts(path: Path) -> dict[str, int]:
    con = connect(path, read_only=True)
    try:
        return {t: con.execute(SQL_COUNT[t]).fetchone()[0] for t in APPEND_TABLES + SNAPSHOT_TABLES}
    finally:
        con.close()


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _insert_from_parquet(con: duckdb.DuckDBPyConnection, table: str, glob: str) -> str:
    if table != "articles":
        return SQL_INSERT_FROM_PARQUET[table]
    columns = set(con.sql(SQL_READ_PARTITIONED, params={"glob": glob}).columns)
    if {"version", "article_key"} <= columns:
        return SQL_INSERT_ARTICLES_FROM_PARQUET
    return SQL_INSERT_UNVERSIONED_ARTICLES_FROM_PARQUET


def rebuild_duckdb(
    data_dir: Path | str, *, recover_first: bool = True, keep_backup: bool = False
) -> RebuildReport:
    """Recreate ``newsflow.duckdb`` from the Parquet files. Hold the writer lock.

    When the current database opens, its committed-but-unexported batches are exported first
    (:meth:`Warehouse.recover`) and the snapshots rewritten, so nothing committed is lost. The new
    database is built beside the old one, verified (row counts equal to Parquet's), swapped in
    with ``os.replace``, verified again (counts and keys, as :func:`check_warehouse` compares them);
    the old one is kept as ``newsflow.duckdb.bak`` until then (and restored when that fails), and
    afterwards only with ``keep_backup``. Raises :class:`DatabaseInUse` when another process has
    the database open.
    """
    data_dir = Path(data_dir)
    db = data_dir / DB_NAME
    recovered, unreadable = None, None
    if recover_first and db.exists():
        try:
            with Warehouse(data_dir) as wh:
                recovered = wh.recover()
                wh.export_snapshots()
        except duckdb.Error as exc:
            if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
                raise DatabaseInUse(
                    f"{db} is open in another process ({exc}); nothing was changed, run again later"
                ) from exc
            unreadable = f"{type(exc).__name__}: {exc}"
            log.warning("the current database could not be opened (%s); rebuilding from Parquet only", exc)
    storage = as_storage(data_dir)
    remove_staging(storage)
    expected = _parquet_counts(storage)

    new = data_dir / REBUILD_NAME
    _remove_db(new)
    con = connect(new)
    try:
        storage.attach(con)
        migrate(con)
        con.execute("BEGIN TRANSACTION")
        for t in APPEND_TABLES:
            if has_parquet(storage, t):
                glob = parquet_glob(storage, t)
                con.execute(_insert_from_parquet(con, t, glob), [glob])
        for t in SNAPSHOT_TABLES:
            if has_parquet(storage, t):
                con.execute(SQL_INSERT_SNAPSHOT[t], [parquet_glob(storage, t)])
        con.execute(SQL_RECONSTRUCT_BATCHES)
        rebuild_story_index(con)  # not in Parquet: derived from the articles' texts
        con.execute("COMMIT")
        checkpoint(con)
        batches = con.execute("SELECT count(*) FROM load_batches").fetchone()[0]
    except BaseException:
        con.close()
        _remove_db(new)
        raise
    con.close()
    got = _db_counts(new)
    if got != expected:
        _remove_db(new)
        raise RuntimeError(f"rebuilt database does not match Parquet: {got} != {expected}")

    backup = data_dir / BACKUP_NAME
    _remove_db(backup)
    if db.exists():
        try:
            os.link(db, backup)
        except OSError:
            shutil.copy2(db, backup)
    # A WAL left by a crashed writer belongs to the old file: replayed on the new one it would
    # corrupt it. It goes with the backup.
    old_wal = db.with_name(db.name + ".wal")
    if old_wal.exists():
        os.replace(old_wal, backup.with_name(backup.name + ".wal"))
    os.replace(new, db)
    fsync_dir(data_dir)
    try:
        final = _db_counts(db)
        disagree = [t for t in check_warehouse(data_dir).tables if not t.consistent]  # counts and keys
        if final != expected or disagree:
            raise RuntimeError(
                f"database after the swap does not match Parquet: {final} != {expected} "
                f"or keys differ in {[t.table for t in disagree]}; the previous database is restored"
            )
    except BaseException:
        if backup.exists():
            os.replace(backup, db)
            bak_wal = backup.with_name(backup.name + ".wal")
            if bak_wal.exists():
                os.replace(bak_wal, old_wal)
        raise
    if not keep_backup:
        _remove_db(backup)
    return RebuildReport(
        data_dir=str(data_dir),
        rows=final,
        load_batches=batches,
        recovered_first=recovered,
        previous_database_unreadable=unreadable,
        backup=str(backup) if keep_backup and backup.exists() else None,
    )


def summarize(items: Iterable[CompactionReport]) -> dict[str, dict]:
    """Compaction reports by table, as plain data (the flow's result and artifact)."""
    return {r.table: r.to_dict() for r in items}
