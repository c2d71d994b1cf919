"""The backfill flow: bring in articles that no feed shows any more.

Sources (exactly one per run): a list of URLs, a sitemap (index, gzip, Google News), a feed's
paginated archive, or ``reextract`` (run extraction again over the stored raw pages, no network).

Idempotent and resumable by construction: every page already stored is skipped before its batch
is fetched, every batch is one committed transaction, and a run killed at any point leaves what it
committed, which the next run skips. The writer lock is taken per batch, so scheduled polls keep
running during a long backfill.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.dask_extraction import run_extraction
from flows.pipeline import process_pages, seeded_politeness
from flows.poll import BUSY_STATE
from flows.reextract import reextract_articles
from flows.reporting import dead_writer_reporter, failed_on_full_disk
from newsflow.settings import build_settings
from tasks import dedup, sources
from tasks import prefect_tasks as t
from tasks.load import RunContext, RunSummary
from warehouse.lock import WarehouseBusy
from warehouse.store import writer_session

# The CLI registers a progress bar here; a flow run on a worker has none.
PROGRESS_LISTENERS: list[Callable[[int, int], None]] = []


BACKFILL_COUNTS = (
    "new_entries", "skipped_known", "pages_fetched", "pages_failed", "articles_extracted", "duplicates",
    "new_versions", "refetched_unchanged",
)  # fmt: skip


class BackfillError(ValueError):
    pass


@flow(name="newsflow-backfill", log_prints=False)
def backfill_flow(
    urls_file: str | None = None,
    sitemap: str | None = None,
    feed: str | None = None,
    pages: int = 10,
    since: date | None = None,
    until: date | None = None,
    reextract: bool = False,
    data_dir: str | None = None,
    refetch: bool = False,
    dask: str | None = None,
) -> dict:
    """Backfill from one source: ``urls_file``, ``sitemap``, ``feed`` (with ``pages``), or
    ``reextract``; ``since``/``until`` bound sitemap dates and re-extraction fetch dates.

    ``refetch``: URLs already stored are fetched again instead of skipped (a changed text is a
    new version of the article). Without it, a stored URL is fetched again only when its
    sitemap <lastmod> or its feed entry's date is later than its last fetch. ``dask`` (default
    ``NEWSFLOW_DASK``): extract on a Dask cluster, ``local`` or a scheduler address."""
    logger = get_run_logger()
    chosen = [name for name, v in (("urls_file", urls_file), ("sitemap", sitemap), ("feed", feed)) if v]
    if reextract and feed:
        chosen.remove("feed")  # with --reextract, --feed selects the articles to re-extract
    if len(chosen) + bool(reextract) != 1:
        raise BackfillError("choose exactly one source: urls_file, sitemap, feed or reextract")
    if refetch and reextract:
        raise BackfillError("refetch fetches pages again; reextract uses the stored ones: choose one")
    settings = build_settings(data_dir=data_dir, dask=dask)
    ctx = RunContext.new("backfill", flow_run.id)
    summary = RunSummary(run_id=ctx.run_id)
    session = partial(
        writer_session,
        settings.data_dir,
        settings.lock_timeout,
        f"backfill run {ctx.run_id}",
        logger.warning,
        run_id=ctx.run_id,
        on_dead_holder=dead_writer_reporter(f"backfill run {ctx.run_id}", logger),
        storage_url=settings.storage_url,
    )
    try:
        with session() as wh:
            repaired = wh.recover()
    except WarehouseBusy as exc:
        logger.error(str(exc))
        return Failed(name=BUSY_STATE, message=str(exc))
    if any(repaired.values()):
        logger.warning("repaired what an interrupted run left behind: %s", repaired)

    try:
        return _run(settings, ctx, summary, session, logger, chosen, urls_file, sitemap, feed, pages,
                    since, until, reextract, refetch)  # fmt: skip
    except WarehouseBusy as exc:
        # Another writer kept the warehouse longer than we wait, between two of our batches.
        # What was committed stays; running the same backfill again resumes from there.
        message = f"{exc} The backfill stopped; run it again to resume."
        logger.error(message)
        return Failed(name=BUSY_STATE, message=message)
    except Exception as exc:
        return failed_on_full_disk(exc, settings.data_dir, logger)


def _run(
    settings, ctx, summary, session, logger, chosen, urls_file, sitemap, feed, pages, since, until, reextract,
    refetch=False,
):  # fmt: skip
    if reextract:
        counts = reextract_articles(
            settings, ctx, summary, session, _progress_reporter(logger), since, until, feed
        )
        with session() as wh:
            t.record_run(wh, ctx, summary, "completed")
        result = {
            "run_id": ctx.run_id,
            "source": "reextract",
            **counts,
            "articles_extracted": summary.articles_extracted,
        }
        create_markdown_artifact(
            key="backfill-report", markdown=_table(result), description="newsflow re-extraction"
        )
        return {**result, "notes": [], "failures": []}

    jobs, entry_plan, notes, fetches = _collect(
        settings, ctx, session, urls_file, sitemap, feed, pages, since, until, summary, refetch
    )
    logger.info("backfill of %d pages (%s)", len(jobs), "; ".join(notes))
    report = _progress_reporter(logger)
    with run_extraction(settings) as (_, extractor):
        process_pages(jobs, settings, extractor, ctx, summary, session, skip_known=True, progress=report)
    with session() as wh:
        if fetches:
            t.load_source_fetches(fetches, "sitemap" if sitemap else "feed", wh, ctx)
        if entry_plan is not None:
            t.load_known_entries(entry_plan, wh, ctx)
        t.record_run(wh, ctx, summary, "completed")
    counts = summary.counts()
    result = {
        "run_id": ctx.run_id,
        "source": chosen[0],
        "pages_planned": len(jobs),
        **{k: counts[k] for k in BACKFILL_COUNTS},
    }
    create_markdown_artifact(
        key="backfill-report",
        markdown="\n".join(["# newsflow backfill", "", *(f"- {n}" for n in notes), "", _table(result)]),
        description="newsflow backfill report",
    )
    return {**result, "notes": notes, "failures": summary.failures}


def _collect(settings, ctx, session, urls_file, sitemap, feed, pages, since, until, summary, refetch=False):
    """The pages to fetch (and, for a feed, the entry plan), notes for the report, and the
    fetches made to find them (sitemaps, feed pages) for fetch_log. Those fetches share the run's
    politeness state with the page batches (spacing per host, postponed hosts)."""
    notes: list[str] = []
    if urls_file:
        urls, rejected = sources.read_url_list(Path(urls_file))
        notes.append(f"{len(urls)} URLs from {urls_file}")
        if rejected:
            notes.append(f"{len(rejected)} lines refused (not http/https): {rejected[:5]}")
        return _jobs_for_urls([(u, None) for u in urls], refetch), None, notes, []
    if sitemap:
        politeness = seeded_politeness(ctx, settings, session)
        walk = sources.walk_sitemaps(sitemap, settings, since, until, politeness)
        notes.append(
            f"{len(walk.urls)} URLs from {walk.sitemaps_fetched} sitemap(s); {walk.out_of_window} outside "
            f"{since or '…'} – {until or '…'}"
        )
        for url, error_class, message in walk.failures:
            summary.add_failure("sitemap", url, error_class, message)
        jobs = _jobs_for_urls([(u.loc, u.lastmod) for u in walk.urls], refetch)
        return jobs, None, notes, walk.fetches
    walk = sources.walk_feed_archive(feed, pages, settings, seeded_politeness(ctx, settings, session))
    notes.append(f"{len(walk.entries)} entries from {walk.pages_fetched} page(s) of {feed} ({walk.how})")
    for url, error_class, message in walk.failures:
        summary.add_failure("feed", url, error_class, message)
    candidates = dedup.keyed_entries([(feed, walk.entries)])
    with session() as wh:
        stored_dates = wh.entry_dates([c.entry_key for c in candidates])  # the entries seen before
        link_keys = list({c.link_key for c in candidates if c.link_key and c.entry_key not in stored_dates})
        plan = dedup.plan_entries(
            candidates,
            set(stored_dates),
            wh.known_url_keys(link_keys),
            max(1, len(candidates)),
            stored_dates=stored_dates,
            refetch=refetch,
        )
    summary.new_entries = sum(len(j.entries) for j in plan.pages) + len(plan.known) + len(plan.no_link)
    summary.duplicates += len(plan.known)
    return plan.pages, plan, notes, walk.fetches


def _jobs_for_urls(urls: list[tuple[str, datetime | None]], refetch: bool = False) -> list[dedup.PageJob]:
    """One job per URL key: (url, when the source says it last changed)."""
    jobs: dict[str, dedup.PageJob] = {}
    for url, changed_at in urls:
        key = dedup.canonicalize_url(url)
        if key and key not in jobs:
            jobs[key] = dedup.PageJob(
                article_id=dedup.article_id_for(key),
                url=url,
                url_key=key,
                entries=(),
                refetch=refetch,
                changed_at=changed_at,
            )
    return list(jobs.values())


def _progress_reporter(logger) -> Callable[[int, int], None]:
    """Progress to the terminal (listeners), to the Prefect run (a progress artifact) and the log."""
    artifact = create_progress_artifact(0.0, key="backfill-progress", description="pages processed")

    def report(done: int, total_pages: int) -> None:
        for listener in PROGRESS_LISTENERS:
            listener(done, total_pages)
        update_progress_artifact(artifact, 100.0 * done / max(1, total_pages))
        logger.info("backfill: %d / %d pages", done, total_pages)

    return report


def _table(result: dict) -> str:
    rows = [f"| {k} | {v} |" for k, v in result.items() if not isinstance(v, list | dict)]
    return "\n".join(["| measure | value |", "| --- | --- |", *rows])
