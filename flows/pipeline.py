"""The page pipeline shared by the poll and the backfill flows: fetch -> extract -> dedup -> load,
over batches of pages, with the stages of consecutive batches overlapping.

While batch n is deduplicated and loaded (this thread, inside a warehouse session), batch n+1 is
extracted (the process pool) and archived (a worker thread), and batch n+2 is fetched (another
worker thread). At most three batches of pages are in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import timedelta

from flows.dask_extraction import DaskExtractor
from newsflow.settings import Settings
from tasks import prefect_tasks as t
from tasks import robots
from tasks.dedup import PageJob
from tasks.extract import ExtractorPool
from tasks.load import RunContext, RunSummary
from warehouse import hosts
from warehouse.storage import resolve_storage
from warehouse.store import Warehouse, chunks

Session = Callable[[], AbstractContextManager[Warehouse]]
Progress = Callable[[int, int], None]  # (pages done, pages in total)


def process_pages(
    jobs: Sequence[PageJob],
    settings: Settings,
    pool: ExtractorPool | DaskExtractor,
    ctx: RunContext,
    summary: RunSummary,
    session: Session,
    *,
    skip_known: bool = False,
    progress: Progress | None = None,
) -> None:
    """Fetch, extract, deduplicate and load ``jobs`` a batch at a time.

    ``pool`` extracts: the run's process pool, or a Dask cluster (flows/dask_extraction.py).
    ``session()`` gives the warehouse for one batch's reads and writes: the poll holds one for its
    whole run; a backfill takes the writer lock per batch so that polls can run in between.
    With ``skip_known``, pages whose URL is already stored are dropped just before their batch is
    fetched (what makes a backfill idempotent and resumable), except jobs marked ``refetch``
    and stored pages whose ``changed_at`` is later than their last fetch. A stored page fetched
    again becomes a new version of its article when its text changed, else nothing but its fetch.
    """
    # Batches of equal size: smaller first and last batches (25, 50, 100 ... 100, 50, 25) were
    # measured and dropped. They shortened the waits at both ends of a CPU-bound poll (0.6 s of
    # 23 s) but each batch's fetch ends with its slowest host, and in the fetch-bound poll of
    # benchmarks/growth.py the five extra batches cost 4.4 s (fetch-pages 12.1 -> 16.5 s).
    batches = [list(b) for b in chunks(list(jobs), settings.batch_size)]
    # Where the raw archive goes (the writer that opened the warehouse has recorded it).
    storage = resolve_storage(settings.data_dir, settings.storage_url)
    total = len(jobs)
    done = 0
    # Hosts that asked us (429/503 + Retry-After) to come back later and robots.txt answers, from
    # earlier runs and this one.
    politeness = seeded_politeness(ctx, settings, session)

    def prepare(batch: list[PageJob]) -> list[PageJob]:
        if not skip_known:
            return batch
        # Jobs marked `refetch` are fetched whether stored or not (a changed text is a new version).
        with session() as wh:
            known = wh.known_url_keys([j.url_key for j in batch if not j.refetch])
            changed = changed_since_fetched([j for j in batch if j.url_key in known], wh)
        kept = []
        for j in batch:
            if j.url_key in changed:
                kept.append(replace(j, refetch=True))
            elif j.refetch or j.url_key not in known:
                kept.append(j)
            else:
                summary.skipped_known += 1
        return kept

    def finish(pending) -> None:
        nonlocal done
        batch_jobs, results, batch_id, extracted, archived, size = pending
        if batch_jobs:
            extracted, raw_refs = extracted.result(), archived.result()
            with session() as wh:
                if skip_known:
                    # Another writer (a poll between two of our batches) may have stored some of
                    # these URLs since we checked: theirs stand, ours are dropped before loading.
                    known = wh.known_url_keys([j.url_key for j in batch_jobs if not j.refetch])
                    keep = [i for i, j in enumerate(batch_jobs) if j.refetch or j.url_key not in known]
                    summary.skipped_known += len(batch_jobs) - len(keep)
                    batch_jobs, results, extracted, raw_refs = (
                        [xs[i] for i in keep] for xs in (batch_jobs, results, extracted, raw_refs)
                    )
                if batch_jobs:
                    pages = t.dedup_articles(batch_jobs, results, extracted, wh)
                    t.load_pages(pages, raw_refs, batch_id, wh, ctx, summary)
        done += size
        if progress:
            progress(done, total)

    if not batches:
        save_politeness(politeness, session)
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
            submit_extraction(results, pool),
            t.archive_pages.submit(results, storage, batch_id, settings),
            size,
        )
        if pending is not None:
            finish(pending)
        pending = current
    finish(pending)
    save_politeness(politeness, session)


def submit_extraction(results, pool: ExtractorPool | DaskExtractor):
    """Start extracting a fetched batch: a task in the run's pool, or chunks on the Dask cluster."""
    if isinstance(pool, DaskExtractor):
        return pool.submit(results)
    return t.extract_pages.submit(results, pool)


def changed_since_fetched(jobs: Sequence[PageJob], wh: Warehouse) -> set[str]:
    """The URL keys of stored jobs whose source says they changed (``changed_at``, a sitemap's
    <lastmod>) after they were last fetched: their latest version, or a later fetch of the same
    URL that found the text unchanged (so an unchanged page is not fetched at every backfill).
    A job known only as another page's canonical URL, never fetched itself, stays skipped."""
    dated = [j for j in jobs if j.changed_at is not None]
    if not dated:
        return set()
    last = wh.last_fetched([j.url_key for j in dated], [j.url for j in dated])
    changed = set()
    for j in dated:
        fetched = [t for t in (last.get(j.url_key), last.get(j.url)) if t is not None]
        if fetched and j.changed_at > max(fetched):
            changed.add(j.url_key)
    return changed


def seeded_politeness(ctx: RunContext, settings: Settings, session: Session) -> robots.PolitenessState:
    """The run's politeness state (shared by every fetch of the run), seeded once from the
    warehouse: hosts still postponed, robots.txt answers younger than ``robots_cache_hours``.
    Call it before the run's first fetch, and pass the state to every fetch."""
    politeness = robots.run_state(ctx.run_id)
    if not politeness.seeded:
        with session() as wh:
            hosts.seed_state(politeness, wh.con, robots_max_age=timedelta(hours=settings.robots_cache_hours))
    return politeness


def save_politeness(politeness: robots.PolitenessState, session: Session) -> None:
    """Store what the run learnt about hosts (postponements, robots.txt answers) for later runs."""
    if politeness.postponed or politeness.rules_to_save():
        with session() as wh:
            hosts.save_state(wh.con, politeness)
