"""TLS: certificate rotation on disk without a restart, TLS 1.2+, client certificates per route."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Launch
from tests.integration.server import PKI, KeyPair, ServeProcess, wait_for
from tests.integration.traffic import admission, audit_batch
from webhook.tools import certs


def presented_serial(server: ServeProcess, *, client: KeyPair | None = None) -> int:
    """Serial number of the certificate the server presents on a brand-new handshake."""
    context = server.ssl_context(client)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serving_pair(pki: PKI) -> certs.CertPair:
    """A fresh serving certificate from the test PKI's serving CA."""
    key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = certs.CertPair(x509.load_pem_x509_certificate(pki.ca.read_bytes()), key)
    return certs.issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1"])


def readyz(server: ServeProcess) -> dict[str, Any]:
    with server.client() as client:
        doc: dict[str, Any] = client.get("/readyz").json()
    return doc


@pytest.fixture
def rotating(tmp_path: Path, pki: PKI) -> KeyPair:
    """A copy of the serving pair the test may overwrite."""
    pair = KeyPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    shutil.copy(pki.serving.cert, pair.cert)
    shutil.copy(pki.serving.key, pair.key)
    return pair


def test_replaced_certificate_is_presented_on_the_next_handshake(
    launch: Launch, pki: PKI, rotating: KeyPair
) -> None:
    server = launch("--cert-reload-interval", "0.1", "--join-wait", "2", cert=rotating.cert, key=rotating.key)
    old_serial = presented_serial(server)
    with server.client() as keep_alive:
        assert keep_alive.get("/healthz").status_code == 200
        # An admission call in flight across the rotation: it awaits an audit event for 2 s.
        results: dict[str, Any] = {}
        in_flight = threading.Thread(
            target=lambda: results.update(answer=keep_alive.post("/validate", json=admission(1405)))
        )
        in_flight.start()
        new = serving_pair(pki)
        certs.write_pair(new, rotating.cert, rotating.key)  # key first, then certificate
        wait_for(
            lambda: readyz(server)["certificate"]["serial"] == format(new.cert.serial_number, "x"),
            timeout=20,
            what="the server to load the new certificate",
        )
        assert presented_serial(server) == new.cert.serial_number != old_serial
        in_flight.join()
        assert results["answer"].status_code == 200
        assert results["answer"].json()["response"]["auditAnnotations"]["user-agent-verdict"] == "unknown"
        # The connection opened before the rotation keeps working.
        assert keep_alive.get("/healthz").status_code == 200
    assert server.metric("ua_sentinel_certificate_reloads_total") == 1
    expiry = server.metric("ua_sentinel_certificate_expiry_timestamp_seconds")
    assert expiry == new.cert.not_valid_after_utc.timestamp()


def test_a_mismatched_pair_is_refused_and_the_old_certificate_kept(
    launch: Launch, pki: PKI, rotating: KeyPair
) -> None:
    server = launch("--cert-reload-interval", "0.1", cert=rotating.cert, key=rotating.key)
    old_serial = presented_serial(server)
    first, second = serving_pair(pki), serving_pair(pki)
    rotating.cert.write_bytes(first.cert_pem)
    rotating.key.write_bytes(second.key_pem)
    wait_for(
        lambda: readyz(server)["certificate"]["lastError"],
        timeout=20,
        what="the reloader to refuse the mismatched pair",
    )
    assert presented_serial(server) == old_serial
    assert "cannot be served" in readyz(server)["certificate"]["lastError"]
    rotating.key.write_bytes(first.key_pem)
    wait_for(
        lambda: presented_serial(server) == first.cert.serial_number,
        timeout=20,
        what="the matching pair to be served",
    )
    assert readyz(server)["certificate"]["lastError"] is None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(launch_shared: Launch) -> None:
    """A client offering at most TLS 1.1 is cut off during the handshake; TLS 1.2 works."""
    server = launch_shared()
    old = server.ssl_context()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    modern = server.ssl_context()
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_keep_alive_reuses_one_connection(launch_shared: Launch) -> None:
    server = launch_shared()
    seen: set[int] = set()

    def on_response(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        seen.add(id(stream.get_extra_info("ssl_object")))

    with server.client(event_hooks={"response": [on_response]}) as client:
        for _ in range(5):
            answer = client.post("/validate", json=admission(1405))
            assert answer.status_code == 200 and answer.http_version == "HTTP/1.1"
    assert len(seen) == 1


@pytest.fixture(scope="module")
def mutual(launch_shared: Launch, pki: PKI) -> ServeProcess:
    return launch_shared("--client-ca", str(pki.client_ca), "--audit-client-ca", str(pki.audit_ca))


@pytest.mark.parametrize(
    ("who", "route", "code"),
    [
        ("apiserver", "/validate", 200),
        ("none", "/validate", 403),
        ("audit", "/validate", 403),
        ("audit", "/audit", 200),
        ("apiserver", "/audit", 403),
        ("none", "/audit", 403),
    ],
)
def test_client_certificates_are_checked_per_route(
    mutual: ServeProcess, pki: PKI, who: str, route: str, code: int
) -> None:
    client_pair = {"apiserver": pki.apiserver, "audit": pki.audit, "none": None}[who]
    body = admission(1405) if route == "/validate" else audit_batch(1404)
    with mutual.client(client_pair) as client:
        answer = client.post(route, json=body)
    assert answer.status_code == code, answer.text
    if code == 403:
        assert "client certificate signed by" in answer.json()["message"]


def test_probes_and_metrics_need_no_client_certificate(mutual: ServeProcess) -> None:
    with mutual.client() as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_a_certificate_from_an_unknown_ca_fails_the_handshake(mutual: ServeProcess, pki: PKI) -> None:
    # TLS 1.3: the client may finish its side first, so the refusal can surface on the request.
    with (
        mutual.client(pki.stranger) as client,
        pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)),
    ):
        client.get("/healthz")


def test_client_ca_alone_guards_audit_too(launch: Launch, pki: PKI) -> None:
    server = launch("--client-ca", str(pki.client_ca))
    with server.client() as anonymous, server.client(pki.apiserver) as apiserver:
        assert anonymous.post("/audit", json=audit_batch(1404)).status_code == 403
        assert apiserver.post("/audit", json=audit_batch(1404)).status_code == 200


def test_without_a_guard_audit_is_refused_but_admission_works(launch: Launch) -> None:
    server = launch(open_audit=False)
    with server.client() as client:
        refused = client.post("/audit", json=audit_batch(1404))
        assert client.post("/validate", json=admission(1405)).status_code == 200
        ready = client.get("/readyz")
    assert refused.status_code == 403
    assert "pass --audit-client-ca" in refused.json()["message"]
    assert "--audit-insecure" in refused.json()["message"]
    assert ready.status_code == 200 and ready.json()["auditAuth"] == "refused"
    assert server.metric("ua_sentinel_audit_events_total") == 0
    (warning,) = [
        line for line in server.logs() if line.get("auditAuth") == "refused" and line["msg"] != "starting"
    ]
    assert warning["level"] == "warning" and "--audit-insecure" in warning["msg"]


def test_audit_insecure_opens_audit_and_says_so(launch: Launch) -> None:
    server = launch("--audit-insecure")
    with server.client() as anonymous:
        assert anonymous.post("/audit", json=audit_batch(1404)).status_code == 200
        assert anonymous.get("/readyz").json()["auditAuth"] == "insecure"
    (warning,) = [
        line for line in server.logs() if line.get("auditAuth") == "insecure" and line["msg"] != "starting"
    ]
    assert warning["level"] == "warning" and "--audit-insecure" in warning["msg"]


def test_a_guard_is_named_in_readyz(mutual: ServeProcess) -> None:
    with mutual.client() as client:
        assert client.get("/readyz").json()["auditAuth"] == "audit-client-ca"


def test_audit_insecure_beside_a_ca_is_refused_at_start(pki: PKI) -> None:
    argv = [sys.executable, "-m", "webhook", "serve", "--tls-cert", str(pki.serving.cert)]
    argv += ["--tls-key", str(pki.serving.key), "--port", "0", "--audit-insecure"]
    done = subprocess.run(
        [*argv, "--audit-client-ca", str(pki.audit_ca)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--audit-insecure contradicts --audit-client-ca, which guards /audit; give one of them")
    )
    assert "Traceback" not in done.stderr


def test_a_connection_that_never_says_hello_is_closed_after_the_handshake_timeout(launch: Launch) -> None:
    server = launch("--tls-handshake-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as silent:
        silent.settimeout(30)  # generous: the server must close it long before (asyncio's default: 60 s)
        try:
            data = silent.recv(1)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed by the server, not by our deadline (that raises TimeoutError)
    with server.client() as client:  # a client that does say hello is served as before
        assert client.get("/healthz").status_code == 200


def test_the_handshake_timeout_must_be_positive(pki: PKI) -> None:
    argv = [sys.executable, "-m", "webhook", "serve", "--tls-cert", str(pki.serving.cert)]
    argv += ["--tls-key", str(pki.serving.key), "--port", "0", "--tls-handshake-timeout", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2  # a usage error, found when the flag is parsed
    assert "--tls-handshake-timeout: '0' must be above 0 and at most 600" in done.stderr


# --- what server.py relies on in Python's ssl module, checked on real sockets ----------------


@dataclass
class EchoServer:
    """An asyncio TLS echo server (the transport uvicorn uses) on a thread."""

    context: ssl.SSLContext
    ca: certs.CertPair
    tmp: Path
    port: int = 0

    def write(self, name: str, pair: certs.CertPair) -> tuple[Path, Path]:
        cert, key = self.tmp / f"{name}.crt", self.tmp / f"{name}.key"
        certs.write_pair(pair, cert, key)
        return cert, key

    def issue(self, name: str) -> certs.CertPair:
        return certs.issue(self.ca, name, ips=["127.0.0.1"])

    def connect(self) -> int:
        """A new handshake and one echo; the serial of the certificate presented."""
        client = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"ping\n")
            assert tls.recv(10) == b"ping\n"
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[EchoServer]:
    echo = EchoServer(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), certs.make_ca(), tmp_path)
    echo.context.load_cert_chain(*echo.write("a", echo.issue("first")))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def listen() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=echo.context)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(listen(), loop).result(10)
    echo.port = server.sockets[0].getsockname()[1]
    yield echo
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_load_cert_chain_on_the_live_context_changes_new_handshakes(echo: EchoServer) -> None:
    before = echo.connect()
    second = echo.issue("second")
    echo.context.load_cert_chain(*echo.write("b", second))
    assert echo.connect() == second.cert.serial_number != before


def test_a_failed_load_cert_chain_breaks_the_live_context(echo: EchoServer) -> None:
    """Why server.py never loads into the listening context after start."""
    echo.connect()
    new_cert, _ = echo.write("new", echo.issue("new"))
    _, other_key = echo.write("other", echo.issue("other"))
    # A rotation caught half-way: the new certificate with a key that is not its own.
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        echo.context.load_cert_chain(new_cert, other_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        echo.connect()


def test_sni_callback_switches_context_even_without_sni(echo: EchoServer) -> None:
    """Connecting by IP sends no SNI; the callback still runs (OpenSSL >= 1.1.1)."""
    replacement = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    second = echo.issue("second")
    replacement.load_cert_chain(*echo.write("b", second))
    names: list[str | None] = []

    def switch(conn: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)
        conn.context = replacement

    echo.context.sni_callback = switch
    assert echo.connect() == second.cert.serial_number
    assert names == [None]
