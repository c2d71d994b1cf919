"""The maintenance flow: repair, compact, checkpoint, prune. Meant to run daily (after midnight UTC).

Thin orchestration only; the work is in ``warehouse.maintenance`` (plain functions), wrapped here
as Prefect tasks. It holds the warehouse writer lock for the whole run, like the poll flow: a poll
that starts meanwhile waits for it, and it waits for a running poll (up to
``NEWSFLOW_LOCK_TIMEOUT``), then stops cleanly with the state ``WarehouseBusy``.

Raw-archive retention: ``raw_retention_days`` (parameter), else the environment variable
``NEWSFLOW_RAW_RETENTION_DAYS`` (a whole number of days; unset or empty keeps everything). Day
folders ``raw/YYYY-MM-DD/`` older than that are deleted; warehouse rows are never touched.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.poll import BUSY_STATE
from flows.reporting import best_effort_report, dead_writer_reporter
from newsflow.settings import build_settings
from warehouse import maintenance as m
from warehouse.lock import WarehouseBusy, WriterLock
from warehouse.storage import Storage
from warehouse.store import APPEND_TABLES, Warehouse

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="recover", **_TASK)
def recover(wh: Warehouse) -> dict[str, int]:
    repaired = wh.recover()
    wh.export_snapshots()  # feeds/runs Parquet as DuckDB has them (a killed run may have left them stale)
    return repaired


@task(name="compact-partitions", **_TASK)
def compact(wh: Warehouse, table: str) -> m.CompactionReport:
    return m.compact_partitions(wh.storage, table, con=wh.con)


@task(name="checkpoint", **_TASK)
def checkpoint(wh: Warehouse) -> None:
    m.checkpoint(wh.con)


@task(name="prune-raw-archive", **_TASK)
def prune_raw(storage: Storage, days: int) -> m.PruneReport:
    return m.prune_raw_archive(storage, days)


@flow(name="newsflow-maintenance", log_prints=False)
def maintenance_flow(data_dir: str | None = None, raw_retention_days: int | None = None) -> dict:
    """Repair, compact past partitions, checkpoint DuckDB, prune the raw archive (when retention is set)."""
    logger = get_run_logger()
    settings = build_settings(data_dir=data_dir)
    retention = raw_retention_days if raw_retention_days is not None else settings.raw_retention_days
    with ExitStack() as stack:
        try:
            stack.enter_context(
                WriterLock(
                    settings.data_dir,
                    settings.lock_timeout,
                    "maintenance",
                    on_wait=logger.warning,
                    run_id=flow_run.id,
                    on_dead_holder=dead_writer_reporter("maintenance", logger),
                )
            )
        except WarehouseBusy as exc:
            logger.error(str(exc))
            return Failed(name=BUSY_STATE, message=str(exc))
        wh = stack.enter_context(Warehouse(settings.data_dir, settings.storage_url))
        repaired = recover(wh)
        if any(repaired.values()):
            logger.warning("repaired what an interrupted run left behind: %s", repaired)
        compactions = [compact(wh, table) for table in APPEND_TABLES]
        for c in compactions:
            if any(not p.atomic for p in c.partitions):
                logger.warning("%s: compaction used the non-atomic fallback (no renameat2)", c.table)
        checkpoint(wh)
        pruned = prune_raw(wh.storage, retention) if retention is not None else None

    report = {
        "data_dir": str(settings.data_dir),
        "recovered": repaired,
        "compaction": m.summarize(compactions),
        "files_merged": sum(c.files_merged for c in compactions),
        "partitions_compacted": sum(len(c.partitions) for c in compactions),
        "checkpoint": True,
        "raw_retention_days": retention,
        "raw_pruned": asdict(pruned) if pruned is not None else None,
    }
    with best_effort_report(logger, "maintenance report"):
        _publish(report)
    return report


def _publish(report: dict) -> None:
    lines = [
        "# newsflow maintenance",
        "",
        f"Warehouse `{report['data_dir']}`.",
        "",
        f"- recovered: {report['recovered']['batches_reexported']} batch(es) re-exported, "
        f"{report['recovered']['temporary_files_removed']} temporary file(s) removed",
        "- DuckDB checkpointed",
        "",
        "## Compaction",
        "",
        "| table | partition | files merged | files kept | rows | bytes before | bytes after | atomic |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for table, c in report["compaction"].items():
        for p in c["partitions"]:
            lines.append(
                f"| {table} | {p['partition']} | {p['files_merged']} | {p['files_kept']} | {p['rows']} "
                f"| {p['bytes_before']} | {p['bytes_after']} | {'yes' if p['atomic'] else 'NO'} |"
            )
    if not report["partitions_compacted"]:
        lines.append("| – | nothing to compact | | | | | | |")
    lines += ["", "## Raw archive", ""]
    pruned = report["raw_pruned"]
    if pruned is None:
        lines.append("Retention not set (NEWSFLOW_RAW_RETENTION_DAYS): everything kept.")
    else:
        days = ", ".join(pruned["days_removed"]) or "none"
        lines.append(
            f"Retention {pruned['retention_days']} day(s), cut-off {pruned['cutoff']}: removed day folders "
            f"{days} ({pruned['files_removed']} file(s), {pruned['bytes_removed']} bytes)."
        )
    create_markdown_artifact(
        key="maintenance-report", markdown="\n".join(lines), description="newsflow maintenance report"
    )
