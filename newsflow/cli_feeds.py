"""``newsflow feeds …``: the feed list."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from newsflow.cli import print_rows


def feeds_file(args: argparse.Namespace) -> Path:
    return Path(args.feeds or os.environ.get("NEWSFLOW_FEEDS_FILE") or "feeds.toml")


def cmd_list(args: argparse.Namespace) -> int:
    from tasks.feeds import load_feed_list

    specs = load_feed_list(feeds_file(args))
    print_rows(["url", "name", "tags"], [(s.url, s.name, list(s.tags)) for s in specs], args.format)
    return 0


def register(sub) -> None:
    p = sub.add_parser("feeds", help="the feed list")
    feeds_sub = p.add_subparsers(dest="feeds_command", required=True)
    q = feeds_sub.add_parser("list", help="list the feeds in feeds.toml")
    q.add_argument("--feeds", type=Path, help="feed list (default: feeds.toml, or NEWSFLOW_FEEDS_FILE)")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_list)
