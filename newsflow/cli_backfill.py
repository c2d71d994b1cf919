"""``newsflow backfill``: articles from a URL list, a sitemap, a feed's archive, or re-extraction."""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from newsflow.cli import _finish, _quiet_prefect, add_dask_option, err


def cmd_backfill(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from flows import backfill

    sources = [name for name in ("urls", "sitemap", "reextract") if getattr(args, name)]
    if not args.reextract and args.feed:
        sources.append("feed")
    if len(sources) != 1:
        err.print("[red]newsflow backfill: choose one source: --urls, --sitemap, --feed or --reextract[/red]")
        return 2
    if args.refetch and args.reextract:
        err.print("[red]newsflow backfill: --refetch and --reextract exclude each other[/red]")
        return 2
    if args.urls and not args.urls.exists():
        err.print(f"[red]newsflow backfill: no URL list at {args.urls}[/red]")
        return 2
    progress = Progress(
        TextColumn("[bold]backfill[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task_id = progress.add_task("pages", total=None)

    def show(done: int, total: int) -> None:
        progress.update(task_id, completed=done, total=total)

    backfill.PROGRESS_LISTENERS.append(show)
    started = time.monotonic()
    try:
        with progress:
            state = backfill.backfill_flow(
                urls_file=str(args.urls) if args.urls else None,
                sitemap=args.sitemap,
                feed=args.feed,
                pages=args.pages,
                since=args.since,
                until=args.until,
                reextract=args.reextract,
                refetch=args.refetch,
                dask=args.dask,
                data_dir=str(args.data_dir) if args.data_dir else None,
                return_state=True,
            )
    finally:
        backfill.PROGRESS_LISTENERS.remove(show)
    return _finish(state, started)


def register(sub) -> None:
    p = sub.add_parser(
        "backfill",
        help="bring in past articles: --urls FILE, --sitemap URL, --feed URL --pages N, or --reextract",
        description="Idempotent and resumable: pages already stored are skipped (unless --refetch, or a "
        "sitemap <lastmod> later than their last fetch); a killed run can be started again and ends as if "
        "it had run once.",
    )
    p.add_argument("--urls", type=Path, help="a file of article URLs, one per line (# comments allowed)")
    p.add_argument("--sitemap", help="a sitemap or sitemap index URL (gzip and Google News sitemaps too)")
    p.add_argument("--reextract", action="store_true", help="extract the stored raw pages again (no network)")
    p.add_argument(
        "--feed", help="walk this feed's archive (RFC 5005 or ?paged=N); with --reextract: only its articles"
    )
    p.add_argument(
        "--refetch",
        action="store_true",
        help="fetch URLs already stored again: a changed text is stored as a new version of the article",
    )
    p.add_argument("--pages", type=int, default=10, help="feed archive pages to walk (default 10)")
    p.add_argument(
        "--since", type=date.fromisoformat, help="YYYY-MM-DD: sitemap lastmod / news date, or fetch date"
    )
    p.add_argument("--until", type=date.fromisoformat, help="YYYY-MM-DD, inclusive")
    p.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    add_dask_option(p)
    p.set_defaults(func=cmd_backfill)
