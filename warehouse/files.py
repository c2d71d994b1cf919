"""Atomic files: write under a temporary name outside every reader's glob, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Readers glob ``*.parquet`` and ``*.warc.gz``; a name ending in this is never matched.
TMP_SUFFIX = ".newsflow-tmp"


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


def remove_orphaned_temporaries(root: Path) -> list[Path]:
    """Temporary files left by a killed writer. Call only while holding the writer lock."""
    if not root.exists():
        return []
    removed = []
    for tmp in root.rglob(f"*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
