"""What the benchmark scripts share: a warmed-up process pool, a timed command, the results file,
the table."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# No <html lang>, and enough text that the language model (py3langid) is loaded too.
_WARM_UP_PAGE = (
    b"<html><body><article><h1>Warm up</h1><p>Warming up the extractor once, so that the timed work "
    b"starts with every module imported and the language identification model loaded.</p>"
    b"</article></body></html>"
)
_BARRIER_TIMEOUT = 120.0


@dataclass
class CommandRun:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    started_at: float  # time.time() at its start (to place a Prefect run's timestamps)
    watcher: Any = None  # what ``watch`` made (a memory sampler), after the run


def run_command(
    cmd: Sequence[str],
    env: dict[str, str],
    timeout: float,
    cwd: Path | None = None,
    watch: Callable[[int], AbstractContextManager] | None = None,
) -> CommandRun:
    """Run ``cmd`` in its own session, timed from start to exit; on timeout its whole process group
    (Prefect's temporary server, extraction workers) is killed. ``watch(pid)``: a context manager
    around the run (a memory sampler)."""
    started_at, started = time.time(), time.perf_counter()
    watcher = None
    with subprocess.Popen(
        list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        watcher = watch(proc.pid) if watch else None
        with watcher if watcher is not None else nullcontext():
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                stderr += f"\n[benchmark] killed after {timeout:.0f} s\n"
    return CommandRun(proc.returncode, time.perf_counter() - started, stdout, stderr, started_at, watcher)


def _warm_worker(barrier: Any) -> None:
    """Pool initializer: import and run the extractor once, then wait for the other workers, so
    that no worker is still starting when the timed work begins."""
    from tasks.extract import ExtractJob, extract_article

    extract_article(ExtractJob(key="warm-up", url="http://127.0.0.1/warm-up", body=_WARM_UP_PAGE))
    try:
        barrier.wait(_BARRIER_TIMEOUT)
    except BrokenBarrierError:
        pass


def _ready(n: int) -> int:
    return n


def warm_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context pool (as the pipeline's ``ExtractorPool``) whose workers are all started,
    imported and warmed up when this returns."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_warm_worker, initargs=(ctx.Barrier(workers),)
    )
    list(pool.map(_ready, range(workers)))  # one task each: every worker is spawned now
    return pool


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "trafilatura": version("trafilatura"),
        "newsflow": version("newsflow"),
    }


def write_results(data: dict[str, Any], default_name: str, output: Path | None = None) -> Path:
    path = output or RESULTS_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title)
    for n, header in enumerate(headers):
        table.add_column(header, justify="left" if n == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console(width=max(100, Console().width)).print(table)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
