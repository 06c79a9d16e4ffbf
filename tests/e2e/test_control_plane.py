"""The harness itself against the real kube-apiserver 1.20: users, RBAC, kubectl, audit log, rotation."""

from __future__ import annotations

import json
import uuid

from .auditlog import AuditEvent, read_audit_events, rotated_audit_logs
from .harness import ControlPlane

PYTHON_REQUESTS = "python-requests/2.34.2"


def _completed(event: AuditEvent) -> bool:
    return bool(event["stage"] == "ResponseComplete")


def test_apiserver_is_up(control_plane: ControlPlane) -> None:
    assert control_plane.request("admin", "GET", "/readyz").text == "ok"
    version = control_plane.request("admin", "GET", "/version").json()
    assert version["gitVersion"] == "v1.20.2"
    out = control_plane.kubectl("admin", "version", "--short").stdout
    assert "Client Version: v1.20.2" in out and "Server Version: v1.20.2" in out


def test_admin_kubectl_creates_configmap(control_plane: ControlPlane) -> None:
    name = f"admin-cm-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("admin", "create", "configmap", name, "-n", "team", "--from-literal=k=v")

    got = json.loads(
        control_plane.kubectl("admin", "get", "configmap", name, "-n", "team", "-o", "json").stdout
    )
    assert got["data"] == {"k": "v"}
    event = control_plane.wait_for_audit(
        lambda e: _completed(e) and e["verb"] == "create" and e.get("objectRef", {}).get("name") == name,
        what=f"the create of configmap {name}",
    )
    assert event["user"]["username"] == "admin"
    assert event["responseStatus"]["code"] == 201
    assert event["userAgent"].startswith("kubectl/v1.20.2 (linux/amd64) kubernetes/")


def test_mallory_listing_secrets_is_forbidden_and_audited(control_plane: ControlPlane) -> None:
    path = f"/api/v1/namespaces/kube-system/secrets?labelSelector=probe%3D{uuid.uuid4().hex[:8]}"
    response = control_plane.request("mallory", "GET", path, user_agent=PYTHON_REQUESTS)
    assert response.status_code == 403

    event = control_plane.wait_for_audit(
        lambda e: _completed(e) and e["requestURI"] == path, what="mallory's forbidden list of secrets"
    )
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert event["userAgent"] == PYTHON_REQUESTS
    assert event["user"] == {"username": "mallory", "uid": "1002", "groups": ["devs", "system:authenticated"]}
    assert event["verb"] == "list"
    assert event["responseStatus"]["code"] == 403
    assert event["objectRef"] == {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"}


def test_anonymous_request_is_forbidden_as_system_anonymous(control_plane: ControlPlane) -> None:
    path = f"/api/v1/namespaces?labelSelector=probe%3D{uuid.uuid4().hex[:8]}"
    assert control_plane.request(None, "GET", path, user_agent="curl/7.88.1").status_code == 403

    event = control_plane.wait_for_audit(lambda e: _completed(e) and e["requestURI"] == path)
    assert event["user"]["username"] == "system:anonymous"
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"


def test_dev_alice_rbac_matches_the_fixtures(control_plane: ControlPlane) -> None:
    name = f"alice-cm-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("dev-alice", "create", "configmap", name, "-n", "team")

    denied_default = control_plane.kubectl(
        "dev-alice", "create", "configmap", name, "-n", "default", check=False
    )
    assert denied_default.returncode != 0 and "Forbidden" in denied_default.stderr
    denied_patch = control_plane.kubectl(
        "dev-alice", "patch", "configmap", name, "-n", "team", "-p", '{"data":{"a":"b"}}', check=False
    )
    assert denied_patch.returncode != 0 and "Forbidden" in denied_patch.stderr
    denied_mallory = control_plane.kubectl("mallory", "get", "configmaps", "-n", "team", check=False)
    assert denied_mallory.returncode != 0 and "Forbidden" in denied_mallory.stderr


def test_renamed_kubectl_sends_its_new_name_as_user_agent(control_plane: ControlPlane) -> None:
    name = f"renamed-{uuid.uuid4().hex[:8]}"
    result = control_plane.kubectl(
        "dev-alice", "create", "configmap", name, "-n", "default", user_agent="kc-renamed", check=False
    )
    assert result.returncode != 0

    event = control_plane.wait_for_audit(
        lambda e: (
            _completed(e)
            and e["verb"] == "create"
            and e["user"]["username"] == "dev-alice"
            # create's objectRef has no name, so find this request by its agent and namespace
            and e["userAgent"].startswith("kc-renamed/")
            and e.get("objectRef", {}).get("namespace") == "default"
        )
    )
    assert event["userAgent"].startswith("kc-renamed/v1.20.2 (linux/amd64) kubernetes/")
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"


def test_audit_log_rotates_and_reader_spans_files(control_plane: ControlPlane) -> None:
    """--audit-log-maxsize=1 (MB): enough requests make the apiserver itself rotate the file."""
    rotated_before = set(rotated_audit_logs(control_plane.audit_log))
    marker = uuid.uuid4().hex
    agent = f"rotation-probe/{marker} " + "x" * 900  # ~2 KB per event: ~250 requests per MB
    sent = 0
    with control_plane.client("admin", user_agent=agent) as client:
        while set(rotated_audit_logs(control_plane.audit_log)) == rotated_before:
            assert sent < 3000, "no rotation after 3000 requests (~12 MB of audit events)"
            assert client.get(f"/api/v1/namespaces/team/configmaps/absent-{sent}").status_code == 404
            sent += 1

    new = sorted(set(rotated_audit_logs(control_plane.audit_log)) - rotated_before)
    assert new[0].name.startswith("audit-") and new[0].name.endswith(".log")
    mine = [e for e in read_audit_events(new) if e.get("userAgent") == agent]
    assert mine, "the rotated file holds none of the probe's events"
    # Every completed probe request is found exactly once across rotated + live files.
    completed = control_plane.wait_for_audit(
        lambda e: _completed(e) and e["requestURI"].endswith(f"/absent-{sent - 1}")
    )
    assert completed["userAgent"] == agent
    uris = [
        e["requestURI"] for e in control_plane.audit_events() if e.get("userAgent") == agent and _completed(e)
    ]
    assert len(uris) == len(set(uris)) == sent
