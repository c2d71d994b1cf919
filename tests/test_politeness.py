"""Politeness: robots.txt (RFC 9309) before article pages, Crawl-delay, and hosts postponed by a
Retry-After longer than the cap. Loopback sites only; request times are measured at the server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest
from builders import RSS, feeds_toml, make_story, page_route, rss_feed

from newsflow.loopback import Route
from tasks import robots
from tasks.fetch import ERROR_CLASSES, FetchRequest, fetch_all
from tasks.load import TRANSIENT_PAGE_ERRORS

PAGE = Route(body=b"<html><body><p>hello</p></body></html>")


def robots_route(text: str, status: int = 200) -> Route:
    return Route(body=text.encode(), content_type="text/plain", status=status, conditional=False)


def pages(site, paths: list[str], check_robots: bool = True) -> list[FetchRequest]:
    return [FetchRequest(url=site.url(p), max_bytes=100_000, check_robots=check_robots) for p in paths]


def timed(site, path: str) -> list[float]:
    """Record the server-side start time of each request to ``path``."""
    starts: list[float] = []
    lock = threading.Lock()
    body = PAGE.body

    def handler(h):
        with lock:
            starts.append(time.monotonic())
        h._send(200, body, "text/html", {})

    site.routes[path] = Route(handler=handler)
    return starts


def test_new_error_classes_are_declared():
    assert {"robots_disallowed", "robots_unavailable", "host_postponed"} <= set(ERROR_CLASSES)
    assert {"robots_unavailable", "host_postponed"} <= TRANSIENT_PAGE_ERRORS
    assert "robots_disallowed" not in TRANSIENT_PAGE_ERRORS  # final: entries recorded, not retried


def test_helpers():
    assert robots.product_token("newsflow/0.1.0 (+https://x; bot)") == "newsflow"
    assert robots.robots_url("https://u:p@Example.com:8443/a/b?q=1") == "https://Example.com:8443/robots.txt"
    assert robots.robots_key("HTTP://Example.com/x") == "http://example.com:80"
    assert robots.robots_url("ftp://example.com/x") is None


def test_disallowed_page_is_never_requested(settings, site):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nDisallow: /private/\n")
    site.routes["/private/a.html"] = PAGE
    site.routes["/public/b.html"] = PAGE
    private, public = fetch_all(pages(site, ["/private/a.html", "/public/b.html"]), settings)
    assert private.error_class == "robots_disallowed" and private.status is None and private.attempts == 0
    assert site.hits["/private/a.html"] == 0
    assert public.ok and site.hits["/public/b.html"] == 1
    # Feeds (and any request not marked check_robots) are not checked.
    (feed,) = fetch_all(pages(site, ["/private/a.html"], check_robots=False), settings)
    assert feed.ok and site.hits["/private/a.html"] == 1


def test_wildcards_longest_match_and_agent_group(settings, site):
    # urllib.robotparser takes the first match and knows no wildcards; RFC 9309 takes the longest
    # match (Allow wins a tie), with * and $; the "newsflow" group overrides the "*" one.
    site.routes["/robots.txt"] = robots_route(
        "User-agent: *\nDisallow: /\n\n"
        "User-agent: NewsFlow\n"
        "Disallow: /news/\n"
        "Allow: /news/2024/\n"
        "Disallow: /*.pdf$\n"
        "Disallow: /*?print=\n"
    )
    paths = {
        "/news/2024/a.html": True,  # longer Allow beats shorter Disallow
        "/news/2023/a.html": False,
        "/other/doc.pdf": False,  # wildcard + end anchor
        "/other/doc.pdf.html": True,
        "/other/page.html?print=1": False,
        "/other/page.html": True,  # the '*' group's Disallow: / does not apply to newsflow
    }
    for p in paths:
        site.routes[p.split("?")[0]] = PAGE
    results = fetch_all(pages(site, list(paths)), settings)
    got = {p: r.ok for p, r in zip(paths, results, strict=True)}
    assert got == paths
    assert all(r.error_class == "robots_disallowed" for r in results if not r.ok)
    assert site.hits["/news/2023/a.html"] == 0 and site.hits["/other/doc.pdf"] == 0


def test_missing_robots_allows_everything(settings, site):
    site.routes["/a.html"] = PAGE  # no /robots.txt route: the loopback site answers 404
    (r,) = fetch_all(pages(site, ["/a.html"]), settings)
    assert r.ok and site.hits["/robots.txt"] == 1


@pytest.mark.parametrize("status", [503, 500, 429])
def test_server_error_robots_means_complete_disallow(settings, site, status):
    site.routes["/robots.txt"] = robots_route("oops", status=status)
    site.routes["/a.html"] = PAGE
    site.routes["/b.html"] = PAGE
    fast = settings.model_copy(update={"retries": 0})
    results = fetch_all(pages(site, ["/a.html", "/b.html"]), fast)
    assert [r.error_class for r in results] == ["robots_unavailable"] * 2
    assert site.hits["/a.html"] == site.hits["/b.html"] == 0 and site.hits["/robots.txt"] == 1
    assert f"HTTP {status}" in results[0].error_message


def test_unreachable_robots_means_complete_disallow(settings, site):
    def stall(h):
        time.sleep(1.5)

    site.routes["/robots.txt"] = Route(handler=stall)
    site.routes["/a.html"] = PAGE
    quick = settings.model_copy(update={"read_timeout": 0.3, "request_deadline": 1.0, "retries": 0})
    (r,) = fetch_all(pages(site, ["/a.html"]), quick)
    assert r.error_class == "robots_unavailable" and "timeout" in r.error_message
    assert site.hits["/a.html"] == 0


def test_robots_fetched_once_per_host_per_run(settings, site, site_factory):
    other = site_factory("127.0.0.2")
    for s in (site, other):
        s.routes["/robots.txt"] = robots_route("User-agent: *\nDisallow: /x/\n")
        for i in range(12):
            s.routes[f"/p{i}.html"] = PAGE
    state = robots.PolitenessState()
    for _ in range(2):  # two batches of the same run share the state
        fetch_all(
            pages(site, [f"/p{i}.html" for i in range(12)]) + pages(other, ["/p0.html"]), settings, state
        )
    assert site.hits["/robots.txt"] == 1 and other.hits["/robots.txt"] == 1
    assert site.hits["/p3.html"] == 2
    # A new run asks again.
    fetch_all(pages(site, ["/p0.html"]), settings, robots.PolitenessState())
    assert site.hits["/robots.txt"] == 2


def test_run_state_is_per_run_id():
    assert robots.run_state("run-a") is robots.run_state("run-a")
    assert robots.run_state("run-a") is not robots.run_state("run-b")
    assert robots.run_state(None) is not robots.run_state(None)


def test_oversized_robots_is_parsed_up_to_the_cap(settings, site):
    filler = "# " + "x" * 1000 + "\n"
    text = "User-agent: *\nDisallow: /no/\n" + filler * 600 + "Disallow: /late/\n"  # ~600 KB
    site.routes["/robots.txt"] = robots_route(text)
    for p in ("/no/a.html", "/late/a.html"):
        site.routes[p] = PAGE
    no, late = fetch_all(pages(site, ["/no/a.html", "/late/a.html"]), settings)
    assert no.error_class == "robots_disallowed"
    assert late.ok  # the rule past 500 KiB is ignored, per RFC 9309


def test_crawl_delay_spaces_request_starts(settings, site):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nCrawl-delay: 0.5\n")
    starts = timed(site, "/a.html")
    fetch_all(pages(site, ["/a.html"] * 3), settings)
    assert len(starts) == 3
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.45, gaps  # server-side clock; a little slack for scheduling


def test_crawl_delay_is_capped(settings, site):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nCrawl-delay: 120\n")
    starts = timed(site, "/a.html")
    capped = settings.model_copy(update={"max_crawl_delay": 0.3})
    began = time.monotonic()
    fetch_all(pages(site, ["/a.html"] * 3), capped)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.25 and time.monotonic() - began < 3, gaps


def test_respect_robots_off_fetches_everything(settings, site):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nDisallow: /\nCrawl-delay: 30\n")
    site.routes["/a.html"] = PAGE
    off = settings.model_copy(update={"respect_robots": False})
    (r,) = fetch_all(pages(site, ["/a.html"]), off)
    assert r.ok and site.hits["/robots.txt"] == 0


def test_long_retry_after_postpones_the_host(settings, site, site_factory):
    other = site_factory("127.0.0.2")
    other.routes["/ok.html"] = PAGE
    site.routes["/busy.html"] = Route(status=429, headers={"Retry-After": "3600"}, conditional=False)
    site.routes["/later.html"] = PAGE
    cap = settings.model_copy(update={"retry_after_cap": 5})
    state = robots.PolitenessState()
    (busy,) = fetch_all(pages(site, ["/busy.html"], check_robots=False), cap, state)
    assert busy.status == 429 and busy.attempts == 1  # longer than the cap: not retried in the run
    later, ok = fetch_all(pages(site, ["/later.html"]) + pages(other, ["/ok.html"]), cap, state)
    assert later.error_class == "host_postponed" and later.status is None
    assert site.hits["/later.html"] == 0 and site.hits["/robots.txt"] == 0  # nothing sent to it
    assert ok.ok  # other hosts are not affected
    assert list(state.postponed) == [f"127.0.0.1:{site.base_url.rsplit(':', 1)[1]}"]


def test_postponement_stops_queued_requests_in_the_same_call(settings, site):
    site.routes["/busy.html"] = Route(
        status=503, headers={"Retry-After": "120"}, conditional=False, delay=0.1
    )
    for i in range(4):
        site.routes[f"/q{i}.html"] = PAGE
    one = settings.model_copy(update={"retry_after_cap": 1, "host_concurrency": 1})
    reqs = pages(site, ["/busy.html"], check_robots=False) + pages(
        site, [f"/q{i}.html" for i in range(4)], False
    )
    busy, *rest = fetch_all(reqs, one)
    assert busy.status == 503
    assert [r.error_class for r in rest] == ["host_postponed"] * 4
    assert sum(site.hits[f"/q{i}.html"] for i in range(4)) == 0


def test_short_retry_after_is_retried_not_postponed(settings, site):
    calls = []

    def flaky(h):
        calls.append(1)
        if len(calls) == 1:
            h._send(429, b"", "text/plain", {"Retry-After": "0"})
        else:
            h._send(200, PAGE.body, "text/html", {})

    site.routes["/f.html"] = Route(handler=flaky)
    state = robots.PolitenessState()
    (r,) = fetch_all(pages(site, ["/f.html"], check_robots=False), settings, state)
    assert r.ok and r.attempts == 2 and not state.postponed


# --------------------------------------------------------------------------- end to end


def _query(data_dir: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_poll_records_disallowed_pages_and_retries_unavailable_ones(
    prefect_api, newsflow_env, monkeypatch, tmp_path, site, site_factory
):
    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_BATCH_SIZE", "1")  # several batches: robots.txt still fetched once
    other = site_factory("127.0.0.2")
    stories = [make_story(i) for i in range(4)]
    links = []
    for s, host, prefix in zip(
        stories, (site, site, site, other), ("/news/", "/news/", "/secret/", "/news/"), strict=True
    ):
        host.routes[f"{prefix}{s.slug}.html"] = page_route(s)
        links.append(host.url(f"{prefix}{s.slug}.html"))
    site.routes["/robots.txt"] = robots_route("User-agent: newsflow\nDisallow: /secret/\n")
    other.routes["/robots.txt"] = robots_route("down", status=503)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, link, f"g-{s.slug}") for s, link in zip(stories, links, strict=True)]),
        content_type=RSS,
    )
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml([site.url("/rss.xml")]))

    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), all_feeds=True)

    assert site.hits["/robots.txt"] == 1  # once for the run, over four batches
    assert site.hits[f"/secret/{stories[2].slug}.html"] == 0
    assert other.hits[f"/news/{stories[3].slug}.html"] == 0
    log = dict(_query(newsflow_env, "SELECT url, error_class FROM fetch_log WHERE kind = 'page'"))
    assert log[links[2]] == "robots_disallowed" and log[links[3]] == "robots_unavailable"
    entries = dict(_query(newsflow_env, "SELECT link, status FROM entries"))
    assert entries[links[2]] == "failed"  # final: recorded, never tried again
    assert links[3] not in entries  # transient: tried again next run
    assert entries[links[0]] == entries[links[1]] == "fetched"

    unavailable_asked = other.hits["/robots.txt"]  # (with its retries)
    other.routes["/robots.txt"] = robots_route("", status=404)  # the host is back, without rules
    # (An unchanged feed is not parsed again: its transient failures are retried once it changes.)
    extra = make_story(9)
    site.routes[f"/news/{extra.slug}.html"] = page_route(extra)
    items = [(s, link, f"g-{s.slug}") for s, link in zip(stories, links, strict=True)]
    site.routes["/rss.xml"].body = rss_feed(
        [*items, (extra, site.url(f"/news/{extra.slug}.html"), "g-extra")]
    )
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), all_feeds=True)

    assert other.hits[f"/news/{stories[3].slug}.html"] == 1
    assert site.hits["/robots.txt"] == 1  # cached for NEWSFLOW_ROBOTS_CACHE_HOURS
    assert other.hits["/robots.txt"] == unavailable_asked + 1  # unavailable is not cached: asked again
    assert site.hits[f"/secret/{stories[2].slug}.html"] == 0
    assert dict(_query(newsflow_env, "SELECT link, status FROM entries"))[links[3]] == "fetched"


# --------------------------------------------------------------------------- across runs


def test_postponement_is_stored_and_seeds_the_next_run(settings, site, tmp_path):
    from datetime import UTC, datetime, timedelta

    from warehouse import hosts
    from warehouse.store import Warehouse

    site.routes["/busy.html"] = Route(status=429, headers={"Retry-After": "3600"}, conditional=False)
    site.routes["/a.html"] = PAGE
    cap = settings.model_copy(update={"retry_after_cap": 5})
    first = robots.PolitenessState()
    fetch_all(pages(site, ["/busy.html"], check_robots=False), cap, first)
    now = datetime.now(UTC)
    with Warehouse(tmp_path / "data") as wh:
        expired = {"gone.example:80": now - timedelta(seconds=1)}
        assert hosts.save_postponed(wh.con, {**first.postponed, **expired}) == 1
        assert hosts.save_postponed(wh.con, {h: now + timedelta(seconds=60) for h in first.postponed}) == 1
        stored = hosts.load_postponed(wh.con)
        assert stored == first.postponed  # the later date is kept, the expired one forgotten
        second = robots.PolitenessState()
        hosts.seed_state(second, wh.con)
        assert hosts.load_postponed(wh.con, now + timedelta(hours=2)) == {}
    (r,) = fetch_all(pages(site, ["/a.html"]), cap, second)
    assert r.error_class == "host_postponed" and site.hits["/a.html"] == 0


def test_a_postponed_host_is_not_asked_again_by_the_next_poll(
    prefect_api, newsflow_env, monkeypatch, tmp_path, site, site_factory
):
    """429 + a long Retry-After in one poll: the next poll sends that host nothing (persisted)."""
    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_RETRY_AFTER_CAP", "2")
    busy = site_factory("127.0.0.3")
    story, extra = make_story(1), make_story(2)
    busy.routes[f"/n/{story.slug}.html"] = Route(
        status=429, headers={"Retry-After": "3600"}, conditional=False
    )
    site.routes[f"/n/{extra.slug}.html"] = page_route(extra)
    link = busy.url(f"/n/{story.slug}.html")
    site.routes["/rss.xml"] = Route(body=rss_feed([(story, link, "g-1")]), content_type=RSS)
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(feeds_toml([site.url("/rss.xml")]))

    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), all_feeds=True)
    asked = busy.hits[f"/n/{story.slug}.html"]
    assert asked == 1
    assert _query(newsflow_env, "SELECT count(*) FROM host_state WHERE postponed_until > now()") == [(1,)]

    site.routes["/rss.xml"].body = rss_feed(
        [(story, link, "g-1"), (extra, site.url(f"/n/{extra.slug}.html"), "g-2")]
    )
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), all_feeds=True)
    assert busy.hits[f"/n/{story.slug}.html"] == asked  # not asked again
    classes = [c for (c,) in _query(newsflow_env, "SELECT error_class FROM fetch_log WHERE url = ?", [link])]
    assert classes[-1] == "host_postponed"
    assert _query(newsflow_env, "SELECT count(*) FROM articles")[0][0] == 1  # the other page went through
