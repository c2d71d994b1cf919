"""The data of the health report (``newsflow report``), read-only, as plain typed values.

The queries are ``warehouse/queries/report_*.sql``. They read the DuckDB file read-only, or the
Parquet files while a writer holds it (:func:`warehouse.queries.open_for_reading`), so a report
can be made while a poll runs.

Warehouses older than migration 005 have no ``feeds.state`` (nor ``next_due_at`` …), and a
reader cannot migrate: the report then sees those columns as NULL ("not set"). The same holds
for a feeds snapshot written before 005, and for tables with no Parquet file yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from warehouse.queries import named_query, open_for_reading

OTHER_FEEDS = "Other feeds"
OTHER_CLASSES = "Other classes"
NO_FEED = "No feed (backfill)"
STATE_NOT_SET = "not set"
KNOWN_STATES = ("active", "backoff", "dead", "retired")  # migration 005, in life-cycle order

# The columns each query reads, with their types: what a table lacking some of them is given.
REQUIRED_COLUMNS: dict[str, pa.Schema] = {
    "articles": pa.schema(
        [("ingest_date", pa.date32()), ("feed_url", pa.string()), ("duplicate_of", pa.string())]
    ),
    "fetch_log": pa.schema(
        [("ingest_date", pa.date32()), ("kind", pa.string()), ("error_class", pa.string())]
    ),
    "feeds": pa.schema(
        [
            ("feed_url", pa.string()),
            ("name", pa.string()),
            ("title", pa.string()),
            ("state", pa.string()),
            ("consecutive_failures", pa.int32()),
            ("first_failure_at", pa.timestamp("us", tz="UTC")),
            ("last_success_at", pa.timestamp("us", tz="UTC")),
            ("last_error_class", pa.string()),
            ("last_error", pa.string()),
            ("next_due_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
}
SQL_COLUMNS_OF = "SELECT DISTINCT column_name FROM information_schema.columns WHERE table_name = ?"
SQL_ALL_FEEDS = "SELECT * FROM feeds"


@dataclass(frozen=True)
class Series:
    """One stacked series: a label, what it stands for, and one count per day of the report."""

    label: str
    detail: str  # e.g. the feed's URL, or the names folded into "other"; "" when nothing to add
    counts: tuple[int, ...]
    is_other: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class DailyStack:
    """Counts per day, split into series (largest first, the folded "other" last)."""

    days: tuple[date, ...]
    series: tuple[Series, ...]

    def day_totals(self) -> tuple[int, ...]:
        return tuple(sum(s.counts[i] for s in self.series) for i in range(len(self.days)))

    @property
    def total(self) -> int:
        return sum(s.total for s in self.series)


@dataclass(frozen=True)
class StateCount:
    state: str  # a state name, or STATE_NOT_SET
    feeds: int


@dataclass(frozen=True)
class FailingFeed:
    feed_url: str
    name: str | None
    state: str | None
    consecutive_failures: int
    first_failure_at: datetime | None
    last_success_at: datetime | None
    last_error_class: str | None
    last_error: str | None
    next_due_at: datetime | None


@dataclass(frozen=True)
class HealthReport:
    data_dir: str
    source: str  # "duckdb", or "parquet" when a writer held the DuckDB file
    generated_at: datetime
    since: date
    until: date
    articles: DailyStack  # per feed
    duplicates_per_day: tuple[int, ...]
    failures: DailyStack  # per error class
    feed_failures_per_day: tuple[int, ...]
    page_failures_per_day: tuple[int, ...]
    feed_states: tuple[StateCount, ...]
    failing_feeds: tuple[FailingFeed, ...]
    failing_feeds_total: int  # all of them, when failing_feeds was cut at the limit

    @property
    def days(self) -> tuple[date, ...]:
        return self.articles.days


def report_days(days: int, until: date) -> tuple[date, ...]:
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    return tuple(until - timedelta(days=n) for n in range(days - 1, -1, -1))


def fold_top(
    days: Sequence[date],
    counts: dict[tuple[str | None, date], int],
    labels: dict[str | None, str],
    top: int,
    other_label: str,
) -> DailyStack:
    """The ``top`` keys with the most counts over the period, each its own series, and the rest
    summed into one series ``other_label``. ``counts`` maps (key, day) to a count; ``labels``
    gives each key's label (its detail is the key itself)."""
    index = {d: i for i, d in enumerate(days)}
    per_key: dict[str | None, list[int]] = {}
    for (key, day), n in counts.items():
        per_key.setdefault(key, [0] * len(days))[index[day]] += n
    # Largest first; ties by label so that the order (and each series' colour) is stable.
    ranked = sorted(per_key, key=lambda k: (-sum(per_key[k]), labels[k], k or ""))
    kept, folded = ranked[:top], ranked[top:]
    if len(folded) == 1:  # an "other" of one would hide a name for no room saved
        kept, folded = ranked, []
    series = [Series(labels[k], k or "", tuple(per_key[k])) for k in kept]
    if folded:
        summed = tuple(sum(per_key[k][i] for k in folded) for i in range(len(days)))
        names = ", ".join(labels[k] for k in folded)
        series.append(Series(f"{other_label} ({len(folded)})", names, summed, is_other=True))
    return DailyStack(tuple(days), tuple(series))


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _fill_missing_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Give the queries every column they read (see the module's docstring).

    A registered Arrow table takes precedence over the catalog's table of the same name, in this
    connection only: the file is not changed (it is open read-only anyway)."""
    present = _tables(con)
    for table, schema in REQUIRED_COLUMNS.items():
        if table not in present:  # Parquet fallback: no file of that table yet
            con.register(table, schema.empty_table())
    # Only feeds ever lacks columns (005 added them); it is small, so it is copied.
    columns = {r[0] for r in con.execute(SQL_COLUMNS_OF, ["feeds"]).fetchall()}
    missing = [f for f in REQUIRED_COLUMNS["feeds"] if f.name not in columns]
    if missing:
        data = con.execute(SQL_ALL_FEEDS).to_arrow_table()
        for field in missing:
            data = data.append_column(field, pa.nulls(data.num_rows, field.type))
        con.register("feeds", data)


def _int(value) -> int:
    return int(value or 0)


def _collect(
    con: duckdb.DuckDBPyConnection, source: str, data_dir: Path, days: tuple[date, ...], top: int, limit: int
) -> HealthReport:
    _fill_missing_columns(con)
    period = {"since": days[0], "until": days[-1]}
    index = {d: i for i, d in enumerate(days)}

    article_counts: dict[tuple[str | None, date], int] = {}
    feed_labels: dict[str | None, str] = {None: NO_FEED}
    duplicates = [0] * len(days)
    for day, feed_url, feed_name, articles, dups in con.execute(
        named_query("report_articles_per_day"), period
    ).fetchall():
        article_counts[(feed_url, day)] = _int(articles)
        if feed_url is not None:
            feed_labels[feed_url] = feed_name or feed_url
        duplicates[index[day]] += _int(dups)

    failure_counts: dict[tuple[str | None, date], int] = {}
    feed_failures, page_failures = [0] * len(days), [0] * len(days)
    for day, error_class, on_feeds, on_pages in con.execute(
        named_query("report_failures_per_day"), period
    ).fetchall():
        failure_counts[(error_class, day)] = _int(on_feeds) + _int(on_pages)
        feed_failures[index[day]] += _int(on_feeds)
        page_failures[index[day]] += _int(on_pages)
    class_labels = {c: c or "" for c, _ in failure_counts}

    by_state = {
        s or STATE_NOT_SET: _int(n) for s, n in con.execute(named_query("report_feed_states")).fetchall()
    }
    states = [StateCount(s, by_state.pop(s, 0)) for s in KNOWN_STATES]  # always shown, even at 0
    unset = by_state.pop(STATE_NOT_SET, None)
    states += [StateCount(s, n) for s, n in sorted(by_state.items())]  # states newer than this code
    if unset is not None:
        states.append(StateCount(STATE_NOT_SET, unset))

    failing_rows = con.execute(named_query("report_failing_feeds"), {"limit": limit}).fetchall()
    failing = tuple(
        FailingFeed(url, name, state, _int(streak), since, success, error_class, error, due)
        for url, name, state, streak, since, success, error_class, error, due, _ in failing_rows
    )
    return HealthReport(
        data_dir=str(data_dir),
        source=source,
        generated_at=datetime.now(UTC),
        since=days[0],
        until=days[-1],
        articles=fold_top(days, article_counts, feed_labels, top, OTHER_FEEDS),
        duplicates_per_day=tuple(duplicates),
        failures=fold_top(days, failure_counts, class_labels, top, OTHER_CLASSES),
        feed_failures_per_day=tuple(feed_failures),
        page_failures_per_day=tuple(page_failures),
        feed_states=tuple(states),
        failing_feeds=failing,
        failing_feeds_total=_int(failing_rows[0][-1]) if failing_rows else 0,
    )


def collect(
    data_dir: Path,
    days: int = 30,
    until: date | None = None,
    top: int = 8,
    failing_limit: int = 200,
    attempts: int = 3,
) -> HealthReport:
    """The report over the ``days`` days ending ``until`` (default: today, UTC).

    Raises FileNotFoundError when there is no warehouse at ``data_dir``."""
    period = report_days(days, until or datetime.now(UTC).date())
    for attempt in range(1, attempts + 1):
        con, source = open_for_reading(data_dir)
        try:
            return _collect(con, source, data_dir, period, top, failing_limit)
        except duckdb.IOException as exc:
            # As in warehouse.queries.run_query: maintenance swapped a partition in while the
            # Parquet files were listed. Reading again sees the new files.
            if source != "parquet" or "No such file" not in str(exc) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
        finally:
            con.close()
    raise AssertionError("unreachable")
