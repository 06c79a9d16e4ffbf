"""Transport: TLS only, TLS 1.2+, strong suites only, client certificates, size and header limits,
slow clients (slowloris) cut off without starving anyone. Real `serve` processes, real sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.hardening.conftest import Launch
from tests.hardening.tlsutil import client_cert
from tests.integration.server import PKI, KeyPair, ServeProcess, wait_for
from tests.integration.traffic import admission, audit_batch
from webhook.serve.tls import DEFAULT_REQUEST_TIMEOUT

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(launch_shared: Launch) -> ServeProcess:
    return launch_shared()


@pytest.fixture(scope="module")
def mutual(launch_shared: Launch, pki: PKI) -> ServeProcess:
    return launch_shared("--client-ca", str(pki.client_ca), "--audit-client-ca", str(pki.audit_ca))


def _counted(server: ServeProcess) -> dict[str, float]:
    """Every request the handlers saw, from /metrics."""
    names = (
        "ua_sentinel_admission_reviews_total",
        "ua_sentinel_admission_errors_total",
        "ua_sentinel_audit_requests_total",
        "ua_sentinel_audit_events_total",
    )
    with server.client() as client:
        text = client.get("/metrics").text
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        for name in names:
            if line.startswith(name) and not line.startswith("#"):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _raw_tls(server: ServeProcess, client: KeyPair | None = None, timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return server.ssl_context(client).wrap_socket(raw, server_hostname="127.0.0.1")


def _read_all(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionError, TimeoutError, ssl.SSLError):
        pass
    return data


# --- TLS only ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s",
        b"POST /audit HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s",
        b"GET /metrics HTTP/1.0\r\n\r\n",
    ],
    ids=["validate", "audit", "metrics"],
)
def test_plain_http_gets_no_answer_from_the_handlers(server: ServeProcess, request_bytes: bytes) -> None:
    before = _counted(server)
    body = json.dumps(admission(1405) if b"validate" in request_bytes else audit_batch(1404)).encode()
    wire = request_bytes % (len(body), body) if b"%d" in request_bytes else request_bytes
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(wire)
        answer = _read_all(raw)
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert b"AdmissionReview" not in answer and b"accepted" not in answer
    assert _counted(server) == before


# --- protocol versions and cipher suites --------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(server: ServeProcess, version: ssl.TLSVersion) -> None:
    old = server.ssl_context()
    old.set_ciphers("ALL:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = version
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_work(server: ServeProcess, version: ssl.TLSVersion) -> None:
    context = server.ssl_context()
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == version.name.replace("v", "v").replace("_", ".").replace("TLSv", "TLSv")
        name = tls.cipher()[0]
    assert "GCM" in name or "CHACHA20" in name, name


def test_only_forward_secret_aead_suites_are_accepted_on_tls_1_2(server: ServeProcess) -> None:
    """Offer each suite OpenSSL knows, one at a time; list what the server agrees to."""
    every = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    every.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    suites = sorted({c["name"] for c in every.get_ciphers() if c["protocol"] != "TLSv1.3"})
    accepted = []
    for suite in suites:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.set_ciphers(f"{suite}:@SECLEVEL=0")
        except ssl.SSLError:
            continue
        try:
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
                context.wrap_socket(raw) as tls,
            ):
                accepted.append(tls.cipher()[0])
        except (ssl.SSLError, ConnectionError):
            continue
    print(f"TLS 1.2 suites accepted ({len(accepted)} of {len(suites)} offered): {accepted}")
    assert accepted, "no TLS 1.2 suite accepted at all"
    weak = [s for s in accepted if not s.startswith("ECDHE-") or not ("GCM" in s or "CHACHA20" in s)]
    assert not weak, f"weak suites accepted: {weak}"


# --- client certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/validate", "/audit"])
def test_no_client_certificate_is_refused_and_changes_nothing(mutual: ServeProcess, route: str) -> None:
    before = _counted(mutual)
    body = admission(1405) if route == "/validate" else audit_batch(1404)
    with mutual.client() as client:
        answer = client.post(route, json=body)
    assert answer.status_code == 403
    assert "client certificate signed by" in answer.json()["message"]
    after = _counted(mutual)
    assert after["ua_sentinel_admission_reviews_total"] == before["ua_sentinel_admission_reviews_total"]
    assert after["ua_sentinel_audit_events_total"] == before["ua_sentinel_audit_events_total"]


@pytest.mark.parametrize(
    ("who", "route"),
    [("audit", "/validate"), ("apiserver", "/audit")],
    ids=["audit-cert-on-validate", "validate-cert-on-audit"],
)
def test_a_certificate_for_the_other_route_is_refused(
    mutual: ServeProcess, pki: PKI, who: str, route: str
) -> None:
    pair = pki.audit if who == "audit" else pki.apiserver
    with mutual.client(pair) as client:
        answer = client.post(route, json=admission(1405) if route == "/validate" else audit_batch(1404))
    assert answer.status_code == 403


@pytest.mark.parametrize("kind", ["stranger", "expired", "forged"])
@pytest.mark.parametrize("ca", ["client-ca", "audit-ca"])
def test_invalid_client_certificates_never_reach_a_handler(
    mutual: ServeProcess, pki: PKI, tmp_path: Path, kind: str, ca: str
) -> None:
    """Unknown CA, expired, or forged (the CA's name, another key): the handshake fails, or the
    request is refused; neither /validate nor /audit counts it."""
    if kind == "stranger":
        pair = pki.stranger
    else:
        pair = client_cert(pki, tmp_path, ca=ca, expired=kind == "expired", forged=kind == "forged")
    before = _counted(mutual)
    for route, body in (("/validate", admission(1405)), ("/audit", audit_batch(1404))):
        try:
            with mutual.client(pair) as client:
                status = client.post(route, json=body).status_code
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            status = None  # handshake refused (TLS 1.3 may report it on the first read)
        assert status in (None, 403), (route, status)
    after = _counted(mutual)
    assert after["ua_sentinel_admission_reviews_total"] == before["ua_sentinel_admission_reviews_total"]
    assert after["ua_sentinel_audit_events_total"] == before["ua_sentinel_audit_events_total"]


def test_valid_client_certificates_are_accepted(mutual: ServeProcess, pki: PKI) -> None:
    with mutual.client(pki.apiserver) as apiserver, mutual.client(pki.audit) as audit:
        assert audit.post("/audit", json=audit_batch(1404)).status_code == 200
        assert apiserver.post("/validate", json=admission(1405)).status_code == 200


# --- size and header limits -------------------------------------------------------------------


def _exchange(server: ServeProcess, wire: bytes, *, timeout: float = 20) -> bytes:
    with _raw_tls(server, timeout=timeout) as tls:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            tls.sendall(wire)
        return _read_all(tls)


def _status_line(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def test_a_huge_declared_body_is_refused_before_it_is_sent(server: ServeProcess) -> None:
    started = time.monotonic()
    head = b"POST /audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = _exchange(server, head + b"Content-Length: 1000000000000\r\n\r\n{")
    assert _status_line(answer) == 413, answer[:300]
    assert b"larger than" in answer
    # answered and the connection closed at once, not left to the request timeout
    assert time.monotonic() - started < DEFAULT_REQUEST_TIMEOUT / 2


def test_a_chunked_body_over_the_limit_gets_413(server: ServeProcess) -> None:
    def chunks() -> object:
        piece = b"x" * MiB
        for _ in range(9):
            yield piece

    with server.client() as client:
        answer = client.post("/validate", content=chunks())  # type: ignore[arg-type]
    assert answer.status_code == 413 and "larger than" in answer.json()["message"]


@pytest.mark.parametrize(
    "wire",
    [
        b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 256 * 1024 + b"\r\n\r\n",
        b"POST /validate HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: y\r\n" % i for i in range(20_000))
        + b"\r\n",
        b"POST /validate?" + b"q" * 256 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}{}{",
        b"POST /validate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    ],
    ids=["256KiB-header", "20000-headers", "256KiB-url", "two-lengths", "bad-chunk-size"],
)
def test_oversized_or_malformed_heads_get_a_4xx_and_the_server_carries_on(
    server: ServeProcess, wire: bytes
) -> None:
    answer = _exchange(server, wire)
    status = _status_line(answer)
    assert status is None or 400 <= status < 500, answer[:300]
    with server.client() as client:
        assert client.post("/validate", json=admission(1405)).status_code == 200
    assert server.process is not None and server.process.poll() is None


# --- slow clients -----------------------------------------------------------------------------


def test_slow_clients_are_cut_off_and_do_not_starve_others(launch: Launch) -> None:
    """60 slowloris connections (idle after the handshake, headers a byte at a time, a body a byte
    at a time) while a normal client keeps posting: every normal request is answered, and every
    slow connection is closed by the server within the request timeout (plus slack)."""
    server = launch()
    stop = threading.Event()
    closed: dict[str, float] = {}
    opened = time.monotonic()
    lock = threading.Lock()

    def slow(kind: str, number: int) -> None:
        name = f"{kind}-{number}"
        try:
            tls = _raw_tls(server, timeout=2 * DEFAULT_REQUEST_TIMEOUT + 10)
        except OSError:
            return
        with tls:
            tls.settimeout(0.5)
            if kind == "headers":
                drip = b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 50
            elif kind == "body":
                tls.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                drip = b"{" * 100_000
            else:
                drip = b""
            sent = 0
            while not stop.is_set():
                if sent < len(drip):
                    try:
                        tls.sendall(drip[sent : sent + 1])
                    except (ConnectionError, ssl.SSLError, OSError):
                        break
                    sent += 1
                try:
                    if tls.recv(4096) == b"":
                        break
                except TimeoutError:
                    continue
                except (ConnectionError, ssl.SSLError, OSError):
                    break
            else:
                return
        with lock:
            closed[name] = time.monotonic() - opened

    threads = [
        threading.Thread(target=slow, args=(kind, n), daemon=True)
        for kind in ("idle", "headers", "body")
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    answered = 0
    latencies = []
    try:
        with server.client() as client:
            deadline = time.monotonic() + DEFAULT_REQUEST_TIMEOUT / 2
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = client.post("/validate", json=admission(1405))
                latencies.append(time.monotonic() - started)
                assert answer.status_code == 200
                answered += 1
        wait_for(
            lambda: len(closed) == len(threads),
            timeout=DEFAULT_REQUEST_TIMEOUT + 20,
            what=f"the server to close every slow connection ({len(closed)} of {len(threads)} so far)",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    latencies.sort()
    print(
        f"normal requests answered while 60 slow connections were open: {answered}; "
        f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"slow connections closed after {min(closed.values()):.1f}..{max(closed.values()):.1f} s"
    )
    assert answered > 0
    assert max(closed.values()) >= DEFAULT_REQUEST_TIMEOUT * 0.8  # cut off by the timeout, not earlier
    logs = [line for line in server.logs() if line.get("msg", "").startswith("client too slow")]
    assert logs
    errors = [line for line in server.logs() if line.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
    with server.client() as client:  # and the server is as good as new
        assert client.post("/validate", json=admission(1405)).status_code == 200
