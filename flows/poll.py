"""The poll flow: one pass over the feed list, feeds -> fetch -> parse -> extract -> dedup -> load.

Thin orchestration only; the work is in ``tasks``. The warehouse writer lock is held for the
whole run, so two polls (or a poll and a backfill) never write at once: the second waits, with a
message, up to ``NEWSFLOW_LOCK_TIMEOUT`` seconds, then stops cleanly.
"""

from __future__ import annotations

from contextlib import ExitStack

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from newsflow.settings import build_settings
from tasks import prefect_tasks as t
from tasks.extract import ExtractorPool
from tasks.load import RunContext, RunSummary
from warehouse.lock import WarehouseBusy, WriterLock
from warehouse.store import Warehouse, chunks

BUSY_STATE = "WarehouseBusy"


@flow(name="newsflow-poll", log_prints=False)
def poll_flow(feeds_file: str | None = None, data_dir: str | None = None) -> dict:
    """Poll every feed in ``feeds_file`` once into the warehouse in ``data_dir``."""
    logger = get_run_logger()
    settings = build_settings(feeds_file=feeds_file, data_dir=data_dir)
    ctx = RunContext.new("poll", flow_run.id)
    summary = RunSummary(run_id=ctx.run_id)

    with ExitStack() as stack:
        try:
            stack.enter_context(
                WriterLock(
                    settings.data_dir, settings.lock_timeout, f"poll run {ctx.run_id}", on_wait=logger.warning
                )
            )
        except WarehouseBusy as exc:
            # Not a crash: another writer had the warehouse for longer than we wait. Nothing changed.
            logger.error(str(exc))
            return Failed(name=BUSY_STATE, message=str(exc))
        wh = stack.enter_context(Warehouse(settings.data_dir))
        pool = stack.enter_context(ExtractorPool(settings.extract_workers))
        repaired = wh.recover()
        if any(repaired.values()):
            logger.warning("repaired what an interrupted run left behind: %s", repaired)
        specs = t.read_feed_list(settings.feeds_file)
        feed_results = t.fetch_feeds(specs, wh, settings)
        outcomes = t.parse_feeds(feed_results, wh)
        plan = t.plan_entries(outcomes, wh, settings)
        _count_feeds(summary, outcomes, plan)

        # A pipeline over batches of pages: while batch n is deduplicated and loaded (this
        # thread), batch n+1 is extracted (the process pool) and archived (a worker thread) and
        # batch n+2 is fetched (another worker thread). At most three batches are in memory.
        batches = list(chunks(plan.pages, settings.batch_size))
        next_fetch = t.fetch_pages.submit(batches[0], settings) if batches else None
        pending = None
        for i, jobs in enumerate(batches):
            results = next_fetch.result()
            if i + 1 < len(batches):
                next_fetch = t.fetch_pages.submit(batches[i + 1], settings)
            batch_id = ctx.next_batch_id()
            current = (
                jobs,
                results,
                batch_id,
                t.extract_pages.submit(results, pool),
                t.archive_pages.submit(results, settings.data_dir, batch_id),
            )
            if pending is not None:
                _dedup_and_load(pending, wh, ctx, summary)
            pending = current
        if pending is not None:
            _dedup_and_load(pending, wh, ctx, summary)

        t.load_feeds(specs, outcomes, plan, wh, ctx)
        t.record_run(wh, ctx, summary, "completed")

    _publish(summary)
    for f in summary.failures:
        logger.info("%s failed: %s [%s] %s", f["kind"], f["url"], f["error_class"], f["error"])
    if summary.failures:
        logger.warning(
            "%d feed(s) and %d page(s) failed; each is recorded in fetch_log with its error class",
            summary.feeds_failed,
            summary.pages_failed,
        )
    return {"run_id": ctx.run_id, **summary.counts(), "failures": summary.failures}


def _dedup_and_load(batch, wh: Warehouse, ctx: RunContext, summary: RunSummary) -> None:
    jobs, results, batch_id, extracted, archived = batch
    pages = t.dedup_articles(jobs, results, extracted.result(), wh)
    t.load_pages(pages, archived.result(), batch_id, wh, ctx, summary)


def _count_feeds(summary: RunSummary, outcomes, plan) -> None:
    for o in outcomes:
        summary.feeds_polled += 1
        if o.failed:
            summary.feeds_failed += 1
            summary.add_failure("feed", o.feed_url, o.error_class, o.error_message)
        elif o.unchanged:
            summary.feeds_not_modified += 1
    summary.new_entries = sum(len(j.entries) for j in plan.pages) + len(plan.known) + len(plan.no_link)
    summary.entries_left_for_next_run = plan.skipped_over_limit
    summary.duplicates += len(plan.known)


def _publish(summary: RunSummary) -> None:
    counts = summary.counts()
    create_table_artifact(
        key="poll-summary",
        table=[{"measure": k, "value": v} for k, v in counts.items() if k != "run_id"],
        description="newsflow poll: run summary",
    )
    lines = ["# newsflow poll", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    if summary.failures:
        lines += ["", "## Failures", "", "| kind | url | class | error |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {f['kind']} | {f['url']} | {f['error_class']} | {(f['error'] or '').replace('|', '/')[:200]} |"
            for f in summary.failures[:200]
        ]
    create_markdown_artifact(key="poll-report", markdown="\n".join(lines), description="newsflow poll report")
