"""Atomic files: write under a temporary name outside every reader's glob, fsync, rename.

On storage that is not a local directory (warehouse/storage.py) a file is written in one request
instead (fsspec's ``pipe_file``: one PUT on an object store, where an object appears whole or not
at all, so there is no temporary name and nothing torn to clean up)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from warehouse.storage import Storage

# Readers glob ``*.parquet`` and ``*.warc.gz``; a name ending in this is never matched.
TMP_SUFFIX = ".newsflow-tmp"


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# DuckDB reports a full disk in the text of its own exceptions (IOException, TransactionException).
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk being full, from the OS or from DuckDB."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_message(exc: BaseException, data_dir: Path) -> str:
    return (
        f"the warehouse's disk is full ({data_dir}): {exc}. The batch being written was not loaded; "
        "every batch committed before it is kept. Please free some space and run again: the next run "
        "goes on from there."
    )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_parquet_to(storage: Storage, relative_path: str, table: pa.Table) -> None:
    """Write ``table`` at ``relative_path`` under the storage root, whole or not at all."""
    if storage.local:
        write_parquet_atomic(table, storage.local_path(relative_path))
        return
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    # One PUT: an object store makes the object visible complete, or not at all.
    storage.fs.pipe_file(storage.path(relative_path), buffer.getvalue().to_pybytes())


def remove_orphaned_temporaries(root: Path) -> list[Path]:
    """Temporary files left by a killed writer. Call only while holding the writer lock.

    A file whose writer is still alive is not an orphan: a backfill writes its batch's raw
    archive while it does not hold the lock (the archive overlaps the extraction), and a poll
    that took the lock in between must not pull that file from under it. The writer's pid is in
    the name (``.<name>.<pid>.newsflow-tmp``)."""
    if not root.exists():
        return []
    removed = []
    for tmp in root.rglob(f"*{TMP_SUFFIX}"):
        if _writer_alive(tmp):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


_TMP_PID = re.compile(r"\.(\d+)" + re.escape(TMP_SUFFIX) + "$")


def _writer_alive(tmp: Path) -> bool:
    match = _TMP_PID.search(tmp.name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False  # our own leftovers (an earlier failed write of this process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
