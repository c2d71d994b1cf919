"""``newsflow search "phrase"``: the README's phrase search, through the full-text index.

The articles whose text holds the phrase (its words in order, whole, case ignored), originals
only, the latest version of each URL (``--all-versions``: every version), latest published first.
It reads like ``newsflow sql`` (the DuckDB file read-only, or the Parquet files while a writer
holds it) and uses the full-text index that ``newsflow warehouse maintain`` builds, plus a scan of
the articles stored since; without the index (never built, the extension missing, or reading
Parquet) it scans every text, with the same result, slower (see ``warehouse/search.py``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from newsflow.cli import err, print_rows

SHOWN = ("published_at", "outlet", "title", "url")


def cmd_search(args: argparse.Namespace) -> int:
    import duckdb

    from warehouse.queries import open_for_reading
    from warehouse.search import search

    data_dir = Path(args.data_dir or os.environ.get("NEWSFLOW_DATA_DIR") or "data")
    try:
        con, source = open_for_reading(data_dir)
    except FileNotFoundError as exc:
        err.print(f"[red]newsflow search: {exc}[/red]")
        return 2
    try:
        result = search(con, args.phrase, all_versions=args.all_versions, use_index=not args.scan)
    except ValueError as exc:
        err.print(f"[red]newsflow search: {exc}[/red]")
        return 2
    except duckdb.Error as exc:
        err.print(f"[red]newsflow search: {exc}[/red]")
        return 1
    finally:
        con.close()
    keep = [result.columns.index(c) for c in SHOWN]
    print_rows(list(SHOWN), [tuple(r[i] for i in keep) for r in result.rows], args.format)
    if result.method == "fts":
        how = f"full-text index of {result.index_built_at:%Y-%m-%d %H:%M} UTC, and the articles stored since"
    else:
        how = "every text scanned" + (
            " (a writer holds the DuckDB file: Parquet)" if source == "parquet" else ""
        )
    err.print(f"[dim]{len(result.rows)} article(s); {how}[/dim]")
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="articles whose text holds a phrase (full-text index, else a scan)")
    p.add_argument("phrase", help='the words to find, in order, e.g. "security guarantee"')
    p.add_argument(
        "--data-dir", type=Path, help="warehouse directory (default: ./data, or NEWSFLOW_DATA_DIR)"
    )
    p.add_argument(
        "--all-versions", action="store_true", help="every version of an article, not only its latest"
    )
    p.add_argument(
        "--scan", action="store_true", help="scan every text, without the index (slower; same result)"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_search)
