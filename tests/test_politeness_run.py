"""Politeness shared by all the work of a run (spacing and Crawl-delay across fetch_all calls,
postponed hosts for feeds too), robots.txt cached across runs with an expiry, and Retry-After as
an HTTP-date. Loopback sites only; request start times are measured at the server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import duckdb
import pytest
from builders import make_story, page_route

from newsflow.loopback import Route
from tasks import robots
from tasks.fetch import FetchRequest, fetch_all
from warehouse import hosts
from warehouse.store import Warehouse

PAGE_BODY = b"<html><body><p>hello</p></body></html>"


def requests_to(site, paths: list[str], check_robots: bool) -> list[FetchRequest]:
    return [FetchRequest(url=site.url(p), max_bytes=100_000, check_robots=check_robots) for p in paths]


def record_starts(site, routes: dict[str, bytes]) -> list[tuple[str, float]]:
    """Serve ``routes`` (path -> body) and record (path, server-side start time) of each request."""
    starts: list[tuple[str, float]] = []
    lock = threading.Lock()

    def serve(path: str, body: bytes):
        def handler(h):
            with lock:
                starts.append((path, time.monotonic()))
            h._send(200, body, "text/plain" if path == "/robots.txt" else "text/html", {})

        return handler

    for path, body in routes.items():
        site.routes[path] = Route(handler=serve(path, body))
    return starts


def gaps(starts: list[tuple[str, float]]) -> list[float]:
    times = sorted(t for _, t in starts)
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def host_key(site) -> str:
    return site.base_url.removeprefix("http://")


# --------------------------------------------------------------------------- start reservations


def test_reserved_starts_are_spaced_per_host_on_the_injected_clock():
    now = [100.0]
    state = robots.PolitenessState(clock=lambda: now[0])
    assert state.reserve_start("a:80", 1.0) == 0.0
    assert state.reserve_start("a:80", 1.0) == 1.0  # booked 1 s after the first
    assert state.reserve_start("b:80", 1.0) == 0.0  # another host does not wait
    # A Crawl-delay learnt now pushes out the start already booked (spaced by 1 s only) ...
    state.set_crawl_delay("a:80", 3.0, 1.0)
    assert state.reserve_start("a:80", 1.0) == 4.0  # 101 + 3
    assert state.reserve_start("a:80", 1.0) == 7.0  # ... and spaces the next ones
    state.set_crawl_delay("a:80", 10.0, 1.0)  # the first one wins
    assert state.reserve_start("a:80", 1.0) == 10.0
    now[0] = 200.0  # long after the last booking: no wait
    assert state.reserve_start("a:80", 1.0) == 0.0
    state.set_crawl_delay("b:80", None, 1.0)  # no Crawl-delay: the default spacing
    assert state.crawl_delay_known("b:80") and state.reserve_start("b:80", 1.0) == 0.0


def test_reservations_from_many_threads_never_share_a_slot():
    state = robots.PolitenessState(clock=lambda: 0.0)  # time stands still: every start is booked ahead
    waits: list[float] = []
    lock = threading.Lock()

    def book():
        mine = [state.reserve_start("h:80", 0.5) for _ in range(50)]
        with lock:
            waits.extend(mine)

    threads = [threading.Thread(target=book) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == [0.5 * i for i in range(400)]


# --------------------------------------------------------------------------- across fetch_all calls


def test_min_delay_holds_between_the_calls_of_one_run(settings, site):
    """A poll fetches its feeds in one call and its pages in the next: the first page request
    (and the robots.txt before it) keeps the spacing from the last feed request."""
    starts = record_starts(
        site,
        {
            "/f1.xml": b"<rss/>",
            "/f2.xml": b"<rss/>",
            "/robots.txt": b"User-agent: *\nAllow: /\n",
            "/p.html": PAGE_BODY,
        },
    )
    spaced = settings.model_copy(update={"host_min_delay": 0.5})
    state = robots.PolitenessState()
    fetch_all(requests_to(site, ["/f1.xml", "/f2.xml"], check_robots=False), spaced, state)
    (page,) = fetch_all(requests_to(site, ["/p.html"], check_robots=True), spaced, state)
    assert page.ok
    assert [p for p, _ in starts] == ["/f1.xml", "/f2.xml", "/robots.txt", "/p.html"]
    assert min(gaps(starts)) >= 0.45, gaps(starts)

    # Without the run's state each call starts afresh: the next call's first request goes at once.
    starts.clear()
    fetch_all(requests_to(site, ["/f1.xml"], check_robots=False), spaced)
    fetch_all(requests_to(site, ["/f2.xml"], check_robots=False), spaced)
    assert len(starts) == 2 and gaps(starts)[0] < 0.3, gaps(starts)


def test_crawl_delay_learnt_from_pages_spaces_the_next_calls_feed_requests(settings, site):
    starts = record_starts(
        site, {"/robots.txt": b"User-agent: *\nCrawl-delay: 0.6\n", "/p.html": PAGE_BODY, "/f.xml": b"<rss/>"}
    )
    state = robots.PolitenessState()
    fetch_all(requests_to(site, ["/p.html"], check_robots=True), settings, state)
    (feed,) = fetch_all(requests_to(site, ["/f.xml"], check_robots=False), settings, state)
    assert feed.ok
    assert [p for p, _ in starts] == ["/robots.txt", "/p.html", "/f.xml"]
    assert min(gaps(starts)) >= 0.55, gaps(starts)  # host_min_delay is 0 here: the delay is robots'


def test_a_postponed_host_gets_no_feed_request_either(settings, site):
    site.routes["/busy.html"] = Route(status=503, headers={"Retry-After": "3600"}, conditional=False)
    site.routes["/f.xml"] = Route(body=b"<rss/>")
    cap = settings.model_copy(update={"retry_after_cap": 5})
    state = robots.PolitenessState()
    fetch_all(requests_to(site, ["/busy.html"], check_robots=True), cap, state)
    (feed,) = fetch_all(requests_to(site, ["/f.xml"], check_robots=False), cap, state)
    assert feed.error_class == "host_postponed" and site.hits["/f.xml"] == 0


# --------------------------------------------------------------------------- Retry-After as an HTTP-date


def test_retry_after_http_date_beyond_the_cap_postpones_until_that_date(settings, site, tmp_path):
    when = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    site.routes["/busy.html"] = Route(
        status=429, headers={"Retry-After": format_datetime(when, usegmt=True)}, conditional=False
    )
    cap = settings.model_copy(update={"retry_after_cap": 5})
    state = robots.PolitenessState()
    (busy,) = fetch_all(requests_to(site, ["/busy.html"], check_robots=False), cap, state)
    assert busy.status == 429 and busy.attempts == 1
    until = state.postponed[host_key(site)]
    assert abs((until - when).total_seconds()) < 5, (until, when)
    with Warehouse(tmp_path / "data") as wh:  # and it outlives the run
        hosts.save_state(wh.con, state)
        assert hosts.load_postponed(wh.con) == {host_key(site): until}


def test_retry_after_http_date_within_the_cap_is_waited_for(settings, site):
    calls: list[float] = []

    def busy_once(h):
        calls.append(time.monotonic())
        if len(calls) == 1:
            soon = datetime.now(UTC) + timedelta(seconds=2)  # an HTTP-date has whole seconds: 1-2 s
            h._send(503, b"", "text/plain", {"Retry-After": format_datetime(soon, usegmt=True)})
        else:
            h._send(200, PAGE_BODY, "text/html", {})

    site.routes["/f.html"] = Route(handler=busy_once)
    state = robots.PolitenessState()
    (r,) = fetch_all(requests_to(site, ["/f.html"], check_robots=False), settings, state)
    assert r.ok and r.attempts == 2 and not state.postponed
    assert calls[1] - calls[0] >= 0.9  # the backoff alone would be ~0.05 s


# --------------------------------------------------------------------------- robots.txt across runs


def robots_route(text: str, status: int = 200) -> Route:
    return Route(body=text.encode(), content_type="text/plain", status=status, conditional=False)


def cache_rows(wh: Warehouse) -> list[tuple]:
    return wh.con.execute(
        "SELECT robots_key, outcome, status, octet_length(body) FROM robots_cache ORDER BY robots_key"
    ).fetchall()


def seeded(wh: Warehouse, now: datetime, max_age: timedelta = timedelta(hours=24)) -> robots.PolitenessState:
    state = robots.PolitenessState()
    hosts.seed_state(state, wh.con, now, robots_max_age=max_age)
    return state


def test_robots_txt_is_reused_by_the_next_runs_until_it_expires(settings, site, tmp_path):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nDisallow: /private/\n")
    for p in ("/private/a.html", "/public/b.html"):
        site.routes[p] = Route(body=PAGE_BODY)
    paths = ["/private/a.html", "/public/b.html"]
    key = robots.robots_key(site.base_url)
    with Warehouse(tmp_path / "data") as wh:
        first = robots.PolitenessState()
        fetch_all(requests_to(site, paths, check_robots=True), settings, first)
        assert hosts.save_state(wh.con, first) == 1
        assert cache_rows(wh) == [(key, "parsed", 200, len(b"User-agent: *\nDisallow: /private/\n"))]
        later = datetime.now(UTC) + timedelta(hours=23)

        second = seeded(wh, later)  # within the 24 h
        private, public = fetch_all(requests_to(site, paths, check_robots=True), settings, second)
        assert site.hits["/robots.txt"] == 1  # not asked again
        assert private.error_class == "robots_disallowed" and site.hits["/private/a.html"] == 0
        assert public.ok
        assert second.rules_to_save() == {}  # nothing new to store

        expired = seeded(wh, later + timedelta(hours=2))  # 25 h after the fetch
        fetch_all(requests_to(site, paths, check_robots=True), settings, expired)
        assert site.hits["/robots.txt"] == 2
        hosts.save_state(wh.con, expired)
        assert hosts.load_robots(wh.con, timedelta(hours=24))[key].fetched_at > first.rules[key].fetched_at

        never = seeded(wh, datetime.now(UTC), max_age=timedelta(0))  # robots_cache_hours = 0
        fetch_all(requests_to(site, paths, check_robots=True), settings, never)
        assert site.hits["/robots.txt"] == 3
        assert site.hits["/private/a.html"] == 0


def test_a_missing_robots_txt_is_cached_as_allow_all(settings, site, tmp_path):
    site.routes["/a.html"] = Route(body=PAGE_BODY)  # no /robots.txt: 404
    with Warehouse(tmp_path / "data") as wh:
        first = robots.PolitenessState()
        fetch_all(requests_to(site, ["/a.html"], check_robots=True), settings, first)
        hosts.save_state(wh.con, first)
        assert cache_rows(wh) == [(robots.robots_key(site.base_url), "allow_all", 404, None)]
        (r,) = fetch_all(
            requests_to(site, ["/a.html"], check_robots=True), settings, seeded(wh, datetime.now(UTC))
        )
    assert r.ok and site.hits["/robots.txt"] == 1 and site.hits["/a.html"] == 2


@pytest.mark.parametrize("status", [503, 429])
def test_an_unavailable_robots_txt_is_not_cached_and_blocks_the_host_for_the_run(
    settings, site, tmp_path, status
):
    site.routes["/robots.txt"] = robots_route("down", status=status)
    site.routes["/a.html"] = Route(body=PAGE_BODY)
    fast = settings.model_copy(update={"retries": 0})
    with Warehouse(tmp_path / "data") as wh:
        first = robots.PolitenessState()
        for _ in range(2):  # two batches of one run: asked once, no page requested
            (r,) = fetch_all(requests_to(site, ["/a.html"], check_robots=True), fast, first)
            assert r.error_class == "robots_unavailable"
        assert site.hits["/robots.txt"] == 1 and site.hits["/a.html"] == 0
        hosts.save_state(wh.con, first)
        assert cache_rows(wh) == []

        site.routes["/robots.txt"] = robots_route("User-agent: *\nAllow: /\n")  # back
        (r,) = fetch_all(
            requests_to(site, ["/a.html"], check_robots=True), fast, seeded(wh, datetime.now(UTC))
        )
    assert r.ok and site.hits["/robots.txt"] == 2  # the next run asked again


def test_cached_robots_txt_is_capped_and_the_newer_fetch_wins(settings, site, tmp_path):
    filler = "# " + "x" * 1000 + "\n"
    site.routes["/robots.txt"] = robots_route(
        "User-agent: *\nDisallow: /no/\n" + filler * 600 + "Disallow: /late/\n"
    )  # ~600 KB: the rule past 500 KiB is ignored (RFC 9309)
    for p in ("/no/a.html", "/late/a.html"):
        site.routes[p] = Route(body=PAGE_BODY)
    key = robots.robots_key(site.base_url)
    with Warehouse(tmp_path / "data") as wh:
        older, newer = robots.PolitenessState(), robots.PolitenessState()
        fetch_all(requests_to(site, ["/no/a.html"], check_robots=True), settings, older)
        fetch_all(requests_to(site, ["/no/a.html"], check_robots=True), settings, newer)
        hosts.save_state(wh.con, newer)
        hosts.save_state(wh.con, older)  # a slower run saving after a newer one: ignored
        assert cache_rows(wh) == [(key, "parsed", 200, robots.ROBOTS_MAX_BYTES)]
        assert hosts.load_robots(wh.con, timedelta(hours=1))[key].fetched_at == newer.rules[key].fetched_at
        no, late = fetch_all(
            requests_to(site, ["/no/a.html", "/late/a.html"], check_robots=True),
            settings,
            seeded(wh, datetime.now(UTC)),
        )
    assert no.error_class == "robots_disallowed" and late.ok and site.hits["/robots.txt"] == 2


def test_cached_crawl_delay_spaces_feed_requests_of_the_next_run(settings, site, tmp_path):
    site.routes["/robots.txt"] = robots_route("User-agent: *\nCrawl-delay: 0.5\n")
    starts = record_starts(site, {"/p.html": PAGE_BODY, "/f.xml": b"<rss/>"})
    with Warehouse(tmp_path / "data") as wh:
        first = robots.PolitenessState()
        fetch_all(requests_to(site, ["/p.html"], check_robots=True), settings, first)
        hosts.save_state(wh.con, first)
        starts.clear()
        fetch_all(
            requests_to(site, ["/f.xml"] * 3, check_robots=False), settings, seeded(wh, datetime.now(UTC))
        )
    assert len(starts) == 3 and min(gaps(starts)) >= 0.45, gaps(starts)
    assert site.hits["/robots.txt"] == 1


# --------------------------------------------------------------------------- end to end


def _query(data_dir: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_backfills_reuse_robots_txt_until_it_expires(prefect_api, newsflow_env, monkeypatch, tmp_path, site):
    """Flow runs seed their state from the cache and store what they fetched: a disallowed page
    is recorded as robots_disallowed and never requested, with or without asking robots.txt."""
    from flows.backfill import backfill_flow

    stories = [make_story(i, seed=11) for i in range(4)]
    for s in stories:
        site.routes[f"/news/{s.slug}.html"] = page_route(s)
        site.routes[f"/secret/{s.slug}.html"] = page_route(s)
    site.routes["/robots.txt"] = robots_route("User-agent: newsflow\nDisallow: /secret/\n")

    def run(n: int) -> None:
        urls = tmp_path / f"urls{n}.txt"
        urls.write_text(
            f"{site.url(f'/news/{stories[n].slug}.html')}\n{site.url(f'/secret/{stories[n].slug}.html')}\n"
        )
        backfill_flow(urls_file=str(urls), data_dir=str(newsflow_env))

    run(0)
    assert site.hits["/robots.txt"] == 1
    run(1)  # a second run within robots_cache_hours
    assert site.hits["/robots.txt"] == 1
    monkeypatch.setenv("NEWSFLOW_ROBOTS_CACHE_HOURS", "0")
    run(2)  # expired (0 hours): asked again
    assert site.hits["/robots.txt"] == 2

    assert sum(n for path, n in site.hits.items() if path.startswith("/secret/")) == 0
    log = _query(
        newsflow_env, "SELECT url, error_class FROM fetch_log WHERE kind = 'page' ORDER BY fetched_at"
    )
    assert {u: c for u, c in log if "/secret/" in u} == {
        site.url(f"/secret/{stories[n].slug}.html"): "robots_disallowed" for n in range(3)
    }
    assert all(c is None for u, c in log if "/news/" in u) and len(log) == 6
    assert _query(newsflow_env, "SELECT outcome, status FROM robots_cache") == [("parsed", 200)]
