"""``newsflow warehouse …``: rebuild, check, maintain.

Each takes the warehouse writer lock (waiting up to ``NEWSFLOW_LOCK_TIMEOUT``, exit 75 when a
writer keeps it longer): rebuild and maintain write, and check must not compare while a batch is
half-written (nor can it open DuckDB while another process writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from newsflow.cli import EX_TEMPFAIL, _jsonable, _quiet_prefect, _unfinished, console, err, print_rows


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")


def _lock(data_dir: Path, purpose: str):
    from newsflow.settings import build_settings
    from warehouse.lock import WriterLock

    timeout = build_settings(data_dir=data_dir).lock_timeout
    return WriterLock(data_dir, timeout, purpose, on_wait=lambda msg: err.print(f"[yellow]{msg}[/yellow]"))


def _no_warehouse(cmd: str, data_dir: Path) -> int:
    err.print(f"[red]newsflow warehouse {cmd}: no warehouse at {data_dir}[/red]")
    return 2


def cmd_rebuild(args: argparse.Namespace) -> int:
    from newsflow.settings import build_settings
    from warehouse.lock import WarehouseBusy
    from warehouse.maintenance import DatabaseInUse, rebuild_duckdb
    from warehouse.storage import StorageMismatch, record_storage, resolve_storage

    data_dir = _data_dir(args)
    try:
        # The Parquet files may be elsewhere (NEWSFLOW_STORAGE_URL): a lost data dir is rebuilt
        # from them, given that URL.
        storage = resolve_storage(data_dir, build_settings(data_dir=data_dir).storage_url)
    except StorageMismatch as exc:
        err.print(f"[red]newsflow warehouse rebuild: {exc}[/red]")
        return 2
    if not storage.exists("parquet"):
        return _no_warehouse("rebuild", data_dir)
    started = time.monotonic()
    try:
        with _lock(data_dir, "warehouse rebuild"):
            record_storage(storage)
            report = rebuild_duckdb(data_dir, keep_backup=args.keep_backup)
    except (WarehouseBusy, DatabaseInUse) as exc:
        err.print(f"[yellow]newsflow: {exc}[/yellow]")
        return EX_TEMPFAIL
    if report.previous_database_unreadable:
        err.print(
            f"[yellow]the previous database was unreadable: {report.previous_database_unreadable}[/yellow]"
        )
    rows = [(t, n) for t, n in report.rows.items()] + [("load_batches", report.load_batches)]
    console.print(f"Rebuilt {data_dir / 'newsflow.duckdb'} from the Parquet files")
    print_rows(["table", "rows"], rows, "table")
    if report.backup:
        console.print(f"previous database kept as {report.backup}")
    console.print(f"[dim]{time.monotonic() - started:.1f} s[/dim]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import duckdb

    from warehouse.lock import WarehouseBusy
    from warehouse.maintenance import check_warehouse

    data_dir = _data_dir(args)
    if not (data_dir / "newsflow.duckdb").exists():
        return _no_warehouse("check", data_dir)
    try:
        with _lock(data_dir, "warehouse check"):
            report = check_warehouse(data_dir)
    except WarehouseBusy as exc:
        err.print(f"[yellow]newsflow: {exc}[/yellow]")
        return EX_TEMPFAIL
    except duckdb.IOException as exc:  # a process that ignores the writer lock holds DuckDB
        err.print(f"[yellow]newsflow warehouse check: the database is busy ({exc}); run again later[/yellow]")
        return EX_TEMPFAIL
    if args.format == "json":
        sys.stdout.write(json.dumps(_jsonable(report.to_dict()), indent=2) + "\n")
    else:
        print_rows(
            [
                "table",
                "duckdb rows",
                "parquet rows",
                "missing in parquet",
                "missing in duckdb",
                "duplicate keys",
            ],
            [
                (
                    t.table,
                    t.duckdb_rows,
                    t.parquet_rows,
                    t.missing_in_parquet,
                    t.missing_in_duckdb,
                    t.duplicate_keys_in_parquet,
                )
                for t in report.tables
            ],
            "table",
            title=f"Warehouse {data_dir}",
        )
        for problem in report.problems():
            console.print(f"[red]{problem}[/red]")
        console.print("[green]consistent[/green]" if report.consistent else "[red]NOT consistent[/red]")
    return report.exit_status


def cmd_maintain(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if not (data_dir / "newsflow.duckdb").exists():
        return _no_warehouse("maintain", data_dir)
    _quiet_prefect()
    from flows.maintenance import maintenance_flow

    started = time.monotonic()
    state = maintenance_flow(
        data_dir=str(data_dir),
        raw_retention_days=args.raw_retention_days,
        return_state=True,
    )
    code = _unfinished(state)
    if code is not None:
        return code
    report = state.result()
    rec = report["recovered"]
    rows = [
        ("batches re-exported", rec["batches_reexported"]),
        ("temporary files removed", rec["temporary_files_removed"]),
    ]
    for table, c in report["compaction"].items():
        rows.append((f"{table}: partitions compacted", len(c["partitions"])))
        rows.append((f"{table}: files merged", c["files_merged"]))
    pruned = report["raw_pruned"]
    if pruned is None:
        rows.append(("raw archive", "kept (no retention set)"))
    else:
        rows.append(
            (
                f"raw day folders removed (older than {pruned['retention_days']} d)",
                len(pruned["days_removed"]),
            )
        )
        rows.append(("raw files removed", pruned["files_removed"]))
        rows.append(("raw bytes removed", pruned["bytes_removed"]))
    rows.append(("wall time", f"{time.monotonic() - started:.1f} s"))
    print_rows(["measure", "value"], rows, "table", title="Maintenance")
    return 0


def register(sub) -> None:
    p = sub.add_parser("warehouse", help="warehouse maintenance: rebuild, check, maintain")
    wh_sub = p.add_subparsers(dest="warehouse_command", required=True)
    help_dir = "warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"

    q = wh_sub.add_parser("rebuild", help="recreate newsflow.duckdb from the Parquet files")
    q.add_argument("--data-dir", type=Path, help=help_dir)
    q.add_argument("--keep-backup", action="store_true", help="keep the old database as newsflow.duckdb.bak")
    q.set_defaults(func=cmd_rebuild)

    q = wh_sub.add_parser("check", help="compare Parquet with DuckDB; exit 1 when they disagree")
    q.add_argument("--data-dir", type=Path, help=help_dir)
    q.add_argument("--format", choices=("table", "json"), default="table")
    q.set_defaults(func=cmd_check)

    q = wh_sub.add_parser("maintain", help="recover, compact past partitions, checkpoint, prune raw archive")
    q.add_argument("--data-dir", type=Path, help=help_dir)
    q.add_argument(
        "--raw-retention-days",
        type=int,
        metavar="N",
        help="delete raw/YYYY-MM-DD/ folders older than N days (default: NEWSFLOW_RAW_RETENTION_DAYS; unset keeps all)",
    )
    q.set_defaults(func=cmd_maintain)
