"""The poll flow: one pass over the feed list, feeds -> fetch -> parse -> extract -> dedup -> load.

Thin orchestration only; the work is in ``tasks``. The warehouse writer lock is held for the
whole run, so two polls (or a poll and a backfill) never write at once: the second waits, with a
message, up to ``NEWSFLOW_LOCK_TIMEOUT`` seconds, then stops cleanly.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.pipeline import process_pages
from newsflow.settings import build_settings
from tasks import prefect_tasks as t
from tasks.extract import ExtractorPool
from tasks.load import RunContext, RunSummary
from warehouse.lock import WarehouseBusy, WriterLock
from warehouse.store import Warehouse

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

        # One warehouse session for the whole poll: it holds the writer lock from start to end.
        process_pages(plan.pages, settings, pool, ctx, summary, session=lambda: nullcontext(wh))

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
