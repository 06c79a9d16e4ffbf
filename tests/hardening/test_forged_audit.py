"""Forged audit events: with audit authentication on, an unauthenticated POST /audit changes
nothing; with it off, forged RequestReceived events cannot make a real unlisted write `listed`
(the worse verdict wins), and a flood cannot evict real requests unnoticed (bounded, counted)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.audit_events import (
    ALLOWLIST,
    KUBECTL,
    PYTHON,
    completed,
    event_list,
    forbidden,
    review,
    write_request,
)
from tests.hardening.conftest import Launch
from tests.integration.server import PKI, ServeProcess, wait_for


@pytest.fixture(scope="module")
def allowlist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("allowlist") / "allowlist.yaml"
    path.write_text(ALLOWLIST)
    return path


def _verdict(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/validate", json=body)
    assert answer.status_code == 200, answer.text
    response: dict[str, Any] = answer.json()["response"]
    return response


def _post(client: httpx.Client, *events: dict[str, Any]) -> httpx.Response:
    return client.post("/audit", json=event_list(*events))


# --- authentication on ------------------------------------------------------------------------


def test_unauthenticated_audit_posts_are_refused_and_change_nothing(
    launch: Launch, pki: PKI, allowlist: Path
) -> None:
    server = launch("--allowlist", str(allowlist), "--audit-client-ca", str(pki.audit_ca))
    name = "forged-auth"
    forged_write = write_request(name, KUBECTL, user="eve", uid="66")
    forged_probe = forbidden("peirates/v1", user="framed-user")
    with server.client() as client:  # no client certificate
        answer = _post(client, forged_write, forged_probe)
    assert answer.status_code == 403
    assert "--audit-client-ca" in answer.json()["message"]
    # A certificate from another CA (here the one for /validate): refused during the handshake.
    with (
        pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)),
        server.client(pki.apiserver) as client,
    ):
        _post(client, forged_write, forged_probe)
    assert server.metric("ua_sentinel_audit_events_total") == 0
    assert server.metric("ua_sentinel_join_pending") == 0
    assert server.metric("ua_sentinel_detector_events_total") == 0
    with server.client() as client:  # the forged kubectl RequestReceived lends nothing
        verdict = _verdict(client, review(name, user="eve", uid="66"))
    assert verdict["auditAnnotations"]["user-agent-verdict"] == "unknown"
    # The real apiserver (audit client certificate) is heard: a finding for a real probe.
    real_probe = forbidden("kdigger/v0.5", user="real-user")
    with server.client(pki.audit) as apiserver:
        assert _post(apiserver, real_probe).status_code == 200
    wait_for(lambda: server.findings(), timeout=20, what="the real finding")
    assert server.stop() in (0, -15)
    users = [f["user"]["name"] for f in server.findings()]
    assert users == ["real-user"], users  # nothing from the forged posts, even after the flush


# --- authentication off -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_audit(launch_shared: Launch, allowlist: Path) -> ServeProcess:
    return launch_shared("--allowlist", str(allowlist), "--join-wait", "0.2")


SCENARIOS = [
    "forged-before-real",
    "forged-after-real",
    "forged-with-the-real-audit-id-first",
    "forged-completion-then-forged-request",
    "many-forged-copies",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_forged_kubectl_request_received_cannot_make_a_real_write_listed(
    open_audit: ServeProcess, scenario: str
) -> None:
    """A client picks its own Audit-ID header, so a forger can know its real request's audit ID."""
    user, uid = f"user-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    name = "cm"
    real = write_request(name, PYTHON, user=user, uid=uid)
    forged = write_request(name, KUBECTL, user=user, uid=uid)
    with open_audit.client() as client:
        if scenario == "forged-before-real":
            batches = [[forged], [real]]
        elif scenario == "forged-after-real":
            batches = [[real], [forged]]
        elif scenario == "forged-with-the-real-audit-id-first":
            forged["auditID"] = real["auditID"]
            batches = [[forged], [real]]
        elif scenario == "forged-completion-then-forged-request":
            batches = [[completed(real)], [forged], [real]]
        else:
            batches = [[write_request(name, KUBECTL, user=user, uid=uid) for _ in range(50)], [real]]
        for batch in batches:
            assert _post(client, *batch).status_code == 200
        response = _verdict(client, review(name, user=user, uid=uid))
    annotations = response["auditAnnotations"]
    assert annotations["user-agent-verdict"] == "unlisted", annotations
    assert annotations["user-agent"] == PYTHON
    assert "ambiguous" in annotations["user-agent-join"]
    assert response["warnings"] and PYTHON in response["warnings"][0]


def test_disagreeing_repeats_and_late_events_are_counted(open_audit: ServeProcess) -> None:
    assert (open_audit.metric("ua_sentinel_join_conflicting_events_total") or 0) >= 1
    assert (open_audit.metric("ua_sentinel_join_late_events_total") or 0) >= 1
    assert (open_audit.metric("ua_sentinel_join_ambiguous_total") or 0) >= len(SCENARIOS)


def test_a_genuine_kubectl_write_stays_listed(open_audit: ServeProcess) -> None:
    """The other side: no forgery, the same shapes, the verdict is listed and not ambiguous."""
    user, uid = f"user-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    write = write_request("cm", KUBECTL, user=user, uid=uid)
    with open_audit.client() as client:
        assert _post(client, write).status_code == 200
        assert _post(client, write).status_code == 200  # a retried batch is no disagreement
        annotations = _verdict(client, review("cm", user=user, uid=uid))["auditAnnotations"]
    assert annotations["user-agent-verdict"] == "listed"
    assert "user-agent-join" not in annotations


FLOOD = 100_000 + 2_000
"""Past the RequestIndex's 100,000-entry cap."""


def test_a_flood_cannot_evict_real_requests_unnoticed(launch: Launch, allowlist: Path) -> None:
    # A TTL longer than the flood takes on a slow machine: only the cap may evict here.
    server = launch("--allowlist", str(allowlist), "--join-wait", "0", "--join-ttl", "3600")
    user, uid = "flooded", "77"
    real = write_request("cm", PYTHON, user=user, uid=uid)
    real_probe = forbidden("kube-hunter/1.0", user="prober-before-flood")
    batch = 2_000
    with server.client(timeout=60) as client:
        assert _post(client, real, real_probe).status_code == 200
        for start in range(0, FLOOD, batch):
            items = [
                write_request("cm", KUBECTL, user=f"flood-{n}", uid=str(n))
                for n in range(start, start + batch)
            ]
            answer = _post(client, *items)
            assert answer.status_code == 200, answer.text
        late_probe = forbidden("kube-hunter/1.0", user="prober-after-flood")
        assert _post(client, late_probe).status_code == 200
        verdict = _verdict(client, review("cm", user=user, uid=uid))["auditAnnotations"]
    # Bounded: the index holds at most its cap; the oldest (the real request) was evicted ...
    pending = server.metric("ua_sentinel_join_pending")
    assert pending is not None and pending <= 100_000
    evicted = server.metric("ua_sentinel_join_evictions_total", reason="cap")
    # ... and counted: so the eviction is visible, and the real write is not judged listed.
    assert evicted is not None and evicted >= FLOOD + 1 - 100_000
    assert verdict["user-agent-verdict"] == "unknown"
    # Findings: either derived, or the dropped events are counted (never silently lost).
    wait_for(
        lambda: (server.metric("ua_sentinel_detector_queue") or 0) == 0,
        timeout=120,
        what="the detector to catch up",
    )
    dropped = server.metric("ua_sentinel_audit_events_dropped_total") or 0
    processed = server.metric("ua_sentinel_detector_events_total") or 0
    assert processed + dropped == FLOOD + 3
    users = {f["user"]["name"] for f in server.findings()}
    assert "prober-before-flood" in users
    assert "prober-after-flood" in users or dropped > 0
    print(f"flood of {FLOOD}: evicted {evicted:.0f} (cap), processed {processed:.0f}, dropped {dropped:.0f}")
