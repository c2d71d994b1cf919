"""Non-http schemes anywhere: feed URLs, redirects, entry links, enclosures.

Only http and https are ever requested. A feed URL or a redirect with another scheme is a
``bad_scheme`` row of fetch_log; an entry whose link is not http(s) is stored as an entry without
a page (``no_link``) and never fetched. The stand-ins: a TCP listener where the ftp:// and
gopher:// URLs point (its accepted connections must stay 0), a local file whose content must not
appear anywhere in the warehouse, and a page linked only from inside a ``data:`` feed (never
requested: the data: feed is never read).
"""

from __future__ import annotations

import base64
import json

import pytest
from builders import RSS, make_story, page_route, rss_feed
from hostile_kit import ConnectionCounter, child_fetch, fetch_log, measured, poll_once, query

from newsflow.loopback import Route
from tasks.fetch import FetchRequest, fetch_all

KB = 1024
SECRET = "TOP-SECRET-LOCAL-FILE-CONTENT"


@pytest.fixture(scope="module")
def counter():
    with ConnectionCounter("127.0.0.3") as c:
        yield c


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.xml"
    path.write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{SECRET}</title>'
        f"<item><title>{SECRET}</title><link>https://s.example/1</link></item></channel></rss>"
    )
    return path


def other_scheme_urls(counter: ConnectionCounter, secret_path) -> dict[str, str]:
    where = f"{counter.host}:{counter.port}"
    return {
        "file": f"file://{secret_path}",
        "file-upper": f"FILE://{secret_path}",
        "file-no-slashes": f"file:{secret_path}",
        "ftp": f"ftp://{where}/feed.xml",
        "gopher": f"gopher://{where}/_GET%20/feed.xml",
        "ws": f"ws://{where}/feed",
        "data": "data:application/rss+xml;base64," + base64.b64encode(secret_path.read_bytes()).decode(),
        "javascript": "javascript:fetch('http://127.0.0.3/')",
        "mailto": "mailto:editor@news.example",
        "view-source": f"view-source:http://{where}/",
        "jar": f"jar:file://{secret_path}!/feed.xml",
    }


def test_a_first_url_with_another_scheme_is_never_requested(counter, secret_file, settings):
    urls = other_scheme_urls(counter, secret_file)
    before = counter.accepted
    results = fetch_all([FetchRequest(u, 64 * KB) for u in urls.values()], settings)
    classes = {name: r.error_class for name, r in zip(urls, results, strict=True)}
    assert {n: c for n, c in classes.items() if c not in ("bad_scheme", "bad_url")} == {}
    assert classes["file"] == classes["ftp"] == classes["data"] == "bad_scheme"
    assert all(r.body is None and r.status is None for r in results)
    assert counter.accepted == before


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_scheme_is_refused_at_the_hop(site, counter, secret_file, settings, status):
    urls = other_scheme_urls(counter, secret_file)
    urls["leading-space"] = f"  file://{secret_file}"
    urls["tab"] = f"\tftp://{counter.host}:{counter.port}/"
    for name, location in urls.items():
        site.routes[f"/go/{name}"] = Route(status=status, headers={"Location": location}, conditional=False)
    before = counter.accepted
    results = fetch_all([FetchRequest(site.url(f"/go/{n}"), 64 * KB) for n in urls], settings)
    classes = {name: r.error_class for name, r in zip(urls, results, strict=True)}
    assert {n: c for n, c in classes.items() if c not in ("bad_scheme", "bad_url")} == {}
    assert classes["file"] == classes["gopher"] == classes["ftp"] == "bad_scheme", classes
    assert all(r.body is None and r.attempts == 1 for r in results)
    assert all(site.hits[f"/go/{n}"] == 1 for n in urls)
    assert counter.accepted == before


def test_control_the_counter_counts(counter):
    """The stand-in is listening where the URLs point: a plain connection is counted."""
    import socket
    import time

    before = counter.accepted
    socket.create_connection((counter.host, counter.port), timeout=2).close()
    deadline = time.monotonic() + 2
    while counter.accepted == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.accepted == before + 1


def test_poll_with_other_schemes_in_feeds_links_and_redirects(
    prefect_api, newsflow_env, tmp_path, site, counter, secret_file
):
    """The run completes; feeds are ``bad_scheme`` rows; entries linking elsewhere are kept
    without a page and never fetched; the good article is stored; the local file is not read."""
    urls = other_scheme_urls(counter, secret_file)
    good = make_story(1, seed=62)
    site.routes["/good.html"] = page_route(good)
    site.routes["/data-secret.html"] = page_route(make_story(2, seed=62))  # linked only from data:
    data_feed = rss_feed([(make_story(2, seed=62), site.url("/data-secret.html"), "d1")])
    urls["data"] = "data:application/rss+xml;base64," + base64.b64encode(data_feed).decode()
    bad_links = {n: urls[n] for n in ("file", "ftp", "gopher", "data", "javascript", "mailto")}
    items = [(good, site.url("/good.html"), "good")]
    items += [
        (make_story(10 + i, seed=62), link, f"bad-{n}") for i, (n, link) in enumerate(bad_links.items())
    ]
    site.routes["/rss.xml"] = Route(body=rss_feed(items), content_type=RSS)
    site.routes["/feed.json"] = Route(
        body=json.dumps(
            {
                "version": "https://jsonfeed.org/version/1.1",
                "title": "json",
                "items": [
                    {
                        "id": "j1",
                        "url": urls["file"],
                        "title": "a file link",
                        "attachments": [{"url": urls["ftp"], "mime_type": "audio/mpeg"}],
                    }
                ],
            }
        ).encode(),
        content_type="application/feed+json",
    )
    site.routes["/to-file"] = Route(status=301, headers={"Location": urls["file"]}, conditional=False)
    feeds = [
        site.url("/rss.xml"),
        site.url("/feed.json"),
        site.url("/to-file"),
        urls["file"],
        urls["ftp"],
        urls["gopher"],
        urls["data"],
    ]
    before = counter.accepted

    result = poll_once(tmp_path, feeds, newsflow_env)

    logged = fetch_log(newsflow_env)
    for url in feeds[2:]:
        assert logged[url][:2] == ("feed", "bad_scheme"), url
    assert logged[site.url("/rss.xml")][1] is None and logged[site.url("/feed.json")][1] is None
    assert result["feeds_failed"] == len(feeds) - 2
    assert not [u for u, (kind, _, _) in logged.items() if kind == "page" and not u.startswith("http")]
    assert [u for u, (kind, _, _) in logged.items() if kind == "page"] == [site.url("/good.html")]
    statuses = dict(query(newsflow_env, "SELECT guid, status FROM entries"))
    assert statuses["good"] == "fetched"
    assert {statuses[f"bad-{n}"] for n in bad_links} == {"no_link"}
    assert statuses["j1"] == "no_link"
    assert query(newsflow_env, "SELECT url FROM articles") == [(site.url("/good.html"),)]
    assert site.hits["/data-secret.html"] == 0
    assert counter.accepted == before
    everything = query(
        newsflow_env,
        "SELECT string_agg(coalesce(title, '') || coalesce(summary, ''), ' ') FROM entries",
    )[0][0] + str(query(newsflow_env, "SELECT * FROM articles"))
    assert SECRET not in everything


def test_refusals_in_a_child_process_stay_small(site, counter, secret_file):
    urls = other_scheme_urls(counter, secret_file)
    for name, location in urls.items():
        site.routes[f"/go/{name}"] = Route(status=302, headers={"Location": location}, conditional=False)
    requests = [*urls.values(), *(site.url(f"/go/{n}") for n in urls)]
    before = counter.accepted  # the module's counter (the control test connects to it once)
    report = child_fetch(
        [{"url": u, "max_bytes": 64 * KB} for u in requests],
        {"allow_private_networks": True, "host_min_delay": 0, "request_deadline": 5},
    )
    assert {r["error_class"] for r in report.result} <= {"bad_scheme", "bad_url"}
    assert counter.accepted == before
    measured("schemes", f"{len(requests)} other-scheme URLs and redirects", peak_mb=report.peak_growth_mb,
             seconds=report.elapsed_s, forbidden_hits=counter.accepted - before)  # fmt: skip
    assert report.peak_growth_mb < 32, report
