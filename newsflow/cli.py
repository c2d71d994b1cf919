"""The ``newsflow`` command: poll, demo, sql, feeds list."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

EX_TEMPFAIL = 75  # sysexits: try again later (the warehouse is busy, the Prefect API unreachable)
EX_IOERR = 74  # sysexits: an I/O error (the warehouse's disk is full)
PREFECT_EXIT_WAIT = 10.0  # seconds Prefect gets at exit to deliver the run's last events

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _quiet_prefect() -> None:
    """Prefect's defaults are chatty for a command-line run; explicit settings win."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # A command-line run whose Prefect API went away should say so in seconds, not minutes:
    # each API call is retried twice (about 6 s in all) instead of five times (about 70 s).
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    # The temporary server's first start migrates its database: on a busy machine that took more
    # than Prefect's default 20 s and the command failed before doing anything.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# --------------------------------------------------------------------------- output


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _jsonable(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def print_rows(columns: list[str], rows: list[tuple], fmt: str, title: str | None = None) -> None:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
        sys.stdout.write(buf.getvalue())
    elif fmt == "json":
        sys.stdout.write(
            json.dumps([dict(zip(columns, map(_jsonable, r), strict=True)) for r in rows], indent=2)
        )
        sys.stdout.write("\n")
    else:
        table = Table(title=title, show_lines=False)
        for c in columns:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*(escape(_cell(v)) for v in row))  # data, not rich markup
        console.print(table)
        console.print(f"[dim]{len(rows)} row(s)[/dim]")


def print_summary(result: dict, elapsed: float) -> None:
    table = Table(title="Run summary", show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key not in ("failures", "run_id"):
            table.add_row(key.replace("_", " "), str(value))
    table.add_row("wall time", f"{elapsed:.1f} s")
    console.print(table)
    failures = result.get("failures") or []
    if failures:
        ft = Table(title=f"Failures ({len(failures)}, recorded in fetch_log)")
        for c in ("kind", "url", "error class", "error"):
            ft.add_column(c, overflow="fold")
        for f in failures[:100]:
            ft.add_row(f["kind"], f["url"], f["error_class"] or "", (f["error"] or "")[:160])
        console.print(ft)


# --------------------------------------------------------------------------- commands


def cmd_poll(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from flows.poll import poll_flow

    if args.feeds and not args.feeds.exists():
        err.print(f"[red]newsflow poll: no feed list at {args.feeds}[/red]")
        return 2
    started = time.monotonic()
    state = poll_flow(
        feeds_file=str(args.feeds) if args.feeds else None,
        data_dir=str(args.data_dir) if args.data_dir else None,
        all_feeds=args.all,
        dask=args.dask,
        return_state=True,
    )
    return _finish(state, started)


def _unfinished(state) -> int | None:
    """The exit code of a flow run that did not complete (with the reason printed), else None."""
    from flows.poll import BUSY_STATE
    from flows.reporting import DISK_FULL_STATE

    if state.name == BUSY_STATE:
        err.print(f"[yellow]newsflow: {state.message}[/yellow]")
        return EX_TEMPFAIL
    if state.name == DISK_FULL_STATE:
        err.print(f"[red]newsflow: {escape(state.message or '')}[/red]", soft_wrap=True)
        return EX_IOERR
    if not state.is_completed():
        err.print(f"[red]newsflow: the run ended in state {state.name}: {state.message}[/red]")
        return 1
    return None


def _finish(state, started: float) -> int:
    """Print a flow run's summary, or why it did not complete, and choose the exit code."""
    code = _unfinished(state)
    if code is None:
        print_summary(state.result(), time.monotonic() - started)
    return code or 0


DEMO_QUERY = """SELECT left(a.title, 50) AS title, a.author, CAST(a.published_at AS DATE) AS published,
       a.text_chars, count(e.entry_key) AS feed_entries,
       o.url IS NOT NULL AS is_copy, a.duplicate_reason, regexp_extract(o.url, '/[^/?]+[.]html') AS copy_of
FROM articles a
LEFT JOIN entries e ON e.article_id = a.article_id
LEFT JOIN articles o ON o.article_id = a.duplicate_of
GROUP BY ALL ORDER BY published, title, is_copy"""


def cmd_demo(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from newsflow.demo import DEMO_FEEDS, demo_site

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="newsflow-demo-"))
    if (data_dir / "newsflow.duckdb").exists():
        err.print(
            f"[red]newsflow demo: {data_dir} already holds a warehouse; the demo wants a fresh one[/red]"
        )
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    # The demo site lives on loopback: allow it, and skip the politeness delay for our own server.
    os.environ["NEWSFLOW_ALLOW_PRIVATE_NETWORKS"] = "1"
    os.environ.setdefault("NEWSFLOW_HOST_MIN_DELAY", "0.05")
    started = time.monotonic()
    with demo_site(port=args.port) as site:
        feeds_file = data_dir / "demo-feeds.toml"
        feeds_file.write_text(
            "".join(
                f'[[feeds]]\nurl = "{site.url(path)}"\nname = "{name}"\ntags = ["demo"]\n\n'
                for path, name in DEMO_FEEDS
            )
        )
        console.print(f"[bold]Demo site[/bold] The Harbour Gazette on {site.base_url} (loopback only)")
        console.print(f"[bold]Warehouse[/bold] {data_dir}")
        from flows.poll import poll_flow

        state = poll_flow(feeds_file=str(feeds_file), data_dir=str(data_dir), return_state=True)
    code = _finish(state, started)
    if code:
        return code

    from warehouse.queries import run_query

    console.print("\n[bold]Example query[/bold]")
    console.print(f"[cyan]{DEMO_QUERY}[/cyan]")
    columns, rows, _ = run_query(data_dir, DEMO_QUERY)
    print_rows(columns, rows, "table")
    example = "SELECT title, left(text, 200) FROM articles"
    console.print(f'\nTry: newsflow sql --data-dir {data_dir} "{example}"')
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from warehouse.queries import run_query

    data_dir = Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")
    sql = args.query if args.query != "-" else sys.stdin.read()
    try:
        columns, rows, source = run_query(data_dir, sql)
    except FileNotFoundError as exc:
        err.print(f"[red]newsflow sql: {exc}[/red]")
        return 2
    except duckdb.Error as exc:
        err.print(f"[red]newsflow sql: {exc}[/red]")
        return 1
    if source == "parquet":
        err.print("[dim]a writer holds the DuckDB file: answered from the Parquet files[/dim]")
    print_rows(columns, rows, args.format)
    return 0


def add_dask_option(parser: argparse.ArgumentParser) -> None:
    from newsflow.settings import dask_target

    def dask_option(value: str) -> str:
        try:
            return dask_target(value) or "off"  # "off" (not None): it overrides NEWSFLOW_DASK
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument(
        "--dask",
        type=dask_option,
        metavar="local|ADDRESS",
        help="extract the pages on a Dask cluster: 'local' (a cluster of NEWSFLOW_EXTRACT_WORKERS processes "
        "on this machine, for the run) or a scheduler address tcp://HOST:PORT; 'off' overrides NEWSFLOW_DASK",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="newsflow", description="News feeds into a queryable warehouse.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("poll", help="poll the feeds that are due into the warehouse")
    p.add_argument("--feeds", type=Path, help="feed list (default: feeds.toml, or NEWSFLOW_FEEDS_FILE)")
    p.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="poll every listed feed now, due or not (dead ones too; not those retired by 410 Gone)",
    )
    add_dask_option(p)
    p.set_defaults(func=cmd_poll)

    p = sub.add_parser("demo", help="run the whole pipeline on a bundled loopback news site")
    p.add_argument("--data-dir", type=Path, help="where to put the demo warehouse (default: a new temp dir)")
    p.add_argument("--port", type=int, default=0, help="port of the demo site (default: any free port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sql", help="run a SQL query against the warehouse")
    p.add_argument("query", help="the SQL text, or - to read it from standard input")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_sql)

    # Command groups with modules of their own.
    from newsflow import (
        cli_backfill,
        cli_feeds,
        cli_report,
        cli_search,
        cli_serve,
        cli_stories,
        cli_warehouse,
    )

    for group in (cli_feeds, cli_backfill, cli_warehouse, cli_serve, cli_stories, cli_report, cli_search):
        group.register(sub)
    return parser


def _api_unreachable(exc: BaseException) -> bool:
    import httpx

    try:
        from prefect.exceptions import PrefectHTTPStatusError
    except ImportError:  # pragma: no cover - prefect is a dependency
        return isinstance(exc, httpx.TransportError)
    return isinstance(exc, httpx.TransportError | PrefectHTTPStatusError)


def _deliver_prefect_events(timeout: float) -> bool:
    """Give Prefect's event worker ``timeout`` seconds to send what it holds; False if it could
    not (the API is gone: it would otherwise retry each event for minutes at interpreter exit)."""
    worker = sys.modules.get("prefect.events.worker")
    if worker is None:
        return True
    _done, not_done = worker.EventsWorker.drain_all(timeout=timeout, at_exit=False)
    return not not_done


M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (what MALLOC_ARENA_MAX does), before its threads
    start. glibc gives threads up to 8 arenas per core, each keeping the memory it once held.
    benchmarks/memory.py: the 50,000-page backfill peaked at 1,091 MiB before, 1,052 MiB with
    2 arenas; in a 12,000-page backfill run inside one process with its test sites (whose
    threads start first), the growth over its last 8,000 pages went from 64 to 34 MiB with
    MALLOC_ARENA_MAX=2. False where there is no glibc."""
    import ctypes

    try:
        # The process's own symbols (libc among them): find_library would run ldconfig at start-up.
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except Exception as exc:
        if not _api_unreachable(exc):
            raise
        api = os.environ.get("PREFECT_API_URL", "Prefect's temporary server")
        err.print(
            f"[red]newsflow: the Prefect API ({escape(api)}) could not be reached: "
            f"{escape(type(exc).__name__)}: {escape(str(exc))}[/red]\n"
            "What the run committed stays in the warehouse (see the runs table); the next run "
            "goes on from there."
        )
        code = EX_TEMPFAIL
    return code


def run() -> None:
    """The console entry point: ``main``, then an exit that never waits long on Prefect."""
    code = main()
    if not _deliver_prefect_events(PREFECT_EXIT_WAIT):
        err.print(
            f"[yellow]newsflow: the Prefect API did not take the run's last events within "
            f"{PREFECT_EXIT_WAIT:g} s; exiting without them (the warehouse is not affected)[/yellow]"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
