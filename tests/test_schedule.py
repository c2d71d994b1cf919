"""Feed schedules: the state machine (tasks/schedule.py) with an injected clock, then the poll
flow choosing due feeds, backing off, moving, retiring and reviving feeds on loopback hosts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import duckdb
import pytest
from conftest import latest_artifact, subprocess_env

from newsflow.loopback import Route
from tasks.feeds import FeedSpec, due_feeds, load_feed_list
from tasks.schedule import (
    ACTIVE,
    BACKOFF,
    DEAD,
    RETIRED,
    FeedOverride,
    FeedSchedule,
    PollObservation,
    SchedulePolicy,
    backoff_delay,
    feed_hint_seconds,
    header_hint_seconds,
    next_schedule,
    parse_duration,
    rate_from_dates,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = SchedulePolicy()
URL = "http://127.0.0.2/feed.xml"
RSS = "application/rss+xml"


def ok(at: datetime, **kw) -> PollObservation:
    return PollObservation(
        at=at, ok=True, changed=kw.pop("changed", True), status=kw.pop("status", 200), **kw
    )


def failed(at: datetime, error_class: str = "http_5xx", status: int | None = 500) -> PollObservation:
    return PollObservation(at=at, ok=False, error_class=error_class, error_message="boom", status=status)


def hourly(at: datetime, n: int = 10) -> tuple[datetime, ...]:
    return tuple(at - timedelta(hours=i) for i in range(n))


# --------------------------------------------------------------------------- the state machine


def test_interval_follows_the_publishing_rate_within_bounds():
    rng = random.Random(1)
    busy = next_schedule(
        URL,
        FeedSchedule(),
        ok(T0, new_entries=10, entries_in_feed=10, entry_dates=hourly(T0)),
        POLICY,
        rng=rng,
    )
    assert busy.schedule.state == ACTIVE and busy.schedule.poll_interval_s == 3600  # 24 a day
    assert abs(busy.schedule.new_per_day - 24) < 1e-9
    # +-5% jitter around the interval
    assert timedelta(seconds=3420) <= busy.schedule.next_due_at - T0 <= timedelta(seconds=3780)

    weekly = tuple(T0 - timedelta(days=7 * i) for i in range(4))
    quiet = next_schedule(
        URL, FeedSchedule(), ok(T0, new_entries=4, entries_in_feed=4, entry_dates=weekly), POLICY, rng=rng
    )
    assert quiet.schedule.poll_interval_s == 86400  # once a week: the 24 h ceiling

    minutely = tuple(T0 - timedelta(minutes=i) for i in range(60))
    flood = next_schedule(
        URL, FeedSchedule(), ok(T0, new_entries=60, entries_in_feed=60, entry_dates=minutely), POLICY, rng=rng
    )
    assert flood.schedule.poll_interval_s == 300  # the 5-minute floor

    unknown = next_schedule(URL, FeedSchedule(), ok(T0, new_entries=1, entries_in_feed=1), POLICY, rng=rng)
    assert unknown.schedule.poll_interval_s == 3600  # nothing to go on: the first interval


def test_silence_lengthens_the_interval_and_feed_hints_are_a_floor():
    rng = random.Random(2)
    s = next_schedule(
        URL,
        FeedSchedule(),
        ok(T0, new_entries=10, entries_in_feed=10, entry_dates=hourly(T0)),
        POLICY,
        rng=rng,
    ).schedule
    intervals = [s.poll_interval_s]
    at = T0
    for _ in range(200):  # nothing new for weeks: 304 after 304
        at = s.next_due_at
        s = next_schedule(URL, s, ok(at, changed=False, status=304), POLICY, rng=rng).schedule
        intervals.append(s.poll_interval_s)
    assert intervals == sorted(intervals) and intervals[-1] == 86400 and intervals[0] == 3600

    hinted = ok(T0, new_entries=10, entries_in_feed=10, entry_dates=hourly(T0), feed_hint_s=6 * 3600)
    s = next_schedule(URL, FeedSchedule(), hinted, POLICY, rng=rng).schedule
    assert s.poll_interval_s == 6 * 3600 and s.hint_interval_s == 6 * 3600
    # a 304 carries no document: the feed's hint is kept
    s = next_schedule(URL, s, ok(s.next_due_at, changed=False, status=304), POLICY, rng=rng).schedule
    assert s.poll_interval_s >= 6 * 3600
    # a hint beyond the ceiling is capped by it
    s = next_schedule(URL, FeedSchedule(), ok(T0, header_hint_s=30 * 86400), POLICY, rng=rng).schedule
    assert s.poll_interval_s == 86400


def test_per_feed_overrides():
    rng = random.Random(3)
    obs = ok(T0, new_entries=10, entries_in_feed=10, entry_dates=hourly(T0))
    fixed = next_schedule(URL, FeedSchedule(), obs, POLICY, FeedOverride(interval_s=900), rng).schedule
    assert fixed.poll_interval_s == 900
    capped = next_schedule(URL, FeedSchedule(), obs, POLICY, FeedOverride(max_interval_s=1200), rng).schedule
    assert capped.poll_interval_s == 1200
    floored = next_schedule(URL, FeedSchedule(), obs, POLICY, FeedOverride(min_interval_s=7200), rng).schedule
    assert floored.poll_interval_s == 7200
    # overrides do not stop backoff: a failing feed still waits
    down = next_schedule(URL, fixed, failed(T0), POLICY, FeedOverride(interval_s=900), rng).schedule
    assert down.state == BACKOFF


def test_every_entry_new_means_we_may_have_missed_some():
    rng = random.Random(4)
    first = next_schedule(
        URL, FeedSchedule(), ok(T0, new_entries=5, entries_in_feed=5), POLICY, rng=rng
    ).schedule
    assert first.poll_interval_s == 3600
    at = T0 + timedelta(hours=1)
    # 20 entries in the document, all 20 new since the last poll: come back sooner
    overflow = next_schedule(URL, first, ok(at, new_entries=20, entries_in_feed=20), POLICY, rng=rng).schedule
    assert overflow.poll_interval_s <= 1800


def test_backoff_is_exponential_jittered_and_capped():
    rng = random.Random(5)
    delays = [backoff_delay(n, POLICY, rng).total_seconds() for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        step = min(600 * 2 ** (n - 1), 43200)
        assert 0.75 * step <= d <= step
    assert len({round(d) for d in delays[-3:]}) == 3  # jitter: capped delays still differ


def test_failures_back_off_then_the_feed_dies_and_is_revived():
    rng = random.Random(6)
    policy = SchedulePolicy(dead_after_failures=4)
    s = next_schedule(URL, FeedSchedule(), ok(T0, new_entries=3, entries_in_feed=3), policy, rng=rng).schedule
    events = []
    at = s.next_due_at
    for _ in range(3):
        u = next_schedule(URL, s, failed(at), policy, rng=rng)
        s, at = u.schedule, u.schedule.next_due_at
        events += [e.event for e in u.events]
        assert s.state == BACKOFF
    assert events == ["backoff"] and s.consecutive_failures == 3
    u = next_schedule(URL, s, failed(at, "dns", None), policy, rng=rng)
    s = u.schedule
    assert s.state == DEAD and [e.event for e in u.events] == ["dead"]
    assert timedelta(days=2.8) <= s.next_due_at - at <= timedelta(days=3.2)  # re-probed rarely
    # still failing when probed: stays dead, no new event
    u = next_schedule(URL, s, failed(s.next_due_at), policy, rng=rng)
    assert u.schedule.state == DEAD and u.events == ()
    # answers again: revived, streak forgotten, normal interval
    u = next_schedule(
        URL, u.schedule, ok(u.schedule.next_due_at, new_entries=1, entries_in_feed=5), policy, rng=rng
    )
    assert u.schedule.state == ACTIVE and [e.event for e in u.events] == ["revived"]
    assert u.schedule.consecutive_failures == 0 and u.schedule.first_failure_at is None


def test_a_feed_failing_long_enough_dies_whatever_the_count():
    rng = random.Random(7)
    s = FeedSchedule(state=BACKOFF, consecutive_failures=2, first_failure_at=T0 - timedelta(days=8))
    assert next_schedule(URL, s, failed(T0), POLICY, rng=rng).schedule.state == DEAD


def test_gone_retires_and_permanent_redirects_move():
    rng = random.Random(8)
    u = next_schedule(URL, FeedSchedule(), failed(T0, "gone", 410), POLICY, rng=rng)
    assert u.schedule.state == RETIRED and u.schedule.next_due_at is None
    assert [e.event for e in u.events] == ["retired"]

    new = "https://127.0.0.3/new-feed.xml"
    u = next_schedule(URL, FeedSchedule(), ok(T0, status=200, moved_to=new), POLICY, rng=rng)
    assert u.schedule.fetch_url == new and [e.event for e in u.events] == ["moved"]
    assert URL in u.events[0].detail and new in u.events[0].detail
    # moving again, then back home
    again = next_schedule(URL, u.schedule, ok(T0, moved_to=URL), POLICY, rng=rng)
    assert again.schedule.fetch_url is None and [e.event for e in again.events] == ["moved"]


def test_a_feed_not_requested_because_its_host_asked_for_a_pause_is_not_failing():
    rng = random.Random(9)
    s = next_schedule(URL, FeedSchedule(), ok(T0, new_entries=3, entries_in_feed=3), POLICY, rng=rng).schedule
    at = s.next_due_at
    u = next_schedule(URL, s, failed(at, "host_postponed", None), POLICY, rng=rng)
    assert u.events == () and u.schedule.state == ACTIVE and u.schedule.consecutive_failures == 0
    assert u.schedule.next_due_at == at + POLICY.min_interval


def test_hints_from_documents_and_headers():
    assert feed_hint_seconds("60", None, None) == 3600
    assert feed_hint_seconds(None, "hourly", "2") == 1800
    assert feed_hint_seconds(None, "daily", None) == 86400
    assert feed_hint_seconds("junk", "fortnightly", "x") is None
    assert header_hint_seconds({"Cache-Control": "public, max-age=1800"}, T0) == 1800
    assert header_hint_seconds({"Cache-Control": "no-cache, max-age=1800"}, T0) is None
    expires = format_datetime(T0 + timedelta(hours=2), usegmt=True)
    assert header_hint_seconds({"Expires": expires}, T0) == 7200
    assert header_hint_seconds({"Expires": "0"}, T0) is None
    assert rate_from_dates([T0, T0], T0) is None  # one instant is not a rate


def test_durations_and_overrides_in_feeds_toml(tmp_path):
    assert [parse_duration(v) for v in (900, "90s", "15m", "2h", "1d", "1.5h")] == [
        900,
        90,
        900,
        7200,
        86400,
        5400,
    ]
    for bad in ("soon", -5, 0, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    path = tmp_path / "feeds.toml"
    path.write_text(
        '[[feeds]]\nurl = "http://a/"\ninterval = "30m"\n\n[[feeds]]\nurl = "http://b/"\nmax_interval = "2h"\n'
    )
    a, b = load_feed_list(path)
    assert a.override == FeedOverride(interval_s=1800) and b.override == FeedOverride(max_interval_s=7200)
    path.write_text('[[feeds]]\nurl = "http://a/"\ninterval = "often"\n')
    with pytest.raises(ValueError, match=r"feeds\[0\]\.interval"):
        load_feed_list(path)


def test_due_feeds_choose_new_and_due_never_retired():
    specs = [
        FeedSpec(u) for u in ("http://new/", "http://due/", "http://later/", "http://gone/", "http://dead/")
    ]
    stored = {
        "http://due/": {"state": ACTIVE, "next_due_at": T0 - timedelta(seconds=1)},
        "http://later/": {"state": ACTIVE, "next_due_at": T0 + timedelta(minutes=5)},
        "http://gone/": {"state": RETIRED, "next_due_at": None},
        "http://dead/": {"state": DEAD, "next_due_at": T0 + timedelta(days=2)},
    }
    assert [s.url for s in due_feeds(specs, stored, T0).due] == ["http://new/", "http://due/"]
    every = due_feeds(specs, stored, T0, poll_all=True)
    assert [s.url for s in every.due] == ["http://new/", "http://due/", "http://later/", "http://dead/"]
    assert every.listed == 5


# --------------------------------------------------------------------------- the poll flow


def dated_rss(title: str, n: int, spacing: timedelta, newest: datetime, extra: str = "") -> bytes:
    """A feed of ``n`` entries without links (nothing to fetch), ``spacing`` apart."""
    items = "".join(
        f'<item><title>{escape(title)} {i}</title><guid isPermaLink="false">{escape(title)}-{i}</guid>'
        f"<pubDate>{format_datetime(newest - spacing * i, usegmt=True)}</pubDate></item>"
        for i in range(n)
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{escape(title)}</title>'
        f"<link>http://example.invalid/</link><description>d</description>{extra}{items}</channel></rss>"
    ).encode()


def _rows(data_dir: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _feed(data_dir: Path, url: str) -> dict:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM feeds WHERE feed_url = ?", [url])
        return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    finally:
        con.close()


def _total_hits(*sites) -> int:
    return sum(sum(s.hits.values()) for s in sites)


def test_poll_fetches_only_due_feeds_backs_off_moves_retires_and_revives(
    prefect_api, newsflow_env, monkeypatch, tmp_path, site_factory
):
    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_FEED_DEAD_AFTER_FAILURES", "3")
    monkeypatch.setenv("NEWSFLOW_RETRIES", "0")  # one request per poll, so the hits count polls
    a, b = site_factory("127.0.0.2"), site_factory("127.0.0.3")
    a.routes["/busy.xml"] = Route(body=dated_rss("busy", 10, timedelta(hours=1), T0), content_type=RSS)
    a.routes["/weekly.xml"] = Route(body=dated_rss("weekly", 4, timedelta(days=7), T0), content_type=RSS)
    a.routes["/ttl.xml"] = Route(
        body=dated_rss("ttl", 10, timedelta(hours=1), T0, extra="<ttl>720</ttl>"), content_type=RSS
    )
    b.routes["/failing.xml"] = Route(body=b"down", status=500)
    b.routes["/old.xml"] = Route(status=301, headers={"Location": b.url("/new.xml")})
    b.routes["/new.xml"] = Route(body=dated_rss("moved", 10, timedelta(hours=1), T0), content_type=RSS)
    b.routes["/gone.xml"] = Route(body=b"gone", status=410)
    urls = {name: site.url(f"/{name}.xml") for site, name in (
        (a, "busy"), (a, "weekly"), (a, "ttl"), (b, "failing"), (b, "old"), (b, "gone"),
    )}  # fmt: skip
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text("".join(f'[[feeds]]\nurl = "{u}"\nname = "{n}"\n\n' for n, u in urls.items()))

    def poll(at: datetime, **kw) -> dict:
        return poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=at, **kw)

    # T0: every feed is new, hence due
    first = poll(T0)
    assert (first["feeds_listed"], first["feeds_due"], first["feeds_polled"]) == (6, 6, 6)
    assert first["feeds_failed"] == 2 and first["feeds_backed_off"] == 1 and first["feeds_retired"] == 1
    data = newsflow_env
    assert _feed(data, urls["busy"])["poll_interval_s"] == 3600
    assert _feed(data, urls["weekly"])["poll_interval_s"] == 86400
    assert _feed(data, urls["ttl"])["poll_interval_s"] == 43200  # <ttl>720</ttl>: no more often
    failing = _feed(data, urls["failing"])
    assert failing["state"] == BACKOFF and failing["last_error_class"] == "http_5xx"
    assert timedelta(minutes=7.5) <= failing["next_due_at"] - T0 <= timedelta(minutes=10)
    moved = _feed(data, urls["old"])
    assert moved["fetch_url"] == b.url("/new.xml") and moved["state"] == ACTIVE
    assert _feed(data, urls["gone"])["state"] == RETIRED
    # the run's health artifact: one row per listed feed, failing ones first
    health = json.loads(latest_artifact("feed-health").data)
    assert len(health) == 6 and {r["state"] for r in health[:2]} == {BACKOFF, RETIRED}
    assert {r["feed_url"]: r["poll_interval_s"] for r in health}[urls["busy"]] == 3600
    events = _rows(data, "SELECT feed_url, event FROM feed_events ORDER BY event")
    assert sorted(events) == sorted(
        [(urls["failing"], "backoff"), (urls["old"], "moved"), (urls["gone"], "retired")]
    )

    # T0 + 2 min: nothing is due; not one request
    before = _total_hits(a, b)
    quiet = poll(T0 + timedelta(minutes=2))
    assert quiet["feeds_due"] == 0 and quiet["feeds_polled"] == 0 and _total_hits(a, b) == before

    # T0 + 11 min: only the failing feed, second failure, longer wait
    again = poll(T0 + timedelta(minutes=11))
    assert again["feeds_due"] == 1 and b.hits["/failing.xml"] == 2 and _total_hits(a, b) == before + 1
    failing = _feed(data, urls["failing"])
    assert failing["consecutive_failures"] == 2
    assert (
        timedelta(minutes=15)
        <= failing["next_due_at"] - (T0 + timedelta(minutes=11))
        <= timedelta(minutes=20)
    )

    # T0 + 70 min: busy and moved are due (and failing); the moved feed is fetched where it lives now,
    # busy answers 304: no fetch_log row, no parsing, only its state
    log_before = _rows(data, "SELECT count(*) FROM fetch_log WHERE url = ?", [urls["busy"]])[0][0]
    later = poll(T0 + timedelta(minutes=70))
    assert later["feeds_due"] == 3 and later["feeds_not_modified"] == 2
    assert b.hits["/old.xml"] == 1 and b.hits["/new.xml"] == 2
    assert a.hits["/weekly.xml"] == 1 and a.hits["/ttl.xml"] == 1
    assert _rows(data, "SELECT count(*) FROM fetch_log WHERE url = ?", [urls["busy"]])[0][0] == log_before
    assert _feed(data, urls["busy"])["last_status"] == 304

    # third failure: dead (NEWSFLOW_FEED_DEAD_AFTER_FAILURES=3), re-probed in days, not minutes
    dead = _feed(data, urls["failing"])
    assert dead["state"] == DEAD and dead["next_due_at"] - (T0 + timedelta(minutes=70)) > timedelta(days=2)
    # --all polls the dead feed, never the retired one
    b.routes["/failing.xml"] = Route(body=dated_rss("back", 3, timedelta(hours=2), T0), content_type=RSS)
    revived = poll(T0 + timedelta(minutes=80), all_feeds=True)
    assert b.hits["/gone.xml"] == 1 and revived["feeds_due"] == 5
    back = _feed(data, urls["failing"])
    assert back["state"] == ACTIVE and back["consecutive_failures"] == 0
    assert ("revived",) in _rows(data, "SELECT event FROM feed_events WHERE feed_url = ?", [urls["failing"]])
    runs = _rows(
        data, "SELECT feeds_listed, feeds_due, feeds_dead, feeds_retired FROM runs ORDER BY started_at"
    )
    assert runs[0] == (6, 6, 0, 1) and runs[1][1] == 0


def test_feeds_on_one_host_share_its_budget(prefect_api, newsflow_env, monkeypatch, tmp_path, site_factory):
    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_HOST_MIN_DELAY", "0.05")
    host, other = site_factory("127.0.0.4"), site_factory("127.0.0.5")
    urls = []
    for i in range(30):
        for site in (host, other):
            site.routes[f"/f{i}.xml"] = Route(
                body=dated_rss(f"f{i}", 2, timedelta(hours=1), T0), content_type=RSS
            )
            urls.append(site.url(f"/f{i}.xml"))
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text("".join(f'[[feeds]]\nurl = "{u}"\n\n' for u in urls))
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0)
    for site in (host, other):
        times = sorted(t for t, _ in site.request_times)
        assert len(times) == 30
        # Request starts are spaced by the host's minimum delay: 30 requests take 29 delays, and no
        # one-second window holds more than 1/0.05 + 1 (the server sees arrivals, with some jitter).
        assert times[-1] - times[0] >= 29 * 0.05 * 0.95
        assert max(sum(1 for t in times if start <= t < start + 1) for start in times) <= 21
    # ... and the two hosts were served side by side, not one after the other
    assert abs(host.request_times[0][0] - other.request_times[0][0]) < 0.5


def test_feeds_status_and_revive_commands(prefect_api, newsflow_env, tmp_path, site_factory):
    from flows.poll import poll_flow

    site = site_factory("127.0.0.6")
    site.routes["/ok.xml"] = Route(body=dated_rss("fine", 10, timedelta(hours=1), T0), content_type=RSS)
    site.routes["/gone.xml"] = Route(body=b"", status=410)
    site.routes["/down.xml"] = Route(body=b"", status=503)
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(
        "".join(
            f'[[feeds]]\nurl = "{site.url(p)}"\nname = "{p}"\n\n'
            for p in ("/ok.xml", "/gone.xml", "/down.xml")
        )
    )
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0)
    env = subprocess_env(prefect_api, newsflow_env)

    def feeds(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "newsflow.cli", "feeds", *args, "--data-dir", str(newsflow_env)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = feeds("status", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {r["feed_url"]: r for r in json.loads(done.stdout)}
    assert (
        rows[site.url("/ok.xml")]["state"] == "active" and rows[site.url("/ok.xml")]["mean_new_per_day"] == 10
    )
    assert rows[site.url("/gone.xml")]["state"] == "retired"
    down = rows[site.url("/down.xml")]
    assert down["state"] == "backoff" and down["failures"] == 1 and down["last_error_class"] == "http_5xx"
    assert down["next_due_at"] and down["last_success_at"] is None
    assert list(rows)[0] != site.url("/ok.xml")  # sorted by state: the failing ones first

    failing = json.loads(feeds("status", "--failing", "--format", "json").stdout)
    assert {r["feed_url"] for r in failing} == {site.url("/gone.xml"), site.url("/down.xml")}
    table = feeds("status", "--sort", "next-due")
    assert table.returncode == 0 and "backoff" in table.stdout and "retired" in table.stdout

    revived = feeds("revive", site.url("/gone.xml"))
    assert revived.returncode == 0, revived.stderr
    assert _feed(newsflow_env, site.url("/gone.xml"))["state"] == "active"
    assert feeds("revive", "http://nowhere.invalid/feed").returncode == 1
    site.routes["/gone.xml"] = Route(body=dated_rss("again", 2, timedelta(hours=1), T0), content_type=RSS)
    # `feeds revive` makes the feed due at the wall clock's now, which may be later than T0: the
    # next poll comes after both.
    after_revive = max(T0, datetime.now(UTC)) + timedelta(minutes=1)
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=after_revive)
    assert site.hits["/gone.xml"] == 2 and _feed(newsflow_env, site.url("/gone.xml"))["state"] == ACTIVE


def test_a_feed_on_a_host_postponed_by_an_earlier_run_is_not_requested(
    prefect_api, newsflow_env, monkeypatch, tmp_path, site_factory
):
    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_RETRIES", "0")
    site = site_factory("127.0.0.7")
    site.routes["/f.xml"] = Route(body=b"slow down", status=429, headers={"Retry-After": "3600"})
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(f'[[feeds]]\nurl = "{site.url("/f.xml")}"\n')
    poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0)
    assert site.hits["/f.xml"] == 1
    assert _feed(newsflow_env, site.url("/f.xml"))["consecutive_failures"] == 1

    # The next run (a new process would do the same: the pause is in host_state) sends nothing.
    site.routes["/f.xml"] = Route(body=dated_rss("back", 3, timedelta(hours=1), T0), content_type=RSS)
    poll_flow(
        feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0 + timedelta(days=1), all_feeds=True
    )
    assert site.hits["/f.xml"] == 1
    feed = _feed(newsflow_env, site.url("/f.xml"))
    assert feed["last_error_class"] == "host_postponed" and feed["consecutive_failures"] == 1


def test_a_page_that_failed_for_a_transient_reason_is_retried_though_the_feed_did_not_change(
    prefect_api, newsflow_env, monkeypatch, tmp_path, site_factory
):
    from builders import make_story, page_route, rss_feed

    from flows.poll import poll_flow

    monkeypatch.setenv("NEWSFLOW_RETRIES", "0")
    site = site_factory("127.0.0.8")
    ok_story, flaky = make_story(1, seed=21), make_story(2, seed=21)
    site.routes["/a/ok.html"] = page_route(ok_story)
    site.routes["/a/flaky.html"] = Route(body=b"try later", status=503)
    items = [(ok_story, site.url("/a/ok.html"), "ok"), (flaky, site.url("/a/flaky.html"), "flaky")]
    site.routes["/rss.xml"] = Route(body=rss_feed(items), content_type=RSS)  # ETag: a 304 next time
    feeds_file = tmp_path / "feeds.toml"
    feeds_file.write_text(f'[[feeds]]\nurl = "{site.url("/rss.xml")}"\n')

    first = poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0)
    assert first["articles_extracted"] == 1 and first["pages_failed"] == 1
    site.routes["/a/flaky.html"] = page_route(flaky)
    second = poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0, all_feeds=True)
    # the feed's bytes did not change, yet it was read again for the entry still waiting
    assert (
        second["feeds_polled"] == 1 and second["feeds_not_modified"] == 0 and site.hits["/a/flaky.html"] == 2
    )
    assert second["articles_extracted"] == 1 and site.hits["/a/ok.html"] == 1
    third = poll_flow(feeds_file=str(feeds_file), data_dir=str(newsflow_env), now=T0, all_feeds=True)
    assert third["feeds_not_modified"] == 1 and third["pages_fetched"] == 0  # nothing waits any more


def test_a_request_goes_out_no_sooner_than_the_spacing_after_the_last_one_really_did():
    """The wire-level check (tasks/fetch.PacedStream): a request that lost time between its booked
    start and its write does not shorten the gap to the next one."""
    from tasks.robots import PolitenessState

    now = [100.0]
    state = PolitenessState(clock=lambda: now[0])
    assert state.try_send("h:80", 1.0) == 0.0  # first request: at once
    now[0] = 100.4
    assert state.try_send("h:80", 1.0) == pytest.approx(0.6)  # not yet: 0.6 s to go
    assert state.try_send("other:80", 1.0) == 0.0  # other hosts are not held up
    now[0] = 101.3  # the waiting request's event loop was late: it goes at 101.3 ...
    assert state.try_send("h:80", 1.0) == 0.0
    now[0] = 102.0  # ... so the next one, booked for 102.0, waits until 102.3
    assert state.try_send("h:80", 1.0) == pytest.approx(0.3)
    now[0] = 102.3
    assert state.try_send("h:80", 1.0) == 0.0
    now[0] = 102.45  # its write came late (a busy event loop): the spacing counts from the write
    state.sent("h:80")
    now[0] = 103.3
    assert state.try_send("h:80", 1.0) == pytest.approx(0.15)
    state.set_crawl_delay("h:80", 5.0, 1.0)  # a Crawl-delay longer than the default spacing
    now[0] = 103.45
    assert state.try_send("h:80", 1.0) == pytest.approx(4.0)
