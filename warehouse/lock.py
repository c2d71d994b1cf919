"""The warehouse writer lock.

DuckDB takes one writer process; a second one fails with "Could not set lock on file". Every
writer (poll, backfill, maintenance) takes this lock first, so a second run waits with a clear
message, or gives up cleanly after ``lock_timeout`` seconds, and never meets DuckDB's error.
An OS file lock (flock) is released by the kernel when its holder dies, even by SIGKILL.

The holder writes who it is into the lock file and empties it when it lets go: a writer that
finds the file free but not empty knows its predecessor died holding it (``dead_holder``), and
who that was (its Prefect flow run, to be marked crashed: Prefect itself sees it running still).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path


class WarehouseBusy(RuntimeError):
    """Another writer held the warehouse for longer than we were willing to wait."""


class WriterLock:
    def __init__(
        self,
        data_dir: Path,
        timeout: float,
        purpose: str,
        on_wait: Callable[[str], None] | None = None,
        poll_interval: float = 0.25,
        run_id: str | None = None,
        on_dead_holder: Callable[[dict], None] | None = None,
    ):
        self.path = data_dir / ".writer.lock"
        self.timeout = timeout
        self.purpose = purpose
        self.on_wait = on_wait
        self.poll_interval = poll_interval
        self.run_id = run_id
        self.on_dead_holder = on_dead_holder
        self.dead_holder: dict | None = None  # who held the lock and died without letting go
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another newsflow process"
        return describe_holder(info)

    def __enter__(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.on_wait:
                    self.on_wait(
                        f"warehouse {self.path.parent} is being written by {self.holder()}; "
                        f"waiting up to {self.timeout:.0f}s for it to finish"
                    )
                    told = True
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise WarehouseBusy(
                        f"gave up after {self.timeout:.0f}s: warehouse {self.path.parent} is still being "
                        f"written by {self.holder()}. Nothing was changed; run again later "
                        "(or raise NEWSFLOW_LOCK_TIMEOUT)."
                    ) from None
                time.sleep(self.poll_interval)
        left_behind = os.pread(fd, 64 * 1024, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "run_id": self.run_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        if left_behind.strip():
            try:
                self.dead_holder = json.loads(left_behind)
            except ValueError:
                self.dead_holder = {"purpose": "unknown (unreadable lock file)"}
            if not isinstance(self.dead_holder, dict):
                self.dead_holder = {"purpose": "unknown (unreadable lock file)"}
            if self.on_dead_holder is not None:
                self.on_dead_holder(self.dead_holder)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def describe_holder(holder: dict) -> str:
    """``poll run 1234… (pid 42 on host, since 2026-12-01T02:00:00+00:00)``"""
    return (
        f"{holder.get('purpose', 'a run')} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('since')})"
    )
