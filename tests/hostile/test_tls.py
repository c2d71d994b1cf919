"""TLS fails closed: a loopback HTTPS server with a self-signed certificate (made here with the
``cryptography`` package; its name and address are right, only the trust is missing) is a
``tls`` failure, the handshake is tried once per attempt and never again without verification
(the server counts TCP connections, handshakes and HTTP requests: 1, 1 attempted, 0). A control
client that trusts the certificate gets the page from the same server, so the refusal is the
verification's doing. Also: https:// to a plain HTTP server, and a server that never completes
the handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading

import httpx
import pytest
from builders import RSS, make_story, page_route, rss_feed
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hostile_kit import child_fetch, fetch_log, measured, poll_once, query

from newsflow.loopback import Route
from tasks.fetch import FetchRequest, fetch_all

HOST = "127.0.0.7"
FEED = rss_feed([(make_story(1, seed=66), "https://tls.example/a", "t")])


def self_signed(tmp_dir) -> tuple[str, str]:
    """A certificate for 127.0.0.7 and localhost, signed by its own key; (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newsflow hostile test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_dir / "cert.pem", tmp_dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


class CountingTlsServer:
    """HTTPS on 127.0.0.7 that counts what reaches it. ``mode``: "tls" (a proper handshake with
    the self-signed certificate), "plain" (answers plain HTTP), "silent" (never says a word)."""

    def __init__(self, cert: str, key: str, mode: str = "tls"):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.mode = mode
        self.connections = self.handshakes_completed = self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.mode == "silent":
                self._stop.wait(10)
                return
            if self.mode == "plain":  # what an HTTP server says to a TLS ClientHello
                if conn.recv(4096):
                    conn.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                return
            stream = conn
            if self.mode == "tls":
                stream = self.context.wrap_socket(conn, server_side=True)
                with self._lock:
                    self.handshakes_completed += 1
            request = b""
            while b"\r\n\r\n" not in request:
                data = stream.recv(4096)
                if not data:
                    return
                request += data
            with self._lock:
                self.requests += 1
            stream.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(FEED)
                + FEED
            )
        except (ssl.SSLError, OSError):
            pass  # the client refused our certificate: what is expected
        finally:
            conn.close()

    def __enter__(self) -> CountingTlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certificate):
    with CountingTlsServer(*certificate) as server:
        yield server


def test_a_self_signed_certificate_fails_closed_once(tls_server, settings):
    (r,) = fetch_all([FetchRequest(tls_server.url("/feed.xml"), 1 << 20)], settings)
    assert r.error_class == "tls", (r.error_class, r.error_message)
    assert "CERTIFICATE_VERIFY_FAILED" in r.error_message or "certificate verify failed" in r.error_message
    assert r.attempts == 1 and r.body is None
    assert tls_server.connections == 1  # one handshake attempt, no retry, no unverified second try
    assert tls_server.handshakes_completed == 0 and tls_server.requests == 0


def test_control_a_client_that_trusts_the_certificate_gets_the_feed(tls_server, certificate):
    trusting = ssl.create_default_context(cafile=certificate[0])
    response = httpx.get(tls_server.url("/feed.xml"), verify=trusting, trust_env=False, timeout=5)
    assert response.status_code == 200 and response.content == FEED
    assert tls_server.handshakes_completed == 1 and tls_server.requests == 1


def test_a_redirect_to_an_untrusted_https_host_fails_closed(tls_server, site, settings):
    site.routes["/feed.xml"] = Route(
        status=301, headers={"Location": tls_server.url("/feed.xml")}, conditional=False
    )
    (r,) = fetch_all([FetchRequest(site.url("/feed.xml"), 1 << 20)], settings)
    assert r.error_class == "tls"
    assert site.hits["/feed.xml"] == 1
    assert (tls_server.connections, tls_server.handshakes_completed, tls_server.requests) == (1, 0, 0)


def test_https_to_a_plain_http_server_is_a_tls_failure(certificate, settings):
    with CountingTlsServer(*certificate, mode="plain") as plain:
        (r,) = fetch_all([FetchRequest(plain.url("/feed.xml"), 1 << 20)], settings)
        assert r.error_class == "tls", (r.error_class, r.error_message)
        assert r.attempts == 1 and plain.connections == 1


def test_a_handshake_that_never_completes_times_out(certificate, settings):
    with CountingTlsServer(*certificate, mode="silent") as silent:
        quick = settings.model_copy(
            update={"connect_timeout": 0.8, "read_timeout": 0.8, "request_deadline": 1.5}
        )
        (r,) = fetch_all([FetchRequest(silent.url("/feed.xml"), 1 << 20)], quick)
        assert r.error_class == "timeout", (r.error_class, r.error_message)
        assert r.elapsed_ms < 2500 and silent.connections == 1


def test_poll_with_an_untrusted_feed(prefect_api, newsflow_env, tmp_path, site, tls_server):
    good = make_story(2, seed=66)
    site.routes["/good.html"] = page_route(good)
    site.routes["/good.xml"] = Route(
        body=rss_feed([(good, site.url("/good.html"), "good")]), content_type=RSS
    )
    feeds = [site.url("/good.xml"), tls_server.url("/feed.xml")]
    result = poll_once(tmp_path, feeds, newsflow_env)
    logged = fetch_log(newsflow_env)
    assert logged[tls_server.url("/feed.xml")][:2] == ("feed", "tls")
    assert logged[site.url("/good.xml")][1] is None
    assert result["articles_extracted"] == 1
    assert query(newsflow_env, "SELECT attempts FROM fetch_log WHERE error_class = 'tls'") == [(1,)]
    assert (tls_server.connections, tls_server.requests) == (1, 0)


def test_tls_failures_in_a_child_process(tls_server):
    report = child_fetch(
        [{"url": tls_server.url(f"/feed-{i}.xml"), "max_bytes": 1 << 20} for i in range(10)],
        {"host_min_delay": 0, "allow_private_networks": True, "request_deadline": 5},
    )
    assert {r["error_class"] for r in report.result} == {"tls"}
    assert {r["attempts"] for r in report.result} == {1}
    assert tls_server.connections == 10 and tls_server.requests == 0
    measured("tls", "10 untrusted certificates", peak_mb=report.peak_growth_mb, seconds=report.elapsed_s,
             plaintext_requests=tls_server.requests)  # fmt: skip
    assert report.peak_growth_mb < 32, report
