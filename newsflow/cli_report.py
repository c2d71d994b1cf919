"""``newsflow report``: the health report, one static HTML page (see newsflow/report_html.py).

It only reads the warehouse (the DuckDB file read-only, or the Parquet files while a writer holds
it), so it can run while a poll does. The page is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from newsflow.cli import console, err

MAX_DAYS = 3660


def _days(text: str) -> int:
    days = int(text)
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"--days must be between 1 and {MAX_DAYS}")
    return days


def cmd_report(args: argparse.Namespace) -> int:
    import duckdb

    from newsflow.feed_list import write_atomic
    from newsflow.report_html import render
    from warehouse.report import collect

    data_dir = Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")
    out = args.out or data_dir / "report.html"
    try:
        report = collect(data_dir, days=args.days)
    except FileNotFoundError as exc:
        err.print(f"[red]newsflow report: {exc}[/red]")
        return 2
    except duckdb.Error as exc:
        err.print(f"[red]newsflow report: {exc}[/red]")
        return 1
    if report.source == "parquet":
        err.print("[dim]a writer holds the DuckDB file: the report was read from the Parquet files[/dim]")
    write_atomic(out, render(report))
    console.print(str(out), markup=False, highlight=False, soft_wrap=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write the health report: one static HTML page with charts")
    p.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    p.add_argument("--out", type=Path, help="the HTML file to write (default: DATA_DIR/report.html)")
    p.add_argument("--days", type=_days, default=30, help="days to show, ending today (UTC; default 30)")
    p.set_defaults(func=cmd_report)
