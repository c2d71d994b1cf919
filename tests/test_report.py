"""The health report (``newsflow report``): its numbers from a real warehouse, the page it writes,
and what a real headless browser makes of that page, opened from disk."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import duckdb
import pytest

from newsflow.report_html import PALETTE, nice_scale, render
from warehouse.report import NO_FEED, OTHER_CLASSES, OTHER_FEEDS, STATE_NOT_SET, collect
from warehouse.store import Warehouse

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

HOSTILE_TITLE = "<script>document.title='pwned'</script>"
HOSTILE_NAME = '"><img src=x onerror="document.title=\'pwned by name\'">'
HOSTILE_ERROR = "</td></tr></table><script>document.title='pwned by error'</script>"
HOSTILE_CLASS = "<b onmouseover=alert(1)>weird</b>"


@dataclass(frozen=True)
class FeedSpec:
    url: str
    name: str | None
    title: str | None
    state: str | None
    consecutive_failures: int
    articles_per_day: int  # on each of the article days
    last_error_class: str | None = None
    last_error: str | None = None


# Twelve feeds: more than the chart shows one by one, so the smallest are summed as "other".
# Feed 0 has no name of its own (its hostile title is shown) and the most articles.
FEEDS = (
    FeedSpec("https://hostile.example/rss", None, HOSTILE_TITLE, "active", 0, 14),
    FeedSpec(
        "https://quotes.example/feed", HOSTILE_NAME, "Quotes", "backoff", 3, 12, "timeout", HOSTILE_ERROR
    ),
    FeedSpec("https://gone.example/feed", "Gone Gazette", None, "retired", 1, 10, "http_410", "410 Gone"),
    FeedSpec("https://dead.example/feed", "Dead Daily", None, "dead", 40, 9, "dns", "cannot resolve"),
    FeedSpec("https://flaky.example/feed", "Flaky Herald", None, "active", 2, 8, "http_503", "503"),
    FeedSpec("https://legacy.example/feed", "Legacy Ledger", None, None, 0, 7),  # state never set
    *(FeedSpec(f"https://f{i}.example/feed", f"Feed {i}", None, "active", 0, 6 - i // 2) for i in range(6)),
)
ARTICLE_DAYS = (1, 2, 4)  # days before today
OLD_DAY = 45  # outside a 30-day report
FAILURES = {  # (days ago, kind, error class) -> count
    (1, "feed", "timeout"): 3,
    (1, "page", "timeout"): 2,
    (2, "page", "http_404"): 5,
    (2, "feed", "dns"): 1,
    (4, "page", HOSTILE_CLASS): 1,
    (OLD_DAY, "page", "http_404"): 7,
}
SUCCESSES = {1: 20, 2: 20, 4: 20}


def _at(day: date) -> datetime:
    return datetime.combine(day, time(10, 0), tzinfo=UTC)


def build_warehouse(data_dir: Path, today: date) -> None:
    """Articles, fetch_log and feeds rows through the warehouse's own write path."""
    articles, fetch_log = [], []
    for f_index, feed in enumerate(FEEDS):
        for ago in (*ARTICLE_DAYS, OLD_DAY):
            day = today - timedelta(days=ago)
            for n in range(feed.articles_per_day):
                key = f"https://site{f_index}.example/{ago}/{n}"
                articles.append(
                    {
                        "article_id": f"a-{f_index}-{ago}-{n}",
                        "article_key": f"a-{f_index}-{ago}-{n}",  # for migration 007 (versions)
                        "version": 1,
                        "url": key,
                        "url_key": key,
                        "feed_url": feed.url,
                        # every third article of a day is a copy of the day's first
                        "duplicate_of": f"a-{f_index}-{ago}-0" if n % 3 == 2 else None,
                        "fetched_at": _at(day),
                        "run_id": "run-test",
                        "load_batch": "batch-1",
                        "ingest_date": day,
                    }
                )
    for ago in ARTICLE_DAYS:  # backfilled articles (no feed)
        day = today - timedelta(days=ago)
        key = f"https://backfill.example/{ago}"
        articles.append(
            {
                "article_id": f"b-{ago}",
                "article_key": f"b-{ago}",
                "version": 1,
                "url": key,
                "url_key": key,
                "fetched_at": _at(day),
                "run_id": "run-test",
                "load_batch": "batch-1",
                "ingest_date": day,
            }
        )
    rows = [(ago, kind, cls) for (ago, kind, cls), n in FAILURES.items() for _ in range(n)]
    rows += [(ago, "page", None) for ago, n in SUCCESSES.items() for _ in range(n)]
    for i, (ago, kind, cls) in enumerate(rows):
        day = today - timedelta(days=ago)
        fetch_log.append(
            {
                "fetch_id": f"f-{i}",
                "run_id": "run-test",
                "kind": kind,
                "url": f"https://site.example/{i}",
                "status": None if cls else 200,
                "error_class": cls,
                "error_message": f"failed: {cls}" if cls else None,
                "fetched_at": _at(day),
                "load_batch": "batch-1",
                "ingest_date": day,
            }
        )
    feeds = [
        {
            "feed_url": f.url,
            "name": f.name,
            "title": f.title,
            "state": f.state,
            "consecutive_failures": f.consecutive_failures,
            "first_failure_at": _at(today - timedelta(days=3)) if f.consecutive_failures else None,
            "last_success_at": _at(today - timedelta(days=5)),
            "last_error_class": f.last_error_class,
            "last_error": f.last_error,
            "next_due_at": _at(today + timedelta(days=1)) if f.state == "backoff" else None,
            "entries_seen": 0,
            "added_at": _at(today - timedelta(days=60)),
        }
        for f in FEEDS
    ]
    with Warehouse(data_dir) as wh:
        wh.load_batch("batch-1", "run-test", {"articles": articles, "fetch_log": fetch_log})
        wh.upsert_feeds(feeds)
        wh.export_snapshots()


def _label(feed: FeedSpec) -> str:
    return feed.name or feed.title or feed.url


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> tuple[Path, date]:
    data_dir = tmp_path_factory.mktemp("report") / "data"
    today = datetime.now(UTC).date()
    build_warehouse(data_dir, today)
    return data_dir, today


# --------------------------------------------------------------------------- the numbers


def test_collect_counts_what_the_warehouse_holds(warehouse):
    data_dir, today = warehouse
    report = collect(data_dir, days=30, until=today, top=8)
    assert report.source == "duckdb"
    assert (
        report.days[0] == today - timedelta(days=29) and report.days[-1] == today and len(report.days) == 30
    )
    at = {d: i for i, d in enumerate(report.days)}

    # Articles: the eight feeds with the most, then the rest summed; the old day is outside.
    per_feed = {_label(f): f.articles_per_day * len(ARTICLE_DAYS) for f in FEEDS}
    per_feed[NO_FEED] = len(ARTICLE_DAYS)
    ranked = sorted(per_feed, key=lambda k: (-per_feed[k], k))
    series = report.articles.series
    assert [s.label for s in series[:8]] == ranked[:8]
    assert [s.total for s in series[:8]] == [per_feed[k] for k in ranked[:8]]
    assert series[8].is_other and series[8].label == f"{OTHER_FEEDS} ({len(ranked) - 8})"
    assert series[8].total == sum(per_feed[k] for k in ranked[8:])
    assert len(series) == 9
    hostile = next(s for s in series if s.label == HOSTILE_TITLE)
    assert hostile.detail == FEEDS[0].url
    for ago in ARTICLE_DAYS:
        i = at[today - timedelta(days=ago)]
        assert hostile.counts[i] == FEEDS[0].articles_per_day
        assert report.articles.day_totals()[i] == sum(f.articles_per_day for f in FEEDS) + 1
        assert report.duplicates_per_day[i] == sum(f.articles_per_day // 3 for f in FEEDS)
    assert report.articles.total == sum(per_feed.values())

    # Failures: per class over the period, feeds and pages apart.
    in_period = {k: n for k, n in FAILURES.items() if k[0] < 30}
    by_class = Counter()
    for (_, _, cls), n in in_period.items():
        by_class[cls] += n
    assert {s.label: s.total for s in report.failures.series} == dict(by_class)
    assert not any(s.is_other for s in report.failures.series)  # four classes: all shown
    assert sum(report.feed_failures_per_day) == sum(n for k, n in in_period.items() if k[1] == "feed")
    assert sum(report.page_failures_per_day) == sum(n for k, n in in_period.items() if k[1] == "page")
    assert report.failures.day_totals()[at[today - timedelta(days=2)]] == 6

    # States: the four known ones always, in life-cycle order, then "not set".
    states = [(s.state, s.feeds) for s in report.feed_states]
    expected_states = Counter(f.state or STATE_NOT_SET for f in FEEDS)
    assert states == [
        (s, expected_states[s]) for s in ("active", "backoff", "dead", "retired", STATE_NOT_SET)
    ]

    # Failing feeds: not active, or failing now; the longest streak first.
    failing = [f for f in FEEDS if (f.state or "active") != "active" or f.consecutive_failures > 0]
    assert [f.feed_url for f in report.failing_feeds] == [
        f.url for f in sorted(failing, key=lambda f: -f.consecutive_failures)
    ]
    assert report.failing_feeds_total == len(failing)
    quotes = next(f for f in report.failing_feeds if f.feed_url == "https://quotes.example/feed")
    assert (quotes.name, quotes.state, quotes.last_error) == (HOSTILE_NAME, "backoff", HOSTILE_ERROR)
    assert quotes.next_due_at == _at(today + timedelta(days=1))


def test_collect_folds_small_series_and_cuts_the_failing_list(warehouse):
    data_dir, today = warehouse
    report = collect(data_dir, days=3, until=today - timedelta(days=1), top=2, failing_limit=2)
    assert len(report.days) == 3
    labels = [s.label for s in report.articles.series]
    assert labels[:2] == [HOSTILE_TITLE, HOSTILE_NAME] and labels[2] == f"{OTHER_FEEDS} ({len(FEEDS) - 1})"
    assert report.articles.series[2].is_other and "Gone Gazette" in report.articles.series[2].detail
    # days 1 and 2 ago are in, day 4 ago is not
    assert report.articles.total == 2 * (sum(f.articles_per_day for f in FEEDS) + 1)
    # http_404 and timeout tie (5 each, by name); an "other" of one class would hide its name for
    # no room saved, so dns is shown instead.
    assert [s.label for s in report.failures.series] == ["http_404", "timeout", "dns"]
    assert not any(s.label.startswith(OTHER_CLASSES) for s in report.failures.series)
    assert len(report.failing_feeds) == 2 and report.failing_feeds_total == 4


def test_report_of_a_warehouse_from_before_migration_005(tmp_path):
    """A reader cannot migrate: the schedule columns are missing, and read as "not set"."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"))
    for name in sorted(p.name for p in files("warehouse").joinpath("migrations").iterdir()):
        if name.endswith(".sql") and int(name[:3]) < 5:
            con.execute(files("warehouse").joinpath("migrations", name).read_text())
    con.execute(
        "INSERT INTO feeds (feed_url, name, consecutive_failures, last_error_class, added_at) "
        "VALUES ('https://a.example/rss', 'A', 0, NULL, now()), ('https://b.example/rss', 'B', 2, 'dns', now())"
    )
    con.close()
    report = collect(data_dir, days=7)
    assert [(s.state, s.feeds) for s in report.feed_states][-1] == (STATE_NOT_SET, 2)
    assert [f.feed_url for f in report.failing_feeds] == ["https://b.example/rss"]
    assert report.failing_feeds[0].state is None and report.failing_feeds[0].next_due_at is None
    assert report.articles.total == 0 and report.failures.total == 0
    page = render(report)
    assert "none in this period" in page and "B" in page


def test_nice_scale_covers_the_largest_value_with_round_ticks():
    for largest in range(0, 2500):
        top, step = nice_scale(largest)
        assert top >= max(largest, 1) and top % step == 0 and 1 <= top // step <= 10
        assert str(step).strip("0") in ("1", "2", "5")


# --------------------------------------------------------------------------- the page


class _Elements(HTMLParser):
    """Every element with its attributes, and the text, of an HTML document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._open: list[str] = []
        self.title = ""

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data):
        self.text.append(data)
        if self._open and self._open[-1] == "title" and "svg" not in self._open:
            self.title += data


def parse_page(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser


def bars(doc: _Elements, chart_id: str) -> list[dict[str, str | None]]:
    """The bars of one chart: rect elements between its <svg id=…> and the next svg."""
    out, inside = [], False
    for tag, attrs in doc.elements:
        if tag == "svg":
            inside = attrs.get("id") == chart_id
        elif inside and tag == "rect" and "bar" in (attrs.get("class") or ""):
            out.append(attrs)
    return out


def check_page(doc: _Elements, report) -> None:
    """What a page of this report must hold, as parsed (by Python, or by a browser then Python)."""
    assert doc.title == "newsflow health report"
    tags = Counter(tag for tag, _ in doc.elements)
    assert tags["svg"] == 3 and tags["table"] >= 4
    # Nothing hostile became markup: no script, no image, no event handler, no external resource.
    assert not {"script", "img", "iframe", "object", "embed", "link", "b"} & set(tags)
    assert not [a for _, attrs in doc.elements for a in attrs if a.startswith("on")]
    assert not [v for _, attrs in doc.elements for k, v in attrs.items() if k in ("src", "href")]
    text = "".join(doc.text)
    for hostile in (HOSTILE_TITLE, HOSTILE_NAME, HOSTILE_ERROR, HOSTILE_CLASS):
        assert hostile in text  # shown as text, exactly as the feed gave it
    # One bar segment per non-zero (day, series) cell, each with its count.
    for chart_id, stack in (("chart-articles", report.articles), ("chart-failures", report.failures)):
        drawn = bars(doc, chart_id)
        cells = {
            (day.isoformat(), s.label, str(s.counts[i]))
            for s in stack.series
            for i, day in enumerate(stack.days)
            if s.counts[i]
        }
        assert {(b["data-day"], b["data-series"], b["data-count"]) for b in drawn} == cells
        assert len(drawn) == len(cells)
    states = {b["data-state"]: int(b["data-count"]) for b in bars(doc, "chart-states")}
    assert states == {s.state: s.feeds for s in report.feed_states}
    for label in ("Day (UTC)", "Articles", "Failed fetches", "Feeds"):
        assert label in text
    assert failing_rows(doc) == len(report.failing_feeds)


def failing_rows(doc: _Elements) -> int:
    """Body rows of the failing-feeds table (its header row not counted)."""
    rows, inside = 0, False
    for tag, attrs in doc.elements:
        if tag == "table":
            inside = attrs.get("id") == "failing-feeds"
        elif inside and tag == "tr":
            rows += 1
    return rows - 1 if rows else 0


def test_page_is_self_contained_accessible_and_escaped(warehouse, tmp_path):
    data_dir, today = warehouse
    report = collect(data_dir, days=30, until=today)
    page = render(report)
    doc = parse_page(page)
    check_page(doc, report)
    svgs = [attrs for tag, attrs in doc.elements if tag == "svg"]
    assert all(a.get("role") == "img" and a.get("aria-labelledby") for a in svgs)
    assert "Content-Security-Policy" in page and "script-src" not in page  # default-src 'none' covers it
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)[^\s\"<]*\.(css|js|png|woff)", page)


# --------------------------------------------------------------------------- the command


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "newsflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        **kw,
    )


def test_cli_writes_the_report_atomically_and_prints_its_path(warehouse, tmp_path):
    data_dir, _ = warehouse
    out = tmp_path / "site" / "health.html"
    done = run_cli(["report", "--data-dir", str(data_dir), "--out", str(out), "--days", "10"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert os.listdir(out.parent) == ["health.html"]  # no temporary left beside it
    doc = parse_page(out.read_text())
    day_rows = [a for t, a in doc.elements if t == "rect" and a.get("data-day")]
    assert {a["data-day"] for a in day_rows} <= {
        (datetime.now(UTC).date() - timedelta(days=n)).isoformat() for n in range(11)
    }
    assert "from the Parquet files" not in out.read_text()


def test_cli_reads_parquet_while_a_writer_holds_the_database(warehouse, tmp_path):
    data_dir, today = warehouse
    out = tmp_path / "report.html"
    writer = duckdb.connect(str(data_dir / "newsflow.duckdb"))  # holds DuckDB's file lock
    try:
        done = run_cli(["report", "--data-dir", str(data_dir), "--out", str(out)])
    finally:
        writer.close()
    assert done.returncode == 0, done.stderr
    assert "Parquet" in done.stderr
    page = out.read_text()
    assert "from the Parquet files" in page
    # The same numbers as from DuckDB: the Parquet files and the feeds snapshot agree with it.
    check_page(parse_page(page), collect(data_dir, days=30, until=today))


def test_cli_without_a_warehouse_or_with_bad_days(tmp_path):
    done = run_cli(["report", "--data-dir", str(tmp_path / "nothing")])
    assert done.returncode == 2 and "no warehouse" in done.stderr
    assert not (tmp_path / "nothing" / "report.html").exists()
    done = run_cli(["report", "--data-dir", str(tmp_path), "--days", "0"])
    assert done.returncode == 2 and "--days" in done.stderr


# --------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is not installed (apt-get install chromium): the page is not checked in a browser"
    if os.environ.get("NEWSFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"NEWSFLOW_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def headless(browser: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium with nothing of its own going to the network, on a throwaway profile."""
    return subprocess.run(
        [
            str(browser),
            "--headless",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour_type in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if colour_type == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows] if bpp == 3 else [_rgb(r) for r in rows]


def _rgb(rgba: bytes) -> bytes:
    return b"".join(rgba[i : i + 3] for i in range(0, len(rgba), 4))


def test_browser_renders_the_charts_and_runs_nothing_from_a_feed(warehouse, chromium, tmp_path):
    data_dir, today = warehouse
    out = tmp_path / "report.html"
    done = run_cli(["report", "--data-dir", str(data_dir), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    report = collect(data_dir, days=30, until=today)

    dumped = headless(chromium, tmp_path / "profile", "--dump-dom", out.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert "<svg" in dumped.stdout, dumped.stderr[-2000:]
    # The DOM as the browser built it: the title untouched, no script element, the hostile
    # strings as text, every bar there.
    check_page(parse_page(dumped.stdout), report)

    shot = tmp_path / "report.png"
    done = headless(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1200, 2000)
    pixels = Counter(row[i : i + 3] for row in rows[::2] for i in range(0, len(row), 6))
    sampled = sum(pixels.values())
    assert len(pixels) > 50  # text, bars, lines: not a blank page
    assert pixels[b"\xff\xff\xff"] < 0.97 * sampled
    # The first feed's colour fills its bars: the chart was drawn, not just the text around it.
    assert pixels[bytes.fromhex(PALETTE[0][1:])] > 200
    if os.environ.get("NEWSFLOW_KEEP_REPORT_SCREENSHOT"):
        Path(os.environ["NEWSFLOW_KEEP_REPORT_SCREENSHOT"]).write_bytes(shot.read_bytes())
