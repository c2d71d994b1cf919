"""The raw archive: every fetched feed document and page, as gzipped WARC response records.

One WARC file per load batch under ``<storage>/raw/<date>/`` (the storage root is the data dir
by default: warehouse/storage.py), written under a temporary name and renamed once complete, so a
crash never leaves a torn file; on storage that is not a local directory the file is written
locally first (under ``<data>/.outgoing/``) and sent whole at commit (one ``put_file``). Re-extraction
reads records back by (path, offset), a range read on an object store, and needs no network
but the storage's.
"""

from __future__ import annotations

import io
import os
import zlib
from datetime import UTC, datetime
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.fetch import FetchResult
from warehouse.files import TMP_SUFFIX, fsync_dir
from warehouse.storage import Storage, as_storage

# The body we keep is decoded; these headers would describe the wire form, not what is stored.
_WIRE_HEADERS = {"content-encoding", "transfer-encoding", "content-length"}
DEFAULT_GZIP_LEVEL = 3  # Settings.raw_gzip_level: why 3


class RawArchiveWriter:
    def __init__(self, location: Path | Storage, relative_path: str, level: int = DEFAULT_GZIP_LEVEL):
        self.level = level
        self.storage = as_storage(location)
        self.relative_path = relative_path
        if self.storage.local:
            self.path = self.storage.local_path(relative_path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:  # spooled locally, sent whole at commit; the pid in the name as for any temporary
            self.path = self.storage.spool_dir / relative_path.replace("/", "_")
            self.storage.spool_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
        self._fh = open(self._tmp, "wb")
        self._buffer = io.BytesIO()
        # Records are serialised uncompressed, then gzipped here one member per record (the WARC
        # convention, so a record can be read from its offset) at ``level``: warcio would use
        # zlib level 9, several times slower on HTML for a file a few per cent smaller.
        self._writer = WARCWriter(self._buffer, gzip=False)
        self.records = 0

    def add(self, result: FetchResult) -> int | None:
        """Append the response; returns its offset (None when there is no body to keep)."""
        if result.body is None or result.status is None:
            return None
        headers = [(k, v) for k, v in result.headers if k.lower() not in _WIRE_HEADERS]
        original = result.header("content-encoding")
        if original:
            headers.append(("X-Newsflow-Original-Content-Encoding", original))
        headers.append(("Content-Length", str(len(result.body))))
        http_headers = StatusAndHeaders(f"{result.status} -", headers, protocol="HTTP/1.1")
        warc_headers = {
            "WARC-Date": result.fetched_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if result.remote_address:
            warc_headers["WARC-IP-Address"] = result.remote_address
        record = self._writer.create_warc_record(
            result.final_url,
            "response",
            payload=io.BytesIO(result.body),
            length=len(result.body),
            http_headers=http_headers,
            warc_headers_dict=warc_headers,
        )
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.write_record(record)
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, zlib.MAX_WBITS + 16)
        offset = self._fh.tell()
        self._fh.write(compressor.compress(self._buffer.getbuffer()) + compressor.flush())
        self.records += 1
        return offset

    def commit(self) -> str | None:
        """Make the file visible (fsync, rename). Returns its path relative to the data dir."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.records == 0:
            self._tmp.unlink(missing_ok=True)
            return None
        if not self.storage.local:
            try:
                # One upload of the complete file: an object store shows it whole or not at all.
                self.storage.fs.put_file(str(self._tmp), self.storage.path(self.relative_path))
            finally:
                self._tmp.unlink(missing_ok=True)
            return self.relative_path
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return self.relative_path

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


def raw_path_for(load_batch: str, when: datetime) -> str:
    return f"raw/{when:%Y-%m-%d}/{load_batch}.warc.gz"


def read_raw_record(
    location: Path | Storage, relative_path: str, offset: int
) -> tuple[str, dict[str, str], bytes]:
    """(target URL, HTTP headers, body) of the record at ``offset``."""
    storage = as_storage(location)
    if storage.local:
        opened = open(storage.local_path(relative_path), "rb")  # noqa: SIM115 - closed below
    else:
        opened = storage.fs.open(storage.path(relative_path), "rb")
    with opened as fh:
        fh.seek(offset)
        for record in ArchiveIterator(fh):
            headers = dict(record.http_headers.headers) if record.http_headers else {}
            return record.rec_headers.get_header("WARC-Target-URI"), headers, record.content_stream().read()
    raise LookupError(f"no WARC record at {relative_path}:{offset}")
