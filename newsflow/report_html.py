"""The health report as one self-contained HTML page (``newsflow report``).

Everything is inline: CSS, and the charts as SVG drawn here, so the file opens from disk with no
server, no network and no script. Every text from the warehouse (feed names and URLs, error
classes and messages) is untrusted: it goes through :func:`esc` and nowhere else. A Content
Security Policy that allows no script and no external resource backs that up.

Each chart is an ``<svg role="img">`` with a title and a description, followed by its data as
a table, so that the numbers are readable without the picture.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import date, datetime

from warehouse.report import STATE_NOT_SET, DailyStack, HealthReport, StateCount

# Tableau 10: distinguishable for the common colour-vision deficiencies; grey is kept for "other".
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
OTHER_COLOUR = "#bab0ac"
STATE_COLOURS = {
    "active": "#59a14f",
    "backoff": "#edc948",
    "dead": "#e15759",
    "retired": "#9c755f",
    STATE_NOT_SET: OTHER_COLOUR,
}
NEW_STATE_COLOUR = "#4e79a7"  # a state this code does not know yet

CHART_WIDTH, CHART_HEIGHT = 960, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 16, 52
MAX_X_LABELS = 12
ERROR_TEXT_CHARS = 300

# No script, no external file of any kind; inline styles only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1040px; padding: 24px; font: 15px/1.45 system-ui, -apple-system,
       "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 36px 0 4px; padding-top: 12px; border-top: 1px solid var(--line); }
p.meta, figcaption, .note { color: var(--muted); }
p.meta { margin: 0 0 16px; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; border-radius: 6px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px;
         margin: 16px 0; padding: 0; list-style: none; }
.tiles li { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.tiles .value { display: block; font-size: 1.7rem; font-weight: 600; }
.tiles .label { color: var(--muted); }
figure { margin: 8px 0 0; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart text { font-size: 12px; fill: var(--ink); font-family: inherit; }
svg.chart .axis-title { font-size: 13px; fill: var(--muted); }
svg.chart .grid { stroke: #e8ebef; }
svg.chart .axis { stroke: #8c959f; }
ul.legend { list-style: none; padding: 0; margin: 8px 0; display: flex; flex-wrap: wrap; gap: 6px 18px; }
ul.legend li { display: flex; align-items: center; gap: 6px; max-width: 100%; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; flex: none; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
caption { text-align: left; color: var(--muted); padding: 4px 0; }
th[scope="row"], td.when { white-space: nowrap; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td .url { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
td.error { max-width: 360px; overflow-wrap: anywhere; }
.state { display: inline-block; padding: 0 6px; border-radius: 10px; font-size: 12px; color: #1f2328; }
"""


def esc(value: object) -> str:
    """Text for HTML or SVG, element content and quoted attribute values alike."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None, never: str = "–") -> str:
    return never if value is None else f"{value:%Y-%m-%d %H:%M} UTC"


def _short_day(day: date) -> str:
    return f"{day:%b} {day.day}"


def _num(value: float) -> str:
    """Coordinates: short, and never a locale's decimal comma."""
    return f"{value:.1f}".removesuffix(".0")


def nice_scale(largest: int, ticks: int = 5) -> tuple[int, int]:
    """(top of the axis, step between ticks): a step of 1, 2 or 5 times a power of ten, at least 1."""
    if largest <= 0:
        return 1, 1
    rough = largest / ticks
    magnitude = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    return math.ceil(largest / step) * step, step


def series_colours(stack: DailyStack) -> list[str]:
    return [OTHER_COLOUR if s.is_other else PALETTE[i % len(PALETTE)] for i, s in enumerate(stack.series)]


# --------------------------------------------------------------------------- charts


def stacked_bars_svg(chart_id: str, stack: DailyStack, title: str, description: str, y_label: str) -> str:
    """One bar per day, one coloured segment per series, with a y axis, day labels and tooltips."""
    plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    baseline = MARGIN_TOP + plot_h
    totals = stack.day_totals()
    top, step = nice_scale(max(totals, default=0))
    slot = plot_w / max(len(stack.days), 1)
    bar_w = max(slot * 0.78, 1.0)
    colours = series_colours(stack)
    out = [
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{esc(title)}</title>',
        f'<desc id="{chart_id}-desc">{esc(description)}</desc>',
    ]
    for value in range(0, top + 1, step):
        y = baseline - value / top * plot_h
        out.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" y1="{_num(y)}" y2="{_num(y)}"/>'
            f'<text class="tick" x="{MARGIN_LEFT - 8}" y="{_num(y + 4)}" text-anchor="end">{value}</text>'
        )
    for i, day in enumerate(stack.days):
        x = MARGIN_LEFT + i * slot + (slot - bar_w) / 2
        y = float(baseline)
        for series, colour in zip(stack.series, colours, strict=True):
            count = series.counts[i]
            if not count:
                continue
            height = count / top * plot_h
            y -= height
            out.append(
                f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" height="{_num(height)}" '
                f'fill="{colour}" data-day="{day.isoformat()}" data-series="{esc(series.label)}" '
                f'data-count="{count}"><title>{esc(f"{day.isoformat()}, {series.label}: {count}")}</title></rect>'
            )
    every = math.ceil(len(stack.days) / MAX_X_LABELS) or 1
    for i, day in enumerate(stack.days):
        if (len(stack.days) - 1 - i) % every == 0:  # the last day always has its label
            x = MARGIN_LEFT + (i + 0.5) * slot
            out.append(
                f'<text class="day" x="{_num(x)}" y="{baseline + 18}" text-anchor="middle">{_short_day(day)}</text>'
            )
    out.append(
        f'<line class="axis" x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" y1="{baseline}" y2="{baseline}"/>'
        f'<line class="axis" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{baseline}"/>'
        f'<text class="axis-title" x="{MARGIN_LEFT + plot_w / 2}" y="{CHART_HEIGHT - 8}" '
        f'text-anchor="middle">Day (UTC)</text>'
        f'<text class="axis-title" transform="translate(16 {MARGIN_TOP + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{esc(y_label)}</text>'
    )
    if stack.total == 0:
        out.append(
            f'<text class="empty" x="{MARGIN_LEFT + plot_w / 2}" y="{MARGIN_TOP + plot_h / 2}" '
            f'text-anchor="middle">none in this period</text>'
        )
    out.append("</svg>")
    return "".join(out)


def state_bars_svg(chart_id: str, states: Sequence[StateCount], title: str, description: str) -> str:
    """Horizontal bars, one per feed state, with the count at the end of each bar."""
    row_h, label_w, right = 30, 110, 60
    height = MARGIN_TOP + row_h * len(states) + 40
    plot_w = CHART_WIDTH - label_w - right
    top, step = nice_scale(max((s.feeds for s in states), default=0))
    out = [
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{esc(title)}</title>',
        f'<desc id="{chart_id}-desc">{esc(description)}</desc>',
    ]
    bottom = MARGIN_TOP + row_h * len(states)
    for value in range(0, top + 1, step):
        x = label_w + value / top * plot_w
        out.append(
            f'<line class="grid" x1="{_num(x)}" x2="{_num(x)}" y1="{MARGIN_TOP}" y2="{bottom}"/>'
            f'<text class="tick" x="{_num(x)}" y="{bottom + 16}" text-anchor="middle">{value}</text>'
        )
    for i, s in enumerate(states):
        y = MARGIN_TOP + i * row_h
        width = s.feeds / top * plot_w
        colour = STATE_COLOURS.get(s.state, NEW_STATE_COLOUR)
        out.append(
            f'<text class="state-label" x="{label_w - 10}" y="{y + row_h / 2 + 4}" text-anchor="end">{esc(s.state)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 5}" width="{_num(width)}" height="{row_h - 10}" '
            f'fill="{colour}" data-state="{esc(s.state)}" data-count="{s.feeds}">'
            f"<title>{esc(f'{s.state}: {s.feeds} feeds')}</title></rect>"
            f'<text class="count" x="{_num(label_w + width + 6)}" y="{y + row_h / 2 + 4}">{s.feeds}</text>'
        )
    out.append(
        f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{MARGIN_TOP}" y2="{bottom}"/>'
        f'<text class="axis-title" x="{label_w + plot_w / 2}" y="{height - 6}" text-anchor="middle">Feeds</text>'
        "</svg>"
    )
    return "".join(out)


def _count(n: int, noun: tuple[str, str]) -> str:
    return f"{n} {noun[0] if n == 1 else noun[1]}"


def legend(stack: DailyStack, noun: tuple[str, str]) -> str:
    """Colour, label and total of each series; the series' detail (a feed's URL) as a tooltip."""
    items = []
    for series, colour in zip(stack.series, series_colours(stack), strict=True):
        hint = f' title="{esc(series.detail)}"' if series.detail else ""
        items.append(
            f'<li{hint}><span class="swatch" style="background:{colour}"></span>'
            f'<span>{esc(series.label)}</span> <span class="note">({_count(series.total, noun)})</span></li>'
        )
    return f'<ul class="legend" aria-label="Legend">{"".join(items)}</ul>' if items else ""


def daily_table(stack: DailyStack, caption: str, extra: Sequence[tuple[str, Sequence[int]]] = ()) -> str:
    """The chart's numbers: a row per day, a column per series, the day's total, then ``extra``."""
    head = "".join(f'<th scope="col" class="num">{esc(s.label)}</th>' for s in stack.series)
    head += '<th scope="col" class="num">Total</th>'
    head += "".join(f'<th scope="col" class="num">{esc(name)}</th>' for name, _ in extra)
    rows = []
    for i, (day, total) in enumerate(zip(stack.days, stack.day_totals(), strict=True)):
        cells = "".join(f'<td class="num">{s.counts[i]}</td>' for s in stack.series)
        cells += f'<td class="num">{total}</td>'
        cells += "".join(f'<td class="num">{values[i]}</td>' for _, values in extra)
        rows.append(f'<tr><th scope="row">{day.isoformat()}</th>{cells}</tr>')
    return (
        f'<details><summary>Data table: {esc(caption)}</summary><div class="scroll"><table>'
        f"<caption>{esc(caption)}</caption>"
        f'<thead><tr><th scope="col">Day (UTC)</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></div></details>"
    )


def states_table(states: Sequence[StateCount]) -> str:
    rows = "".join(
        f'<tr><th scope="row">{esc(s.state)}</th><td class="num">{s.feeds}</td></tr>' for s in states
    )
    return (
        '<table><caption>Feeds per state</caption><thead><tr><th scope="col">State</th>'
        f'<th scope="col" class="num">Feeds</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def failing_feeds_table(report: HealthReport) -> str:
    if not report.failing_feeds:
        return '<p class="note">No failing feeds: every feed is active and its last fetch succeeded.</p>'
    rows = []
    for f in report.failing_feeds:
        state = f.state or STATE_NOT_SET
        colour = STATE_COLOURS.get(state, NEW_STATE_COLOUR)
        error = f.last_error or ""
        if len(error) > ERROR_TEXT_CHARS:
            error = error[:ERROR_TEXT_CHARS] + "…"
        error_html = (
            f"<strong>{esc(f.last_error_class)}</strong> {esc(error)}" if f.last_error_class else esc(error)
        )
        name = f'{esc(f.name)}<br><span class="url">{esc(f.feed_url)}</span>' if f.name else esc(f.feed_url)
        rows.append(
            f"<tr><td>{name}</td>"
            f'<td><span class="state" style="background:{colour}">{esc(state)}</span></td>'
            f'<td class="num">{f.consecutive_failures}</td>'
            f'<td class="when">{_when(f.first_failure_at)}</td><td class="when">{_when(f.last_success_at, "never")}</td>'
            f'<td class="error">{error_html}</td><td class="when">{_when(f.next_due_at)}</td></tr>'
        )
    shown = len(report.failing_feeds)
    caption = f"Failing feeds: {report.failing_feeds_total}"
    if shown < report.failing_feeds_total:
        caption += f" (the {shown} with the longest failure streaks)"
    return (
        f'<div class="scroll"><table id="failing-feeds"><caption>{esc(caption)}</caption><thead><tr>'
        '<th scope="col">Feed</th><th scope="col">State</th><th scope="col" class="num">Failures in a row</th>'
        '<th scope="col">Failing since</th><th scope="col">Last success</th><th scope="col">Last error</th>'
        f'<th scope="col">Next attempt</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


# --------------------------------------------------------------------------- the page


def _largest(stack: DailyStack) -> str:
    named = [s for s in stack.series if not s.is_other and s.total]
    return f" The largest: {named[0].label} ({named[0].total})." if named else ""


def render(report: HealthReport) -> str:
    days = len(report.days)
    period = f"{report.since.isoformat()} to {report.until.isoformat()} ({days} days, UTC)"
    articles, failures = report.articles, report.failures
    duplicates = sum(report.duplicates_per_day)
    on_feeds, on_pages = sum(report.feed_failures_per_day), sum(report.page_failures_per_day)
    feeds_total = sum(s.feeds for s in report.feed_states)

    articles_svg = stacked_bars_svg(
        "chart-articles",
        articles,
        "Articles per day per feed",
        f"Stacked bars, one per day from {period}, one colour per feed: {articles.total} articles "
        f"stored, {duplicates} of them duplicates.{_largest(articles)}",
        "Articles",
    )
    failures_svg = stacked_bars_svg(
        "chart-failures",
        failures,
        "Failed fetches per day by error class",
        f"Stacked bars, one per day from {period}, one colour per error class: {failures.total} "
        f"failed fetches, {on_feeds} of feeds and {on_pages} of pages.{_largest(failures)}",
        "Failed fetches",
    )
    states_svg = state_bars_svg(
        "chart-states",
        report.feed_states,
        "Feeds per state",
        f"Horizontal bars, one per state, {feeds_total} feeds: "
        + ", ".join(f"{s.state} {s.feeds}" for s in report.feed_states)
        + ".",
    )
    source_note = ""
    if report.source == "parquet":
        source_note = (
            '<p class="warning">A writer held the DuckDB file while this report was made: it was read '
            "from the Parquet files, where the feeds table is as of the last completed run.</p>"
        )
    tiles = [
        (articles.total, f"articles stored ({_count(duplicates, ('duplicate', 'duplicates'))})"),
        (failures.total, f"failed fetches ({on_feeds} feeds, {on_pages} pages)"),
        (feeds_total, "feeds known"),
        (report.failing_feeds_total, "failing feeds"),
    ]
    tiles_html = "".join(
        f'<li><span class="value">{value}</span><span class="label">{esc(label)}</span></li>'
        for value, label in tiles
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="newsflow report">
<title>newsflow health report</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>newsflow health report</h1>
<p class="meta">Warehouse <code>{esc(report.data_dir)}</code> · {esc(period)} ·
generated {_when(report.generated_at)}</p>
{source_note}
<ul class="tiles" aria-label="Totals over the period">{tiles_html}</ul>
</header>
<main>
<section aria-labelledby="h-articles">
<h2 id="h-articles">Articles per day per feed</h2>
<figure>
{articles_svg}
<figcaption>Articles stored per day (by load date, duplicates included), one colour per feed;
feeds beyond the ones with the most articles are summed as "Other feeds".</figcaption>
</figure>
{legend(articles, ("article", "articles"))}
{daily_table(articles, "articles per day and feed", [("of which duplicates", report.duplicates_per_day)])}
</section>
<section aria-labelledby="h-failures">
<h2 id="h-failures">Failed fetches per day by error class</h2>
<figure>
{failures_svg}
<figcaption>Fetches of feeds and pages recorded in <code>fetch_log</code> with an error class.</figcaption>
</figure>
{legend(failures, ("failure", "failures"))}
{daily_table(failures, "failed fetches per day and error class", [("feeds", report.feed_failures_per_day), ("pages", report.page_failures_per_day)])}
</section>
<section aria-labelledby="h-states">
<h2 id="h-states">Feed states</h2>
<figure>
{states_svg}
<figcaption>active: polled on schedule; backoff: failing, retried less often; dead: re-probed
rarely; retired: answered 410 Gone; not set: no state recorded yet.</figcaption>
</figure>
{states_table(report.feed_states)}
</section>
<section aria-labelledby="h-failing">
<h2 id="h-failing">Failing feeds</h2>
<p class="note">Feeds whose state is not active, or whose last fetch failed.</p>
{failing_feeds_table(report)}
</section>
</main>
</body>
</html>
"""
