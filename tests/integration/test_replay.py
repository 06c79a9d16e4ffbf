"""The recorded apiserver traffic replayed through a real server over TLS, in arrival order."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Launch
from tests.integration.server import wait_for
from tests.integration.traffic import admission, audit_batch, recorded, with_audit_id

KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
ALLOWLIST = 'agents: ["kubectl/*", "kubectl-dispatcher/*", "kube-apiserver/*"]\n'

EXPECTED: dict[int, tuple[str, str]] = {
    1374: ("listed", KUBECTL),
    1379: ("listed", KUBECTL),
    1405: ("unlisted", "python-requests/2.34.2"),
    1450: ("unlisted", "python-requests/2.31.0"),
    1455: ("unlisted", "Go-http-client/1.1"),
    1470: ("listed", KUBECTL),  # dry run
    1509: ("listed", KUBECTL),
    1568: ("listed", KUBECTL),
    1581: ("listed", KUBECTL),  # CONNECT pods/exec, audited as get
    1585: ("listed", KUBECTL),  # CONNECT pods/exec, audited as create
}


def _allowlist(tmp_path: Path, text: str = ALLOWLIST) -> str:
    path = tmp_path / "allowlist.yaml"
    path.write_text(text)
    return str(path)


def _response(answer: httpx.Response, review: dict[str, Any]) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["apiVersion"] == review["apiVersion"] and doc["kind"] == "AdmissionReview"
    assert doc["response"]["uid"] == review["request"]["uid"]
    response: dict[str, Any] = doc["response"]
    return response


def test_recorded_traffic_in_sequence_order(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "warn")
    answers: dict[int, dict[str, Any]] = {}
    with server.client() as client:  # one keep-alive connection, like the apiserver's
        for item in recorded():
            answer = client.post(item.path, content=item.raw, headers={"Content-Type": "application/json"})
            if item.route == "/validate":
                answers[item.seq] = _response(answer, item.body)
            else:
                assert answer.status_code == 200, answer.text
                assert answer.json()["accepted"] == len(item.body["items"])
    assert sorted(answers) == sorted(EXPECTED)
    for seq, (verdict, agent) in EXPECTED.items():
        response = answers[seq]
        annotations = response["auditAnnotations"]
        assert (annotations["user-agent-verdict"], annotations["user-agent"]) == (verdict, agent), seq
        assert response["allowed"] is True
        assert "user-agent-join" not in annotations
        if verdict == "listed":
            assert "warnings" not in response
        else:
            assert response["warnings"] == [
                f'user agent "{agent}" is not on this cluster\'s allowlist; this request was recorded'
            ]
    hashes = {a["auditAnnotations"]["allowlist-hash"] for a in answers.values()}
    assert len(hashes) == 1 and len(hashes.pop()) == 12
    assert server.metric("ua_sentinel_join_hits_total") == len(EXPECTED)
    assert server.metric("ua_sentinel_join_misses_total") == 0

    # The same events reached the Detector: mallory's python-requests probe of secrets (s05).
    def probe() -> dict[str, Any] | None:
        return next(
            (
                f
                for f in server.findings()
                if f["user"]["name"] == "mallory" and f["user_agent"]["original"] == "python-requests/2.34.2"
            ),
            None,
        )

    finding = wait_for(probe, timeout=10, what="a finding for mallory's python-requests probe")
    assert finding["kubernetes"]["audit"]["verb"] == "list"


def _post_later(client: httpx.Client, path: str, body: dict[str, Any], delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        assert client.post(path, json=body).status_code == 200

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_request_received_arriving_after_the_admission_call_is_awaited(
    launch: Launch, tmp_path: Path
) -> None:
    """Batch audit mode: the event comes up to ~20 ms after the admission call; the join waits."""
    server = launch("--allowlist", _allowlist(tmp_path), "--join-wait", "5")
    with server.client() as validate_client, server.client() as audit_client:
        late = _post_later(audit_client, "/audit", audit_batch(1404), delay=0.02)
        review = admission(1405)
        response = _response(validate_client.post("/validate", json=review), review)
        late.join()
    assert response["auditAnnotations"]["user-agent"] == "python-requests/2.34.2"


def test_no_audit_event_means_unknown_allowed_without_warning(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    review = admission(1405)
    with server.client() as client:
        response = _response(client.post("/validate", json=review), review)
    assert response["allowed"] is True
    assert "warnings" not in response
    assert response["auditAnnotations"]["user-agent-verdict"] == "unknown"
    assert server.metric("ua_sentinel_join_misses_total") == 1


@pytest.mark.parametrize("late", [False, True], ids=["in-order", "kubectl-event-late"])
def test_kubectl_create_after_a_python_create_gets_kubectls_verdict(
    launch: Launch, tmp_path: Path, late: bool
) -> None:
    """Same user, same namespace, same resource, a second apart: the finished python-requests
    request must not lend its agent to the kubectl one."""
    server = launch("--allowlist", _allowlist(tmp_path), "--join-wait", "5")
    with server.client() as client, server.client() as audit_client:
        client.post("/audit", json=audit_batch(1404))  # python-requests RequestReceived
        python = admission(1405)
        assert _response(client.post("/validate", json=python), python)["auditAnnotations"]["user-agent"] == (
            "python-requests/2.34.2"
        )
        if not late:
            client.post("/audit", json=audit_batch(1406))  # its ResponseComplete
            client.post("/audit", json=with_audit_id(audit_batch(1378), "kubectl-request"))
        thread = (
            _post_later(audit_client, "/audit", with_audit_id(audit_batch(1378), "kubectl-request"), 0.02)
            if late
            else None
        )
        kubectl = admission(1379)  # dev-alice creates configmap team/alice-cm with kubectl
        response = _response(client.post("/validate", json=kubectl), kubectl)
        if thread is not None:
            thread.join()
    assert response["auditAnnotations"]["user-agent-verdict"] == "listed"
    assert response["auditAnnotations"]["user-agent"] == KUBECTL
    assert "warnings" not in response


def test_pending_requests_with_different_agents_answer_the_worse_verdict(
    launch: Launch, tmp_path: Path
) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    kubectl_rr = with_audit_id(audit_batch(1404), "kubectl-request", userAgent=KUBECTL)
    with server.client() as client:
        client.post("/audit", json=audit_batch(1404))
        client.post("/audit", json=kubectl_rr)
        review = admission(1405)
        response = _response(client.post("/validate", json=review), review)
    assert response["allowed"] is False
    annotations = response["auditAnnotations"]
    assert annotations["user-agent-verdict"] == "unlisted"
    assert annotations["user-agent"] == "python-requests/2.34.2"
    assert annotations["user-agent-join"].startswith("ambiguous: 2 pending requests with 2 different agents")


def test_v1beta1_review_is_answered_in_v1beta1(launch_shared: Launch) -> None:
    server = launch_shared()
    review = admission(1405)
    review["apiVersion"] = "admission.k8s.io/v1beta1"
    with server.client() as client:
        client.post("/audit", json=audit_batch(1404))
        response = _response(client.post("/validate", content=json.dumps(review)), review)
    assert response["auditAnnotations"]["user-agent"] == "python-requests/2.34.2"
