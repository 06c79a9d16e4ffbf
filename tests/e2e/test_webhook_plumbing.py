"""The wiring scenario tests rely on, checked against the real apiserver with a recording endpoint:
the audit webhook kubeconfig and flags of `webhook.tools.apiserver_config` (batch mode, client
certificate), and the ValidatingWebhookConfiguration builder with the admission client
certificate; kubectl prints the webhook's warning."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .harness import ControlPlane, ControlPlaneFactory
from .procs import free_port
from .recorder import WARNING, Recorded, Recorder
from .tools import Binaries
from .webhooks import WebhookTLS, validating_webhook_configuration


@pytest.fixture(scope="module")
def recorder(webhook_tls: WebhookTLS) -> Iterator[Recorder]:
    with Recorder(webhook_tls) as rec:
        yield rec


@pytest.fixture(scope="module")
def wired_plane(
    e2e_binaries: Binaries,
    tmp_path_factory: pytest.TempPathFactory,
    recorder: Recorder,
    webhook_tls: WebhookTLS,
) -> Iterator[ControlPlane]:
    with ControlPlane(
        e2e_binaries,
        tmp_path_factory.mktemp("wired-plane"),
        audit_webhook_url=f"{recorder.url}/audit",
        webhook_ca=webhook_tls.ca,
        client_cert=webhook_tls.apiserver_client,
    ) as cp:
        cp.apply_yaml(
            validating_webhook_configuration("recorder", f"{recorder.url}/validate", webhook_tls.ca_bundle)
        )
        yield cp


def _audit_events(call: Recorded) -> list[dict[str, object]]:
    return list(call.body.get("items", [])) if call.path.startswith("/audit") else []  # /audit?timeout=30s


def test_audit_webhook_receives_batches_with_client_cert(
    wired_plane: ControlPlane, recorder: Recorder
) -> None:
    agent = f"python-requests/2.34.2 probe-{uuid.uuid4().hex[:8]}"
    assert wired_plane.request("mallory", "GET", "/api/v1/secrets", user_agent=agent).status_code == 403

    call = recorder.wait_for(
        lambda c: any(
            e.get("userAgent") == agent and e["stage"] == "ResponseComplete" for e in _audit_events(c)
        ),
        what="the forbidden request's ResponseComplete on /audit",
    )
    assert call.client_cn == "kube-apiserver"
    assert call.body["kind"] == "EventList" and call.body["apiVersion"] == "audit.k8s.io/v1"
    received = [e for c in list(recorder.calls) for e in _audit_events(c) if e.get("userAgent") == agent]
    # A read: the lean policy records its ResponseComplete, not its RequestReceived (no admission).
    assert "ResponseComplete" in {e["stage"] for e in received}
    assert "RequestReceived" not in {e["stage"] for e in received}


def test_validating_webhook_gets_client_cert_and_kubectl_prints_its_warning(
    wired_plane: ControlPlane, recorder: Recorder
) -> None:
    name = f"plumb-{uuid.uuid4().hex[:8]}"
    result = wired_plane.kubectl("dev-alice", "create", "configmap", name, "-n", "team")

    assert f"Warning: {WARNING}" in result.stderr
    call = recorder.wait_for(
        lambda c: c.path.startswith("/validate") and c.body["request"].get("name") == name,
        what="the AdmissionReview of the create",
    )
    assert call.client_cn == "kube-apiserver"
    assert call.headers["User-Agent"] == "kube-apiserver-admission"
    request = call.body["request"]
    assert request["operation"] == "CREATE" and request["userInfo"]["username"] == "dev-alice"
    # The audit event of that request carries kubectl's agent; the AdmissionReview does not.
    event = wired_plane.wait_for_audit(
        lambda e: (
            e["stage"] == "ResponseComplete"
            and e["verb"] == "create"
            and e.get("objectRef", {}).get("name") == name
        )
    )
    assert event["userAgent"].startswith("kubectl/v1.20.2 ")


def test_apiserver_keeps_serving_when_both_webhooks_are_down(
    control_plane_factory: ControlPlaneFactory, webhook_tls: WebhookTLS
) -> None:
    """The wiring we recommend (audit webhook in batch mode, failurePolicy Ignore) survives an
    outage of the endpoint: nothing listens on its port, yet requests keep succeeding and the
    file backend keeps auditing them."""
    down = f"https://127.0.0.1:{free_port()}"
    cp = control_plane_factory(
        audit_webhook_url=f"{down}/audit", webhook_ca=webhook_tls.ca, client_cert=webhook_tls.apiserver_client
    )
    cp.apply_yaml(validating_webhook_configuration("down", f"{down}/validate", webhook_tls.ca_bundle))

    names = [f"outage-{uuid.uuid4().hex[:8]}-{i}" for i in range(10)]
    for name in names:
        result = cp.kubectl("dev-alice", "create", "configmap", name, "-n", "team")
        assert "Warning" not in result.stderr
    listed = cp.kubectl("dev-alice", "get", "configmaps", "-n", "team", "-o", "name").stdout.split()
    assert {f"configmap/{n}" for n in names} <= set(listed)
    cp.wait_for_audit(
        lambda e: e["stage"] == "ResponseComplete" and e.get("objectRef", {}).get("name") == names[-1],
        what="the last create in the audit log",
    )
    cp.apiserver.check_alive()
