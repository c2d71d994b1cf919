"""Page extraction on a Dask cluster (``NEWSFLOW_DASK``, ``--dask``), through prefect-dask's
``DaskTaskRunner``.

What runs where, and why:

- **Extraction** (trafilatura: the CPU work) goes to the cluster. Each batch of pages is cut into
  a few chunks (two per worker thread of the cluster), one Prefect task run per chunk, and each
  chunk is extracted in the Dask worker process itself: the worker processes are the pool (no
  process pool is started inside a worker).
- **Fetching** stays in the flow's process. A run's politeness (per-host spacing and concurrency,
  robots.txt answers, hosts that asked us to come back later) is one object in that process
  (``tasks/robots.py``); fetches from several processes would each keep their own and together
  break a host's budget. Fetching is waiting on servers: one process keeps many requests in
  flight.
- **The warehouse writer** (DuckDB, the Parquet files, the raw archive) stays in the flow's
  process: one writer, serialised by the writer lock (``warehouse/lock.py``).

A chunk whose worker died (``KilledWorker``: Dask gave up after the worker processes holding it
died several times, a page crashing lxml or the out-of-memory killer) is extracted again by the
flow's own bounded pool, which finds the page and records it with an extraction error, as a run
without Dask does. The per-page time limit (``NEWSFLOW_EXTRACT_TIMEOUT``) is not enforced on the
cluster: a page is stopped by killing the process that holds it, and a Dask worker process runs
other chunks and belongs to the cluster, not to the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from urllib.parse import urlsplit

from newsflow.settings import DASK_LOCAL, Settings
from tasks import prefect_tasks as t
from tasks.extract import Extracted, ExtractJob, ExtractorPool
from tasks.fetch import FetchResult

CHUNKS_PER_THREAD = 2  # a slow chunk then leaves its thread's other half to the others
MIN_CHUNK_PAGES = 8  # fewer pages per task run and Prefect's bookkeeping (~10 ms) starts to show

logger = logging.getLogger(__name__)


class DaskUnavailable(RuntimeError):
    """``--dask`` was asked for but prefect-dask is not installed."""


def chunk_sizes(pages: int, threads: int) -> list[int]:
    """How many pages each task run of a batch gets: ``CHUNKS_PER_THREAD`` per worker thread,
    none smaller than ``MIN_CHUNK_PAGES`` (unless the batch is), sizes differing by one at most."""
    if pages <= 0:
        return []
    chunks = max(1, min(max(1, threads) * CHUNKS_PER_THREAD, math.ceil(pages / MIN_CHUNK_PAGES)))
    size, extra = divmod(pages, chunks)
    return [size + (1 if n < extra else 0) for n in range(chunks)]


def _warm_up_worker() -> None:
    """Pay a worker's imports and the language model's loading before its first chunk."""
    import py3langid
    import trafilatura  # noqa: F401

    py3langid.classify("warm up the language identification model")


def _api_url_for_workers() -> str | None:
    """Prefect's API as the workers must be told it, or None when they know it already.

    With ``PREFECT_API_URL`` set, the workers get it with each task run's context. A run on
    Prefect's temporary server (a command-line run without ``PREFECT_API_URL``) has that server
    in a subprocess of this process, on 127.0.0.1: unless told its address, every worker would
    start a temporary server of its own (about 10 s) and record its task runs there."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def _on_this_machine(target: str) -> bool:
    """``local``, or a scheduler on a loopback address (whose workers are on this machine too)."""
    if target == DASK_LOCAL:
        return True
    host = urlsplit(target).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


@dataclass(frozen=True)
class _Chunk:
    positions: tuple[int, ...]  # where its pages are in the batch
    jobs: tuple[ExtractJob, ...]
    future: object  # PrefectDaskFuture of list[Extracted]


class PendingExtraction:
    """A batch being extracted on the cluster; ``result()`` gives one ``Extracted`` (or None:
    no body to extract) per fetch result, in order, like the ``extract-pages`` task."""

    def __init__(self, size: int, chunks: list[_Chunk], fallback: ExtractorPool):
        self._size = size
        self._chunks = chunks
        self._fallback = fallback

    def result(self) -> list[Extracted | None]:
        from distributed import KilledWorker

        out: list[Extracted | None] = [None] * self._size
        for chunk in self._chunks:
            try:
                extracted = chunk.future.result()
            except KilledWorker:
                logger.warning(
                    "a Dask worker died on a chunk of %d pages: extracting them here, one at a time",
                    len(chunk.jobs),
                )
                extracted = self._fallback.map(chunk.jobs)
            for position, one in zip(chunk.positions, extracted, strict=True):
                out[position] = one
        return out


class DaskExtractor:
    """The run's connection to a Dask cluster for extraction: ``local`` starts a
    ``distributed.LocalCluster`` of ``workers`` processes (one thread each, on 127.0.0.1) for the
    run; an address connects to the scheduler running there (its workers must have newsflow
    installed, at the same version). ``fallback`` is the flow's own pool, for chunks whose
    worker died."""

    def __init__(self, target: str, workers: int, fallback: ExtractorPool):
        self.target = target
        self.workers = max(1, workers)
        self.fallback = fallback
        self._runner = None
        self._api_url: str | None = None

    def __enter__(self) -> DaskExtractor:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise DaskUnavailable("running on Dask needs prefect-dask: pip install 'newsflow[dask]'") from exc
        if self.target == DASK_LOCAL:
            # The scheduler and the nannies live in this process: keep their start/stop chatter
            # (INFO) out of a command-line run's output.
            logging.getLogger("distributed").setLevel(logging.WARNING)
            runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": self.workers,
                    "threads_per_worker": 1,  # trafilatura holds the GIL: one page per process
                    "processes": True,
                    "host": "127.0.0.1",
                    "dashboard_address": "127.0.0.1:0",  # its HTTP server on loopback, any port
                }
            )
        else:
            runner = DaskTaskRunner(address=self.target)
        self._runner = runner.__enter__()
        try:
            client = runner.client  # connects (or starts the local cluster) now
            # Each worker warms up while the flow fetches feeds and the first pages.
            from distributed import fire_and_forget

            for worker in client.nthreads():
                fire_and_forget(client.submit(_warm_up_worker, pure=False, workers=[worker]))
        except BaseException:
            runner.__exit__(None, None, None)
            self._runner = None
            raise
        self._api_url = _api_url_for_workers()
        if self._api_url and not _on_this_machine(self.target):
            logger.warning(
                "the Dask workers at %s are told Prefect's API is %s (this machine's temporary "
                "server): set PREFECT_API_URL to a Prefect server they can reach",
                self.target,
                self._api_url,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc)
            self._runner = None

    def threads(self) -> int:
        """Worker threads of the cluster now (it may grow or shrink between batches)."""
        return sum(self._runner.client.nthreads().values()) or 1

    def _submit_chunks(self, jobs: Sequence[ExtractJob], positions: Sequence[int]) -> list[_Chunk]:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        chunks = []
        start = 0
        # The API's address travels with each task run's context (see _api_url_for_workers).
        api = temporary_settings(updates={PREFECT_API_URL: self._api_url}) if self._api_url else nullcontext()
        with api:
            for size in chunk_sizes(len(jobs), self.threads()):
                part = tuple(jobs[start : start + size])
                # Plain parameters: the task runner sends them to the cluster as they are (a quoted
                # batch would reach the worker still wrapped).
                future = self._runner.submit(t.extract_on_worker.task, parameters={"jobs": part})
                chunks.append(_Chunk(tuple(positions[start : start + size]), part, future))
                start += size
        return chunks

    def submit(self, results: Sequence[FetchResult]) -> PendingExtraction:
        """Start extracting a batch of fetched pages on the cluster."""
        jobs, positions = t.page_extract_jobs(results)
        return PendingExtraction(len(results), self._submit_chunks(jobs, positions), self.fallback)

    def map(self, jobs: Sequence[ExtractJob]) -> list[Extracted]:
        """Extract ``jobs`` on the cluster and wait: one ``Extracted`` per job, in order."""
        pending = PendingExtraction(len(jobs), self._submit_chunks(jobs, range(len(jobs))), self.fallback)
        return pending.result()


@contextmanager
def run_extraction(settings: Settings) -> Iterator[tuple[ExtractorPool, ExtractorPool | DaskExtractor]]:
    """For one run: the flow's own pool (feed parsing; on Dask, also chunks whose worker died),
    and what extracts the pages: that pool, or the Dask cluster of ``settings.dask``. On Dask the
    own pool has one worker, started only when a time bound needs a process."""
    with ExtractorPool(1 if settings.dask else settings.extract_workers, settings.extract_timeout) as pool:
        if not settings.dask:
            yield pool, pool
            return
        with DaskExtractor(settings.dask, settings.extract_workers, pool) as on_dask:
            yield pool, on_dask
