"""Faults under `ua-sentinel serve`: certificate files replaced with garbage, a sink endpoint
hanging. Real process, real TLS; each checks the stated behaviour and that no finding is lost."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.hardening.audit_events import ALLOWLIST, event_list, forbidden
from tests.hardening.conftest import Launch
from tests.hardening.faults import RULE, hanging_endpoint
from tests.integration.server import PKI, KeyPair, ServeProcess, wait_for
from tests.integration.traffic import admission


def _presented_serial(server: ServeProcess) -> int:
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _readyz(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    with server.client() as client:
        answer = client.get("/readyz")
    return answer.status_code, answer.json()


def _probe(server: ServeProcess, user: str) -> None:
    with server.client() as client:
        assert client.post("/audit", json=event_list(forbidden("curl/8.5.0", user=user))).status_code == 200


def _users(server: ServeProcess) -> set[str]:
    return {f["user"]["name"] for f in server.findings() if f["rule"]["name"] == RULE}


@pytest.fixture
def allowlist(tmp_path: Path) -> Path:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ALLOWLIST)
    return path


@pytest.mark.parametrize("which", ["both", "cert", "key", "truncated"])
def test_certificate_files_replaced_with_garbage(
    launch: Launch, pki: PKI, tmp_path: Path, allowlist: Path, which: str
) -> None:
    """The old certificate keeps being served, /readyz says not ready and why, the log says why;
    admission and audit go on (no finding lost); good files make it ready again."""
    pair = KeyPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    shutil.copy(pki.serving.cert, pair.cert)
    shutil.copy(pki.serving.key, pair.key)
    server = launch(
        "--allowlist", str(allowlist), "--cert-reload-interval", "0.2", cert=pair.cert, key=pair.key
    )
    serial = _presented_serial(server)
    assert _readyz(server)[0] == 200

    garbage = os.urandom(2048)
    if which in ("both", "cert"):
        pair.cert.write_bytes(garbage)
    if which in ("both", "key"):
        pair.key.write_bytes(garbage)
    if which == "truncated":  # a copy caught half-way
        pair.cert.write_bytes(pki.serving.cert.read_bytes()[:300])
    wait_for(lambda: _readyz(server)[0] == 503, timeout=20, what="/readyz to report not ready")
    _, doc = _readyz(server)
    assert doc["ready"] is False and doc["certificate"]["loaded"] is True
    assert str(pair.cert) in doc["certificate"]["lastError"]
    assert _presented_serial(server) == serial  # still serving the old certificate
    refused = [line for line in server.logs() if line.get("msg", "").startswith("certificate change refused")]
    assert refused and str(pair.cert) in refused[0]["reason"]
    assert (server.metric("ua_sentinel_certificate_reload_errors_total") or 0) >= 1

    with server.client() as client:
        assert client.post("/validate", json=admission(1405)).status_code == 200
    _probe(server, f"during-{which}")
    wait_for(lambda: f"during-{which}" in _users(server), timeout=20, what="the finding during the fault")

    shutil.copy(pki.serving.cert, pair.cert)
    shutil.copy(pki.serving.key, pair.key)
    wait_for(lambda: _readyz(server)[0] == 200, timeout=20, what="/readyz to be ready again")
    assert _readyz(server)[1]["certificate"]["lastError"] is None
    assert _presented_serial(server) == serial


def test_a_hanging_sink_endpoint_delays_neither_audit_nor_other_sinks(
    launch: Launch, allowlist: Path
) -> None:
    with hanging_endpoint() as endpoint:
        server = launch("--allowlist", str(allowlist), "--sink", "stdout", "--sink", f"http:{endpoint.url}")
        endpoint.hang()
        users = {f"hung-{n}" for n in range(8)}
        with server.client(timeout=5) as client:  # /audit answers at once throughout
            for user in sorted(users):
                answer = client.post("/audit", json=event_list(forbidden("curl/8.5.0", user=user)))
                assert answer.status_code == 200
            assert client.post("/validate", json=admission(1405)).status_code == 200
        wait_for(lambda: users <= _users(server), timeout=20, what="stdout to get every finding")
        backlog = server.metric("ua_sentinel_sink_backlog", sink="http:http://127.0.0.1/...")
        assert backlog is not None and backlog >= len(users) - 1
        assert _readyz(server)[0] == 200
        endpoint.release()
        wait_for(lambda: users <= endpoint.users(), timeout=30, what="the endpoint to get every finding")
        wait_for(
            lambda: server.metric("ua_sentinel_sink_backlog", sink="http:http://127.0.0.1/...") == 0,
            timeout=30,
            what="the http sink's backlog to drain",
        )
