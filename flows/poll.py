"""The poll flow: one pass over the feed list, feeds -> fetch -> parse -> extract -> dedup -> load.

Thin orchestration only; the work is in ``tasks``. The warehouse writer lock is held for the
whole run, so two polls (or a poll and a backfill) never write at once: the second waits, with a
message, up to ``NEWSFLOW_LOCK_TIMEOUT`` seconds, then stops cleanly.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack, nullcontext
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.dask_extraction import run_extraction
from flows.pipeline import process_pages, seeded_politeness
from flows.reporting import best_effort_report, dead_writer_reporter, failed_on_full_disk
from newsflow.settings import Settings, build_settings
from tasks import prefect_tasks as t
from tasks.load import RunContext, RunSummary
from tasks.schedule import BACKOFF, DEAD, RETIRED
from warehouse.lock import WarehouseBusy, WriterLock
from warehouse.store import Warehouse

BUSY_STATE = "WarehouseBusy"


@flow(name="newsflow-poll", log_prints=False)
def poll_flow(
    feeds_file: str | None = None,
    data_dir: str | None = None,
    all_feeds: bool = False,
    now: datetime | None = None,
    dask: str | None = None,
) -> dict:
    """Poll the feeds of ``feeds_file`` that are due into the warehouse in ``data_dir``.

    Each feed has its own schedule (tasks/schedule.py): a 15-minute cron over thousands of feeds
    fetches only those whose next poll has come. ``all_feeds`` polls every listed feed but the
    retired ones. ``now`` is the time the schedules are judged at (default: the clock); tests
    and replays set it. ``dask`` (default ``NEWSFLOW_DASK``): extract the pages on a Dask cluster,
    ``local`` or a scheduler address (flows/dask_extraction.py)."""
    logger = get_run_logger()
    settings = build_settings(feeds_file=feeds_file, data_dir=data_dir, dask=dask)
    now = now or datetime.now(UTC)
    ctx = RunContext.new("poll", flow_run.id)
    summary = RunSummary(run_id=ctx.run_id)
    try:
        return _poll(settings, ctx, summary, now, all_feeds, logger)
    except Exception as exc:
        return failed_on_full_disk(exc, settings.data_dir, logger)


def _poll(settings: Settings, ctx: RunContext, summary: RunSummary, now: datetime, all_feeds: bool, logger):
    with ExitStack() as stack:
        try:
            stack.enter_context(
                WriterLock(
                    settings.data_dir,
                    settings.lock_timeout,
                    f"poll run {ctx.run_id}",
                    on_wait=logger.warning,
                    run_id=ctx.run_id,
                    on_dead_holder=dead_writer_reporter(f"poll run {ctx.run_id}", logger),
                )
            )
        except WarehouseBusy as exc:
            # Not a crash: another writer had the warehouse for longer than we wait. Nothing changed.
            logger.error(str(exc))
            return Failed(name=BUSY_STATE, message=str(exc))
        wh = stack.enter_context(Warehouse(settings.data_dir, settings.storage_url))
        pool, extractor = stack.enter_context(run_extraction(settings))
        repaired = wh.recover()
        if any(repaired.values()):
            logger.warning("repaired what an interrupted run left behind: %s", repaired)
        specs = t.read_feed_list(settings.feeds_file)
        due = t.select_due_feeds(specs, wh, now, all_feeds)
        # Before the first request: hosts postponed by earlier runs, robots.txt answers still fresh.
        seeded_politeness(ctx, settings, lambda: nullcontext(wh))
        feed_results = t.fetch_feeds(due, wh, settings)
        outcomes = t.parse_feeds(feed_results, due, wh, pool, settings)
        plan = t.plan_entries(outcomes, wh, settings)
        _count_feeds(summary, due, outcomes, plan)

        # One warehouse session for the whole poll: it holds the writer lock from start to end.
        process_pages(plan.pages, settings, extractor, ctx, summary, session=lambda: nullcontext(wh))

        t.load_feeds(due, outcomes, plan, wh, ctx, settings, now)
        health = t.feed_health(specs, wh)
        _count_states(summary, health)
        t.record_run(wh, ctx, summary, "completed")

    with best_effort_report(logger, "poll's artifacts"):
        _publish(summary, health)
    for f in summary.failures:
        logger.info("%s failed: %s [%s] %s", f["kind"], f["url"], f["error_class"], f["error"])
    if summary.failures:
        logger.warning(
            "%d feed(s) and %d page(s) failed; each is recorded in fetch_log with its error class",
            summary.feeds_failed,
            summary.pages_failed,
        )
    return {"run_id": ctx.run_id, **summary.counts(), "failures": summary.failures}


def _count_feeds(summary: RunSummary, due, outcomes, plan) -> None:
    summary.feeds_listed, summary.feeds_due = due.listed, len(due.due)
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


def _count_states(summary: RunSummary, health: list[dict]) -> None:
    states = Counter(row["state"] for row in health)
    summary.feeds_backed_off = states[BACKOFF]
    summary.feeds_dead = states[DEAD]
    summary.feeds_retired = states[RETIRED]


def _publish(summary: RunSummary, health: list[dict]) -> None:
    counts = summary.counts()
    create_table_artifact(
        key="poll-summary",
        table=[{"measure": k, "value": v} for k, v in counts.items() if k != "run_id"],
        description="newsflow poll: run summary",
    )
    # The same table as `newsflow feeds status` for the listed feeds, failing ones first.
    create_table_artifact(
        key="feed-health",
        table=[{k: _plain(v) for k, v in row.items()} for row in health],
        description="newsflow poll: feed health (state, last success, failures, last error, next due, rate)",
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


def _plain(value):
    """Artifact cells are JSON: times as ISO strings."""
    return value.isoformat() if isinstance(value, datetime) else value
