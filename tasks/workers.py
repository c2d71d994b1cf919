"""Worker processes for the CPU work of a run (feed parsing, page extraction), with a time bound.

Parsers are C and Python code fed by strangers: some documents take them minutes or hours
(trafilatura on one element with thousands of attributes, or 250,000 tiny paragraphs; feedparser
at about 20 µs per element on 15 MiB of empty elements). A thread cannot be stopped, a process
can: with a bound, each item runs in a worker process, and an item over its bound is given up by
killing the worker that holds it; the other items of the batch go on.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Why an item was given up: it took longer than its bound, or its worker process died on it.
TIMED_OUT = "timed_out"
WORKER_DIED = "worker_died"

STARTUP_TIMEOUT = 300.0  # seconds the workers may take to start before items are sent anyway

GiveUp = Callable[[Item, str, float | None], Result]


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """A worker whose parent died (killed with SIGKILL, say) has nothing left to do: leave."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(0)


def _worker_start(warm_up: Callable[[], None] | None) -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if warm_up is not None:
        warm_up()


def _ready() -> bool:
    return True


class BoundedProcessPool:
    """A process pool sized to the cores, kept for a whole run (start-up is paid once).

    ``timeout`` is the default bound of one item, in seconds (None or 0: no bound). Without a
    bound and with one worker, items run in the caller's own process (no process to start); a
    call given a bound starts the workers if they are not running."""

    def __init__(self, workers: int, timeout: float | None = None, warm_up: Callable[[], None] | None = None):
        self.workers = max(1, workers)
        self.timeout = timeout or None
        self._warm_up = warm_up
        self._executor: ProcessPoolExecutor | None = None
        self._starting: list[Future] = []

    def __enter__(self):
        if self.workers > 1 or self.timeout:
            self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            # Without waiting: each worker takes a few hundred ms to exit (interpreter teardown),
            # which the run spends on what follows instead (at the end of a poll that was 0.3 s
            # of nothing). The pool's management thread reaps them; at the latest,
            # concurrent.futures joins it at interpreter exit.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _start(self) -> None:
        # spawn, not fork: the parent runs Prefect's threads and event loops.
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(self._warm_up,),
        )
        # Start the workers now (they spawn on the first submit): their imports then overlap
        # the I/O that comes before the first batch.
        self._starting = [self._executor.submit(_ready) for _ in range(self.workers)]

    def _started(self) -> None:
        """Wait for the workers' start-up (imports, warm-up: seconds on a busy machine), so that
        it is not counted in an item's time bound."""
        wait(self._starting, timeout=STARTUP_TIMEOUT)
        self._starting = []

    def _kill_workers(self) -> None:
        """Stop every worker now (one is stuck on an item); the pool is started again."""
        if self._executor is not None:
            for process in list(getattr(self._executor, "_processes", {}).values()):
                process.kill()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._start()

    def _restart(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._start()

    def apply(
        self,
        fn: Callable[[Item], Result],
        items: Iterable[Item],
        give_up: GiveUp,
        timeout: float | None = None,
    ) -> list[Result]:
        """``fn`` of every item, in order. ``fn`` must be picklable (a module-level function).
        An item over ``timeout`` (default: the pool's), or whose worker died, gets
        ``give_up(item, TIMED_OUT | WORKER_DIED, timeout)`` instead."""
        items = list(items)
        timeout = (timeout if timeout is not None else self.timeout) or None
        if not items:
            return []
        if self._executor is None and timeout:
            self._start()
        if self._executor is None:
            return [fn(item) for item in items]
        if timeout:
            self._started()
            return self._map_bounded(fn, items, give_up, timeout)
        chunksize = max(1, min(8, len(items) // (self.workers * 4) or 1))
        try:
            return list(self._executor.map(fn, items, chunksize=chunksize))
        except BrokenProcessPool:
            # A worker died (a crash in C code, the OOM killer): find the item that did it by
            # running the batch one item at a time in a fresh pool; the others still get done.
            return self._one_by_one(fn, items, give_up, None)

    def _map_bounded(self, fn, items: Sequence, give_up: GiveUp, timeout: float) -> list:
        """All items at once; if none finishes for ``timeout`` seconds, some item is stuck: the
        workers are killed and the items not done yet go one at a time, each with its own clock,
        so that only the items that really take too long are given up."""
        futures = {self._executor.submit(fn, item): n for n, item in enumerate(items)}
        results: dict[int, object] = {}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                if not done:
                    break
                for future in done:
                    results[futures[future]] = future.result()
        except BrokenProcessPool:
            pass
        if len(results) == len(items):
            return [results[n] for n in range(len(items))]
        self._kill_workers()
        rest = [n for n in range(len(items)) if n not in results]
        redone = self._one_by_one(fn, [items[n] for n in rest], give_up, timeout, restart=False)
        for n, result in zip(rest, redone, strict=True):
            results[n] = result
        return [results[n] for n in range(len(items))]

    def _one_by_one(
        self, fn, items: Sequence, give_up: GiveUp, timeout: float | None, restart: bool = True
    ) -> list:
        if restart:
            self._restart()
        results = []
        for item in items:
            self._started()
            try:
                results.append(self._executor.submit(fn, item).result(timeout=timeout))
            except BrokenProcessPool:
                results.append(give_up(item, WORKER_DIED, timeout))
                self._restart()
            except TimeoutError:
                results.append(give_up(item, TIMED_OUT, timeout))
                self._kill_workers()
        return results
