"""Where the warehouse keeps its Parquet files and raw archive: any fsspec filesystem.

The DuckDB file, the writer lock and the markers always stay in the local data directory (DuckDB
writes its file in place, and the lock must be on the writer's machine). The Parquet files and
the raw WARC archive live under the storage root, ``NEWSFLOW_STORAGE_URL``: the data directory
itself by default (today's layout), another local directory (``file:///srv/news-files``) or an
object store (``s3://bucket/news``, with the filesystem's own package, s3fs say, installed and its
credentials configured the fsspec way: environment or fsspec configuration).

The storage URL is a property of the warehouse, not of one run: the first writer that opens the
warehouse with a non-default URL records it in ``<data>/newsflow.storage``, every later command
(``newsflow sql`` and the other readers, maintenance) finds the files from that record, and a
writer given a different URL is refused (the DuckDB file says which batches were exported, and
where they went must not change under it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import fsspec
from fsspec.implementations.local import LocalFileSystem

STORAGE_RECORD = "newsflow.storage"  # in the data dir: the storage URL, when not the data dir
LOCAL = "file"
# A non-local write goes through a local file first (the raw archive is appended record by
# record; an object store takes a file whole): under the data dir, outside the storage root.
SPOOL_DIR = ".outgoing"


class StorageMismatch(RuntimeError):
    """A writer was given a storage URL other than the one the warehouse keeps its files in."""


@dataclass(frozen=True)
class Storage:
    """The warehouse's data directory (DuckDB side) and its file storage (Parquet, raw archive).

    Only strings and a path: it pickles, so Prefect tasks and Dask can take it as a parameter; the
    filesystem object is fsspec's (cached per protocol)."""

    data_dir: Path
    protocol: str  # "file" for a local directory
    root: str  # the root inside that filesystem, without protocol or trailing "/"

    @property
    def local(self) -> bool:
        return self.protocol == LOCAL

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(self.protocol)

    @property
    def url(self) -> str:
        """The root as a URL (what is recorded and compared)."""
        if self.local:
            return f"file://{os.path.abspath(self.root)}"
        return f"{self.protocol}://{self.root}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / SPOOL_DIR

    def path(self, *parts: str) -> str:
        """A path inside the filesystem (for ``self.fs``)."""
        return "/".join((self.root, *parts))

    def local_path(self, *parts: str) -> Path:
        """The same path as a ``Path``; local storage only."""
        if not self.local:
            raise ValueError(f"{self.url} is not a local directory")
        return Path(self.root, *parts)

    def reader_path(self, *parts: str) -> str:
        """A path or glob as DuckDB and pyarrow take it: a plain path when local, else a URL
        (DuckDB reads it through the filesystem registered by :meth:`attach`)."""
        if self.local:
            return str(Path(self.root, *parts))
        return f"{self.protocol}://{self.path(*parts)}"

    def attach(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let ``con`` read this storage (a no-op on local storage: DuckDB reads local paths itself)."""
        if not self.local and not con.filesystem_is_registered(self.protocol):
            con.register_filesystem(self.fs)
            # One DuckDB thread: duckdb 1.5.5 can bind a read_parquet over a Python filesystem
            # while holding the GIL that its worker threads need to call that filesystem (a
            # deadlock, 2 times in 10 on a 2-file glob here). Only a storage that is not local
            # pays for it.
            con.execute("SET threads = 1")
        return con

    def glob(self, *parts: str) -> list[str]:
        """Paths matching a glob under the root, each relative to the root, sorted."""
        prefix = self.path() + "/"
        return sorted(p.removeprefix(prefix) for p in self._fs_glob(self.path(*parts)))

    def _fs_glob(self, pattern: str) -> list[str]:
        if self.local:
            base = Path(self.root)
            return [str(p).replace(os.sep, "/") for p in base.glob(pattern.removeprefix(self.root + "/"))]
        return self.fs.glob(pattern)

    def exists(self, *parts: str) -> bool:
        if self.local:
            return Path(self.root, *parts).exists()
        return self.fs.exists(self.path(*parts))


def parse_storage_url(data_dir: Path, url: str | None) -> Storage:
    """The storage a URL names (None, empty, or the data dir itself: the data dir)."""
    if url is None or not str(url).strip():
        return Storage(data_dir, LOCAL, str(data_dir))
    url = str(url).strip()
    fs, root = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        if os.path.abspath(root) == os.path.abspath(data_dir):
            return Storage(data_dir, LOCAL, str(data_dir))
        return Storage(data_dir, LOCAL, root.rstrip("/") or "/")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return Storage(data_dir, protocol, root.rstrip("/"))


def recorded_storage_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / STORAGE_RECORD).read_text().strip() or None
    except FileNotFoundError:
        return None


def resolve_storage(data_dir: Path | str, url: str | None = None) -> Storage:
    """The warehouse's storage: the recorded one; ``url`` (a setting) must agree with it.

    Raises :class:`StorageMismatch` when ``url`` names another place than the record, or when the
    warehouse already keeps its files in the data dir and ``url`` names another place."""
    data_dir = Path(data_dir)
    recorded = recorded_storage_url(data_dir)
    current = parse_storage_url(data_dir, recorded)
    if url is None:
        return current
    wanted = parse_storage_url(data_dir, url)
    if wanted.url == current.url:
        return current
    if recorded is not None:
        raise StorageMismatch(
            f"the warehouse at {data_dir} keeps its Parquet files and raw archive at {current.url} "
            f"(recorded in {data_dir / STORAGE_RECORD}), not at {wanted.url}: unset NEWSFLOW_STORAGE_URL "
            "or set it to the recorded URL"
        )
    if (data_dir / "parquet").exists() or (data_dir / "raw").exists():
        raise StorageMismatch(
            f"the warehouse at {data_dir} keeps its Parquet files and raw archive in {data_dir}; "
            f"they cannot be moved to {wanted.url} by a setting (copy them there and write that URL "
            f"into {data_dir / STORAGE_RECORD}, or unset NEWSFLOW_STORAGE_URL)"
        )
    return wanted


def record_storage(storage: Storage) -> None:
    """Write the storage URL into the data dir when it is not the data dir (a writer, holding
    the writer lock, at its first open). Idempotent."""
    if storage.url == parse_storage_url(storage.data_dir, None).url:
        return
    if recorded_storage_url(storage.data_dir) == storage.url:
        return
    record = storage.data_dir / STORAGE_RECORD
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(storage.url + "\n")
    os.replace(tmp, record)


def as_storage(location: Path | str | Storage) -> Storage:
    """A data dir (its recorded storage) or a Storage as it is."""
    return location if isinstance(location, Storage) else resolve_storage(location)
