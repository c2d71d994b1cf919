"""``newsflow feeds …``: the feed list (list, add, import, export)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from newsflow.cli import console, err, print_rows

if TYPE_CHECKING:
    from newsflow.feed_list import AddResult
    from tasks.feeds import FeedSpec

EX_USAGE = 2
VIA = {"direct": "the URL is a feed", "link": "linked from the page", "guess": "found at a common path"}


def feeds_file(args: argparse.Namespace) -> Path:
    return Path(args.feeds or os.environ.get("NEWSFLOW_FEEDS_FILE") or "feeds.toml")


def _fail(command: str, message: str, code: int = 1) -> int:
    err.print(f"[red]newsflow feeds {command}: {escape(message)}[/red]", soft_wrap=True)
    return code


def _out(text: str) -> None:
    """A line of plain output (already escaped); never wrapped, so URLs stay copy-pasteable."""
    console.print(text, soft_wrap=True, highlight=False)


def _describe(spec: FeedSpec) -> str:
    """One feed as a line of output: url, then the name and tags when there are any."""
    extras = [f'"{spec.name}"'] if spec.name else []
    if spec.tags:
        extras.append("tags: " + ", ".join(spec.tags))
    return escape(spec.url + (f"  ({'; '.join(extras)})" if extras else ""))


def _report(result: AddResult) -> None:
    for spec in result.added:
        _out(f"  added    {_describe(spec)}")
    for spec in result.present:
        _out(f"  already present  {escape(spec.url)}")
    for spec, reason in result.invalid:
        _out(f"  invalid  {escape(spec.url or '(no URL)')}: {escape(reason)}")


# --------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from tasks.feeds import load_feed_list

    path = feeds_file(args)
    try:
        specs = load_feed_list(path)
    except FileNotFoundError:
        err.print(f"[red]newsflow feeds list: no feed list at {path}[/red]")
        return 2
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        err.print(f"[red]newsflow feeds list: {path} is not a valid feed list: {exc}[/red]")
        return 1
    print_rows(["url", "name", "tags"], [(s.url, s.name, list(s.tags)) for s in specs], args.format)
    return 0


# --------------------------------------------------------------------------- import / export


def cmd_import(args: argparse.Namespace) -> int:
    from newsflow.feed_list import FeedListError, add_feeds
    from tasks.opml import OpmlError, read_opml

    try:
        data = args.file.read_bytes()  # read here: listparser is never given a path or URL
    except OSError as exc:
        return _fail("import", f"cannot read {args.file}: {exc.strerror or exc}", EX_USAGE)
    try:
        specs = read_opml(data)
    except OpmlError as exc:
        return _fail("import", f"{args.file}: {exc}")
    path = feeds_file(args)
    try:
        result = add_feeds(path, specs)
    except (FeedListError, OSError) as exc:
        return _fail("import", str(exc))
    _report(result)
    _out(
        f"{escape(str(args.file))} -> {escape(str(path))}: {len(result.added)} added, "
        f"{len(result.present)} already present, {len(result.invalid)} invalid"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tomllib

    from newsflow.feed_list import write_atomic
    from tasks.feeds import load_feed_list
    from tasks.opml import tags_that_split, write_opml

    path = feeds_file(args)
    try:
        specs = load_feed_list(path)
    except FileNotFoundError:
        return _fail("export", f"no feed list at {path}", EX_USAGE)
    except (tomllib.TOMLDecodeError, ValueError, OSError) as exc:
        return _fail("export", f"{path}: {exc}")
    split = tags_that_split(specs)
    if split:
        err.print(
            "[yellow]newsflow feeds export: OPML readers split categories on ',' and '/'; "
            f"these tags will not come back whole: {escape(', '.join(split))}[/yellow]"
        )
    document = write_opml(specs)
    if args.output is None or str(args.output) == "-":
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    else:
        write_atomic(args.output, document)
        err.print(f"{len(specs)} feed(s) written to {escape(str(args.output))}")
    return 0


# --------------------------------------------------------------------------- add


def cmd_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from newsflow.feed_list import FeedListError, add_feeds, clean_tags, feed_url_problem, load_urls
    from newsflow.settings import build_settings
    from tasks.discover import discover_feeds
    from tasks.feeds import FeedSpec

    url = args.url.strip()
    problem = feed_url_problem(url)
    if problem:
        return _fail("add", f"{url!r}: {problem}", EX_USAGE)
    if args.all and args.name:
        return _fail("add", "--name names one feed: it cannot be combined with --all", EX_USAGE)
    path = feeds_file(args)
    try:
        if url in load_urls(path):  # nothing to fetch
            _out(f"already present: {escape(url)} is in {escape(str(path))}")
            return 0
        settings = build_settings()
    except FeedListError as exc:
        return _fail("add", str(exc))
    except ValidationError as exc:
        return _fail("add", f"invalid NEWSFLOW_* setting: {exc}", EX_USAGE)

    found = discover_feeds(url, settings)
    if found.error:
        return _fail("add", f"cannot fetch {url}: {found.error}")
    if not found.feeds:
        checked = f" (also tried {len(found.tried)} candidate URL(s))" if found.tried else ""
        return _fail("add", f"no feed found at {url}{checked}; nothing added")

    for feed in found.feeds:
        title = f'"{feed.title}" ' if feed.title else ""
        _out(escape(f"found {feed.url}  {title}[{feed.format}, {VIA[feed.via]}]"))
    chosen = found.feeds if args.all else found.feeds[:1]
    tags = clean_tags((args.tags or "").split(","))
    # Without --name, the feed's own title names it (clipped: some titles are whole sentences).
    specs = [FeedSpec(url=f.url, name=args.name or (f.title or "")[:200] or None, tags=tags) for f in chosen]
    try:
        result = add_feeds(path, specs)
    except (FeedListError, OSError) as exc:
        return _fail("add", str(exc))
    _report(result)
    return 0


# --------------------------------------------------------------------------- status / revive

# Sort keys of `feeds status`: fixed ORDER BY clauses, chosen by name (never user text in SQL).
STATUS_ORDER = {
    "state": "(state <> 'active') DESC, state, failures DESC, feed_url",
    "failures": "failures DESC, last_success_at NULLS FIRST, feed_url",
    "last-success": "last_success_at NULLS FIRST, feed_url",
    "next-due": "next_due_at NULLS FIRST, feed_url",
    "rate": "mean_new_per_day DESC NULLS LAST, feed_url",
    "feed": "feed, feed_url",
}
STATUS_FAILING = "state <> 'active' OR failures > 0"


def cmd_status(args: argparse.Namespace) -> int:
    from warehouse.queries import named_query, run_query

    data_dir = Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")
    sql = f"SELECT * FROM ({named_query('feed_status')}) AS status"  # noqa: S608 - fixed texts only
    if args.failing:
        sql += f" WHERE {STATUS_FAILING}"
    sql += f" ORDER BY {STATUS_ORDER[args.sort]}"
    if args.limit:
        sql += " LIMIT $limit"
    params = {"feeds": None, **({"limit": args.limit} if args.limit else {})}
    try:
        columns, rows, source = run_query(data_dir, sql, params=params)
    except FileNotFoundError as exc:
        return _fail("status", str(exc), 2)
    print_rows(columns, rows, args.format, title="Feed status" + (" (failing)" if args.failing else ""))
    if source == "parquet" and args.format == "table":
        err.print("[dim]a writer holds the warehouse: read from Parquet (as of its last snapshot)[/dim]")
    return 0


def cmd_revive(args: argparse.Namespace) -> int:
    """A dead or retired feed, due again now, its failure streak forgotten."""
    from datetime import UTC, datetime

    from newsflow.settings import build_settings
    from tasks.load import feed_event_row
    from tasks.schedule import FeedSchedule, revive
    from warehouse.lock import WarehouseBusy, WriterLock
    from warehouse.store import Warehouse

    settings = build_settings(data_dir=args.data_dir)
    now = datetime.now(UTC)
    try:
        with (
            WriterLock(settings.data_dir, settings.lock_timeout, "feeds revive"),
            Warehouse(settings.data_dir) as wh,
        ):
            row = wh.feed_rows([args.url]).get(args.url)
            if row is None:
                return _fail("revive", f"no feed {args.url} in the warehouse at {settings.data_dir}", 1)
            before = FeedSchedule.from_row(row)
            row.update(revive(before, now).columns())
            event = feed_event_row(args.url, now, "revived", f"by the user (was {before.state})", None)
            wh.upsert_feeds([row], [event])
            wh.export_snapshots()
    except WarehouseBusy as exc:
        return _fail("revive", str(exc), 75)
    _out(f"  revived  {escape(args.url)} (was {before.state}); due now")
    return 0


# --------------------------------------------------------------------------- wiring


def _feeds_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feeds", type=Path, help="feed list (default: feeds.toml, or NEWSFLOW_FEEDS_FILE)")


def register(sub) -> None:
    p = sub.add_parser("feeds", help="the feed list")
    feeds_sub = p.add_subparsers(dest="feeds_command", required=True)

    q = feeds_sub.add_parser("list", help="list the feeds in feeds.toml")
    _feeds_option(q)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_list)

    q = feeds_sub.add_parser(
        "add", help="add a feed, given its URL or a page of the site (its feeds are discovered)"
    )
    q.add_argument("url", help="a feed URL, or a site's home page")
    q.add_argument("--name", help="the feed's name (default: the feed's own title)")
    q.add_argument("--tags", help="comma-separated tags, e.g. world,europe")
    q.add_argument("--all", action="store_true", help="add every feed found, not only the first")
    _feeds_option(q)
    q.set_defaults(func=cmd_add)

    q = feeds_sub.add_parser(
        "status",
        help="one row per feed: state, last success, failures, last error, next due, new items per day",
    )
    q.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    q.add_argument("--failing", action="store_true", help="only feeds failing, backing off, dead or retired")
    q.add_argument("--sort", choices=tuple(STATUS_ORDER), default="state", help="sort order (default: state)")
    q.add_argument("--limit", type=int, help="at most this many rows")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_status)

    q = feeds_sub.add_parser("revive", help="poll a dead or retired (410) feed again from the next poll")
    q.add_argument("url", help="the feed's URL, as in feeds.toml")
    q.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    q.set_defaults(func=cmd_revive)

    q = feeds_sub.add_parser("import", help="add the feeds of an OPML file (folders become tags)")
    q.add_argument("file", type=Path, help="an OPML 1.0 or 2.0 file")
    _feeds_option(q)
    q.set_defaults(func=cmd_import)

    q = feeds_sub.add_parser("export", help="write the feed list as OPML 2.0")
    _feeds_option(q)
    q.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    q.set_defaults(func=cmd_export)
