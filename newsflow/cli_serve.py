"""``newsflow serve``: run the scheduled deployments in this process (no work pool needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from newsflow.cli import _quiet_prefect, console, err


class _ConsoleLog:
    """The ``logger.warning(fmt, *args)`` the dead-writer report expects, on the console."""

    def warning(self, message: str, *args) -> None:
        err.print(message % args, style="yellow", markup=False)


def cmd_serve(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from prefect import serve

    from newsflow.serve import deployments_from_yaml, reclaim_dead_writers, warehouse_dirs

    if not args.prefect_file.exists():
        err.print(f"[red]newsflow serve: no {args.prefect_file}[/red]")
        return 2
    overrides = {
        "data_dir": str(args.data_dir) if args.data_dir else None,
        "feeds_file": str(args.feeds) if args.feeds else None,
    }
    deployments = deployments_from_yaml(args.prefect_file, overrides)
    reclaim_dead_writers(warehouse_dirs(deployments), _ConsoleLog())
    console.print(
        f"serving {', '.join(d.name for d in deployments)} from {args.prefect_file} (Ctrl-C to stop)"
    )
    serve(*deployments, limit=args.limit)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the deployments of prefect.yaml on their schedules, in this process"
    )
    p.add_argument("--prefect-file", type=Path, default=Path("prefect.yaml"))
    p.add_argument("--data-dir", type=Path, help="overrides the deployments' data_dir parameter")
    p.add_argument("--feeds", type=Path, help="overrides the poll deployment's feeds_file parameter")
    p.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once")
    p.set_defaults(func=cmd_serve)
