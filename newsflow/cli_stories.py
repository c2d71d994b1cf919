"""``newsflow stories …``: story identity (near-duplicate clustering), see docs/stories.md.

``recluster`` rebuilds every story from the stored texts (after a change of the threshold or of
the method in ``tasks/stories.py``, or once after upgrading a warehouse created before stories
existed). It is idempotent: a second run changes nothing. It takes the warehouse writer lock
(waiting up to ``NEWSFLOW_LOCK_TIMEOUT``, exit 75 when another writer keeps it longer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from newsflow.cli import EX_TEMPFAIL, _jsonable, console, err, print_rows


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")


def cmd_recluster(args: argparse.Namespace) -> int:
    from newsflow.settings import build_settings
    from tasks.load import RunContext
    from tasks.stories import PARAMS
    from warehouse.lock import WarehouseBusy
    from warehouse.store import writer_session
    from warehouse.stories import recluster

    data_dir = _data_dir(args)
    if not (data_dir / "newsflow.duckdb").exists():
        err.print(f"[red]newsflow stories recluster: no warehouse at {data_dir}[/red]")
        return 2
    timeout = build_settings(data_dir=data_dir).lock_timeout
    ctx = RunContext.new("stories-recluster")
    try:
        with writer_session(
            data_dir, timeout, "stories recluster", on_wait=lambda m: err.print(f"[yellow]{m}[/yellow]")
        ) as wh:
            wh.recover()
            report = recluster(wh, ctx.run_id, ctx.next_batch_id(), PARAMS)
    except WarehouseBusy as exc:
        err.print(f"[yellow]newsflow: {exc}[/yellow]")
        return EX_TEMPFAIL
    if args.format == "json":
        sys.stdout.write(json.dumps(_jsonable(report.to_dict()), indent=2) + "\n")
        return 0
    print_rows(
        ["measure", "value"],
        [
            ("articles in a story", report.articles),
            ("stories", report.stories),
            ("articles whose story changed", report.changed),
            ("index rows", report.index_rows),
            ("articles partitions rewritten", len(report.partitions_rewritten)),
            ("threshold", PARAMS.threshold),
            ("wall time", f"{report.seconds:.1f} s"),
        ],
        "table",
        title=f"Stories reclustered in {data_dir}",
    )
    if not report.changed:
        console.print("[green]no story changed[/green]")
    return 0


def register(sub) -> None:
    p = sub.add_parser("stories", help="story identity: near-duplicate clustering across outlets")
    st_sub = p.add_subparsers(dest="stories_command", required=True)
    q = st_sub.add_parser(
        "recluster", help="rebuild every story from the stored texts (idempotent; takes the writer lock)"
    )
    q.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    q.add_argument("--format", choices=("table", "json"), default="table")
    q.set_defaults(func=cmd_recluster)
