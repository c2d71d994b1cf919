"""The page pipeline shared by the poll and the backfill flows: fetch -> extract -> dedup -> load,
over batches of pages, with the stages of consecutive batches overlapping.

While batch n is deduplicated and loaded (this thread, inside a warehouse session), batch n+1 is
extracted (the process pool) and archived (a worker thread), and batch n+2 is fetched (another
worker thread). At most three batches of pages are in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from newsflow.settings import Settings
from tasks import prefect_tasks as t
from tasks.dedup import PageJob
from tasks.extract import ExtractorPool
from tasks.load import RunContext, RunSummary
from warehouse.store import Warehouse, chunks

Session = Callable[[], AbstractContextManager[Warehouse]]
Progress = Callable[[int, int], None]  # (pages done, pages in total)


def process_pages(
    jobs: Sequence[PageJob],
    settings: Settings,
    pool: ExtractorPool,
    ctx: RunContext,
    summary: RunSummary,
    session: Session,
    *,
    skip_known: bool = False,
    progress: Progress | None = None,
) -> None:
    """Fetch, extract, deduplicate and load ``jobs`` a batch at a time.

    ``session()`` gives the warehouse for one batch's reads and writes: the poll holds one for its
    whole run; a backfill takes the writer lock per batch so that polls can run in between.
    With ``skip_known``, pages whose URL is already stored are dropped just before their batch is
    fetched (what makes a backfill idempotent and resumable).
    """
    batches = [list(b) for b in chunks(list(jobs), settings.batch_size)]
    total = len(jobs)
    done = 0

    def prepare(batch: list[PageJob]) -> list[PageJob]:
        if not skip_known:
            return batch
        with session() as wh:
            known = wh.known_url_keys([j.url_key for j in batch])
        summary.skipped_known += sum(1 for j in batch if j.url_key in known)
        return [j for j in batch if j.url_key not in known]

    def finish(pending) -> None:
        nonlocal done
        batch_jobs, results, batch_id, extracted, archived, size = pending
        if batch_jobs:
            with session() as wh:
                pages = t.dedup_articles(batch_jobs, results, extracted.result(), wh)
                t.load_pages(pages, archived.result(), batch_id, wh, ctx, summary)
        done += size
        if progress:
            progress(done, total)

    if not batches:
        return
    first = prepare(batches[0])
    next_fetch = (t.fetch_pages.submit(first, settings), first, len(batches[0]))
    pending = None
    for i in range(len(batches)):
        fetch_future, batch_jobs, size = next_fetch
        results = fetch_future.result()
        if i + 1 < len(batches):
            following = prepare(batches[i + 1])
            next_fetch = (t.fetch_pages.submit(following, settings), following, len(batches[i + 1]))
        batch_id = ctx.next_batch_id()
        current = (
            batch_jobs,
            results,
            batch_id,
            t.extract_pages.submit(results, pool),
            t.archive_pages.submit(results, settings.data_dir, batch_id),
            size,
        )
        if pending is not None:
            finish(pending)
        pending = current
    finish(pending)
