"""SSRF: feed URLs, entry links, redirects and ``<link rel=canonical>`` pointing at forbidden
addresses (loopback, private, link-local metadata, CGNAT, unique-local, NAT64, IPv4-mapped, 6to4),
in every spelling, and names that resolve there (DNS rebinding included).

The attacker's site is "public" (``news.test`` resolves to a global address the virtual network
carries to a loopback server); every forbidden address is carried to one other loopback server,
the stand-in, whose hits must stay 0. Private networks are disallowed, as in production; the
fetcher's address check runs unchanged (see hostile_kit.VirtualNet). Control cases show that the
same requests do reach the stand-in when private networks are allowed, so a zero is not vacuous.
"""

from __future__ import annotations

import pytest
from builders import RSS, article_page, make_story, page_route, rss_feed
from hostile_kit import (
    FORBIDDEN_ADDRESSES,
    PUBLIC_IP,
    PUBLIC_IP_2,
    VirtualNet,
    child_fetch,
    fetch_log,
    measured,
    poll_once,
    query,
    url_host,
)

from newsflow.loopback import LoopbackSite, Route
from tasks.fetch import FetchRequest, fetch_all

KB = 1024

# Every way of writing a forbidden destination in a URL: literal addresses of each kind, the
# odd spellings C libraries accept for loopback and the metadata address, and names.
LITERALS = {kind: f"http://{url_host(address)}/secret" for kind, address in FORBIDDEN_ADDRESSES.items()}
SPELLINGS = {
    "hex-loopback": "http://0x7f.0.0.1/secret",
    "decimal-loopback": "http://2130706433/secret",
    "octal-loopback": "http://0177.0.0.1/secret",
    "short-loopback": "http://127.1/secret",
    "mapped-loopback-hex": "http://[::ffff:7f00:1]/secret",
    "mapped-loopback-long": "http://[0:0:0:0:0:ffff:127.0.0.1]/secret",
    "hex-metadata": "http://0xa9.0xfe.0xa9.0xfe/secret",
    "decimal-metadata": "http://2852039166/secret",
    "unspecified": "http://0.0.0.0/secret",
    "localhost": "http://localhost/secret",
    "localhost-dot-upper": "http://LOCALHOST./secret",
    "userinfo-trick": "http://news.test@127.0.0.1/secret",
}
NAMES = {f"name-{kind}": f"http://{kind}.evil.test/secret" for kind in FORBIDDEN_ADDRESSES}
NAMES["name-mixed-public-and-private"] = "http://mixed.evil.test/secret"
FORBIDDEN_URLS = {**LITERALS, **SPELLINGS, **NAMES}
# httpx refuses a few spellings as invalid before any lookup (a leading-zero octal octet)
REFUSED = {"blocked_address", "bad_url"}


@pytest.fixture(scope="module")
def servers():
    """The attacker's public site (127.0.0.2) and the stand-in for every forbidden address (127.0.0.3)."""
    with LoopbackSite("127.0.0.2") as hostile, LoopbackSite("127.0.0.3") as forbidden:
        yield hostile, forbidden


def attacker_net(hostile: LoopbackSite, forbidden: LoopbackSite) -> VirtualNet:
    """news.test is public and reaches the attacker's site; every forbidden address, and a name
    for each, reaches the stand-in."""
    net = VirtualNet()
    net.name("news.test", PUBLIC_IP)
    net.route(PUBLIC_IP, hostile)
    for kind, address in FORBIDDEN_ADDRESSES.items():
        net.name(f"{kind}.evil.test", address)
        net.route(address, forbidden)
    net.name("mixed.evil.test", [PUBLIC_IP, FORBIDDEN_ADDRESSES["private-10"]])
    net.name("localhost", ["127.0.0.1", "::1"])
    net.route("0.0.0.0", forbidden)
    return net


@pytest.fixture
def net(servers, monkeypatch) -> VirtualNet:
    hostile, forbidden = servers
    for s in servers:
        with s.lock:
            s.routes.clear()
            s.hits.clear()
            s.requests.clear()
    forbidden.routes["/secret"] = Route(body=b"instance credentials: AKIA-SECRET")
    net = attacker_net(hostile, forbidden)
    net.install(monkeypatch)
    return net


@pytest.fixture
def public_only(settings):
    return settings.model_copy(update={"allow_private_networks": False, "retries": 1})


def forbidden_reached(net: VirtualNet, forbidden: LoopbackSite) -> tuple[int, int]:
    """(HTTP requests the stand-in saw, TCP connections made to any forbidden address)."""
    connections = sum(net.reached(a) for a in [*FORBIDDEN_ADDRESSES.values(), "0.0.0.0"])
    return sum(forbidden.hits.values()), connections


# --------------------------------------------------------------------------- first URL


@pytest.mark.parametrize("url", FORBIDDEN_URLS.values(), ids=FORBIDDEN_URLS.keys())
def test_a_forbidden_first_url_is_refused_before_any_connection(net, servers, public_only, url):
    (r,) = fetch_all([FetchRequest(url, 64 * KB)], public_only)
    assert r.error_class in REFUSED, (r.error_class, r.error_message)
    assert r.body is None and r.attempts == 1  # refused, not retried
    assert forbidden_reached(net, servers[1]) == (0, 0)


def test_control_the_same_urls_reach_the_stand_in_when_private_networks_are_allowed(net, servers, settings):
    """The zero above is not an accident of the set-up: allowed, each request lands on the stand-in."""
    # (not the octal spelling httpx refuses, nor 0.0.0.0, never allowed, nor the mixed answer,
    # whose public address is chosen)
    skip = ("octal-loopback", "unspecified", "name-mixed-public-and-private")
    urls = [u for k, u in FORBIDDEN_URLS.items() if k not in skip]
    results = fetch_all([FetchRequest(u, 64 * KB) for u in urls], settings.model_copy(update={"retries": 0}))
    assert [r.body for r in results] == [b"instance credentials: AKIA-SECRET"] * len(urls)
    assert servers[1].hits["/secret"] == len(urls)


# --------------------------------------------------------------------------- redirects


def redirect_to(location_of: dict[str, str], status: int = 302):
    """A handler redirecting ``/go/<case>`` to that case's location."""

    def handle(h):
        target = location_of[h.path.rsplit("/", 1)[-1]]
        h.send_response(status)
        h.send_header("Location", target)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handle


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_to_a_forbidden_address_is_refused_at_the_hop(net, servers, public_only, status):
    hostile, forbidden = servers
    cases = {**FORBIDDEN_URLS, "protocol-relative": "//169.254.169.254/secret"}
    for case in cases:
        hostile.routes[f"/go/{case}"] = Route(handler=redirect_to(cases, status))
    results = fetch_all([FetchRequest(f"http://news.test/go/{c}", 64 * KB) for c in cases], public_only)
    outcome = {c: r.error_class for c, r in zip(cases, results, strict=True)}
    assert {c: k for c, k in outcome.items() if k not in REFUSED} == {}
    assert all(r.body is None and r.status is None for r in results)
    assert sum(hostile.hits.values()) == len(cases)  # the first hop was fetched, each once
    assert forbidden_reached(net, forbidden) == (0, 0)


def test_a_chain_through_two_public_hosts_is_checked_at_its_last_hop(net, servers, public_only):
    hostile, forbidden = servers
    net.name("other.test", PUBLIC_IP_2)
    net.route(PUBLIC_IP_2, hostile)
    hostile.routes["/one"] = Route(
        status=301, headers={"Location": "http://other.test/two"}, conditional=False
    )
    hostile.routes["/two"] = Route(
        status=302, headers={"Location": "http://2852039166/secret"}, conditional=False
    )
    (r,) = fetch_all([FetchRequest("http://news.test/one", 64 * KB)], public_only)
    assert r.error_class == "blocked_address"
    assert "169.254.169.254" in r.error_message
    assert hostile.hits["/one"] == 1 and hostile.hits["/two"] == 1
    assert forbidden_reached(net, forbidden) == (0, 0)


# --------------------------------------------------------------------------- DNS rebinding


def test_dns_rebinding_the_connection_goes_to_the_checked_address(net, servers, public_only):
    """``rebind.test`` answers a public address to the first lookup and a private one to every
    later lookup. One lookup per connection, and the connection goes to the address that lookup
    gave and the check passed: never to the private one. The next connection (a redirect to the
    same host after ``Connection: close``) looks up again, gets the private answer and is refused."""
    hostile, forbidden = servers
    net.name("rebind.test", PUBLIC_IP, FORBIDDEN_ADDRESSES["link-local-metadata"])

    def first_page(h):
        h.send_response(302)
        h.send_header("Location", "/secret")
        h.send_header("Content-Length", "0")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True

    hostile.routes["/start"] = Route(handler=first_page)
    (r,) = fetch_all([FetchRequest("http://rebind.test/start", 64 * KB)], public_only)
    assert r.error_class == "blocked_address"
    assert "169.254.169.254" in r.error_message
    lookups = [answer for name, answer in net.lookups if name == "rebind.test"]
    assert lookups == [(PUBLIC_IP,), ("169.254.169.254",)]  # one per connection, no second one
    assert net.connections == [(PUBLIC_IP, PUBLIC_IP)]  # connected by address, the checked one
    assert hostile.hits["/start"] == 1
    assert forbidden_reached(net, forbidden) == (0, 0)


# --------------------------------------------------------------------------- a whole poll


def test_poll_with_forbidden_feeds_links_redirects_and_canonicals(
    prefect_api, newsflow_env, tmp_path, monkeypatch, net, servers
):
    """The run completes; each forbidden feed, link and redirect is a ``blocked_address`` row of
    fetch_log; a forbidden ``<link rel=canonical>`` is never fetched and never becomes the
    article's canonical URL; the good article is stored; nothing reaches the stand-in."""
    monkeypatch.setenv("NEWSFLOW_ALLOW_PRIVATE_NETWORKS", "0")
    hostile, forbidden = servers
    good, canonical, redirected = make_story(1, seed=61), make_story(2, seed=61), make_story(3, seed=61)
    hostile.routes["/good.html"] = page_route(good)
    hostile.routes["/canonical.html"] = Route(
        body=article_page(canonical, canonical="http://169.254.169.254/latest/meta-data/")
    )
    hostile.routes["/moved.html"] = Route(
        status=301, headers={"Location": "http://[::ffff:a9fe:a9fe]/secret"}, conditional=False
    )
    entry_links = {
        "http://news.test/good.html": good,
        "http://news.test/canonical.html": canonical,
        "http://news.test/moved.html": redirected,
    }
    bad_links = [
        LITERALS["link-local-metadata"],
        SPELLINGS["hex-loopback"],
        NAMES["name-cgnat"],
        LITERALS["nat64-of-metadata"],
    ]
    items = [(s, link, None) for link, s in entry_links.items()]
    items += [(make_story(10 + i, seed=61), link, None) for i, link in enumerate(bad_links)]
    hostile.routes["/rss.xml"] = Route(body=rss_feed(items), content_type=RSS)
    feeds = [
        "http://news.test/rss.xml",
        LITERALS["private-192"],
        NAMES["name-unique-local"],
        SPELLINGS["decimal-loopback"],
    ]

    result = poll_once(tmp_path, feeds, newsflow_env)

    logged = fetch_log(newsflow_env)
    assert logged["http://news.test/rss.xml"][1] is None
    for url in feeds[1:]:
        assert logged[url][:2] == ("feed", "blocked_address"), url
    for url in bad_links:
        assert logged[url][:2] == ("page", "blocked_address"), url
    assert logged["http://news.test/moved.html"][:2] == ("page", "blocked_address")
    assert result["feeds_failed"] == 3
    stored = dict(query(newsflow_env, "SELECT url, canonical_url FROM articles WHERE text IS NOT NULL"))
    assert set(stored) == {"http://news.test/good.html", "http://news.test/canonical.html"}
    assert stored["http://news.test/canonical.html"] == "http://news.test/canonical.html"
    assert forbidden_reached(net, forbidden) == (0, 0)


# --------------------------------------------------------------------------- memory


def test_refusals_in_a_child_process_stay_small(servers):
    """Every forbidden first URL and redirect, in a fresh process under an address-space cap:
    all refused, nothing reaches the stand-in, and the peak memory barely moves."""
    hostile, forbidden = servers
    with hostile.lock, forbidden.lock:
        hostile.hits.clear()
        forbidden.hits.clear()
    net = attacker_net(hostile, forbidden)
    for case in FORBIDDEN_URLS:
        hostile.routes[f"/go/{case}"] = Route(handler=redirect_to(FORBIDDEN_URLS))
    urls = [*FORBIDDEN_URLS.values(), *(f"http://news.test/go/{c}" for c in FORBIDDEN_URLS)]
    report = child_fetch(
        [{"url": u, "max_bytes": 64 * KB} for u in urls],
        {"allow_private_networks": False, "host_min_delay": 0, "request_deadline": 5, "retries": 0},
        net=net,
    )
    assert {r["error_class"] for r in report.result} <= REFUSED
    measured("ssrf", f"{len(urls)} forbidden URLs and redirects", peak_mb=report.peak_growth_mb,
             seconds=report.elapsed_s, forbidden_hits=sum(forbidden.hits.values()))  # fmt: skip
    assert sum(forbidden.hits.values()) == 0
    assert report.peak_growth_mb < 32, report
