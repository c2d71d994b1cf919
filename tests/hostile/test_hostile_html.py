"""Hostile HTML for the extractor: deeply nested tags, a single enormous line, many tiny
elements, one element with very many attributes.

extract.py has no time limit per page (the pool waits for trafilatura as long as it takes); the
page cap (NEWSFLOW_MAX_PAGE_BYTES, 10 MiB) is the only bound, and it does not bound the time:
measured on a loaded 2-core machine, 700 000 ``<span>`` (10 MB) took 80 s and +0.9 GB, a 10 MB
line of ``<p>`` elements 34 s and +240 MB, a 10 MB line of text 4 s and +300 MB, 100 000 nested
``<div>`` 0.3 s (libxml2 stops at depth 256); 250 000 ``<p>a</p>`` (2 MB) had not finished after
380 s, and one element with 0.4 MB of attributes took 63 s, growing with the square of the size
(10 MB: hours). These tests run small versions of each shape in a fresh process and bound the
time and memory there; a poll over such pages completes and stores the good article beside them.
"""

from __future__ import annotations

from builders import RSS, make_story, page_route, rss_feed
from hostile_kit import fetch_log, poll_once, query, run_child
from hostile_kit import measured as record

from newsflow.loopback import Route

PARA = "The harbour wall collapsed overnight, officials said, and the ferry was cancelled. "


def hostile_page(shape: str, size: int) -> bytes:
    if shape == "deep-nesting":
        depth = size // 11
        body = "<div>" * depth + "<p>" + PARA * 20 + "</p>" + "</div>" * depth
    elif shape == "deep-unclosed":
        body = "<div><b>" * (size // 8) + PARA * 20
    elif shape == "one-line-of-text":
        body = "<article><p>" + PARA * (size // len(PARA)) + "</p></article>"
    elif shape == "one-line-of-paragraphs":
        body = "<article>" + ("<p>" + PARA + "</p>") * (size // (len(PARA) + 7)) + "</article>"
    elif shape == "many-tiny-elements":
        body = "<article>" + "<span>a</span>" * (size // 14) + "</article>"
    elif shape == "many-tiny-paragraphs":
        body = "<article>" + "<p>a</p>" * (size // 8) + "</article>"
    elif shape == "many-attributes":
        attrs = " ".join(f'data-a{i}="{i}"' for i in range(size // 14))
        body = f"<article><p {attrs}>" + PARA * 20 + "</p></article>"
    else:
        raise ValueError(shape)
    return (
        "<!DOCTYPE html><html><head><title>hostile</title></head><body>" + body + "</body></html>"
    ).encode()


SHAPES = [
    "deep-nesting",
    "deep-unclosed",
    "one-line-of-text",
    "one-line-of-paragraphs",
    "many-tiny-elements",
    "many-tiny-paragraphs",
    "many-attributes",
]


# Small enough to keep the suite quick, large enough to show each shape's cost. Two shapes grow
# faster than their size: attributes of one element (0.1 MB: 0.9 s, 0.2 MB: 9 s, 0.4 MB: 63 s)
# and tiny paragraphs (80 KB: 2.2 s, 160 KB: 5.3 s, 2 MB: still running after 380 s).
SIZES = {shape: 300_000 for shape in SHAPES} | {
    "many-tiny-elements": 100_000,
    "many-tiny-paragraphs": 40_000,
    "many-attributes": 60_000,
}


def test_hostile_pages_are_extracted_in_bounded_time_and_memory(tmp_path):
    """Every shape, one after the other in a fresh process (peak memory reset between pages)."""
    jobs = []
    for shape in SHAPES:
        path = tmp_path / f"{shape}.html"
        path.write_bytes(hostile_page(shape, SIZES[shape]))
        jobs.append({"path": str(path), "url": "http://news.example/a", "content_type": "text/html"})
    report = run_child("extract_each", {"jobs": jobs}, timeout=180)
    measured = dict(zip(SHAPES, report.result, strict=True))
    for shape, got in measured.items():
        record("hostile_html", shape, peak_mb=got["peak_growth_mb"], seconds=got["elapsed_s"])
        assert got["error"] is None or got["text_chars"] == 0, (shape, got)
        assert got["elapsed_s"] < 10, (shape, got)
        assert got["peak_growth_mb"] < 100, (shape, got)


def test_poll_over_hostile_pages(prefect_api, newsflow_env, tmp_path, site):
    good = make_story(1, seed=68)
    site.routes["/good.html"] = page_route(good)
    items = [(good, site.url("/good.html"), "good")]
    for i, shape in enumerate(SHAPES):
        site.routes[f"/{shape}.html"] = Route(body=hostile_page(shape, SIZES[shape] // 5))
        items.append((make_story(10 + i, seed=68), site.url(f"/{shape}.html"), shape))
    site.routes["/feed.xml"] = Route(body=rss_feed(items), content_type=RSS)

    result = poll_once(tmp_path, [site.url("/feed.xml")], newsflow_env)

    logged = fetch_log(newsflow_env)
    assert {logged[site.url(f"/{s}.html")][1] for s in SHAPES} == {None}  # fetched fine
    assert result["pages_fetched"] == len(SHAPES) + 1
    rows = dict(query(newsflow_env, "SELECT url, text FROM articles"))
    assert all(p in rows[site.url("/good.html")] for p in good.paragraphs)
    assert set(rows) >= {site.url(f"/{s}.html") for s in SHAPES}  # each recorded, text or not
