"""`ua-sentinel replay` over audit logs the real apiserver wrote and rotated itself."""

from __future__ import annotations

import uuid
from pathlib import Path

from .harness import ControlPlane
from .sentinel import run_replay, write_allowlist

LISTED = ["kubectl/*", "kubectl-dispatcher/*", "kube-apiserver/*"]


def test_replay_finds_forbidden_unlisted_agents_in_real_audit_logs(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    probe = uuid.uuid4().hex[:8]
    requests_agent = f"python-requests/2.34.2 e2e-{probe}"
    peirates_agent = f"peirates/v0.0.0-{probe} (linux/amd64) kubernetes/$Format"
    for agent, path in [
        (requests_agent, "/api/v1/namespaces/kube-system/secrets"),
        (peirates_agent, "/api/v1/namespaces/kube-system/secrets"),
        (requests_agent, "/api/v1/namespaces/team/pods"),
    ]:
        assert control_plane.request("mallory", "GET", path, user_agent=agent).status_code == 403
    # Allowed requests from an unlisted agent and forbidden ones from a listed agent: no finding.
    allowed = control_plane.request(
        "dev-alice", "GET", "/api/v1/namespaces/team/configmaps", user_agent=requests_agent
    )
    assert allowed.status_code == 200
    denied = control_plane.kubectl("mallory", "get", "secrets", "-n", "kube-system", check=False)
    assert denied.returncode != 0
    last = f"/api/v1/namespaces/default/pods?labelSelector=last%3D{probe}"
    assert control_plane.request("mallory", "GET", last, user_agent=requests_agent).status_code == 403
    control_plane.wait_for_audit(lambda e: e["stage"] == "ResponseComplete" and e["requestURI"] == last)

    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    findings = run_replay(allowlist, control_plane.audit_log_files())

    assert all(f["rule"]["name"] == "unusual-agent-forbidden" for f in findings)
    mine = [f for f in findings if probe in f["user_agent"]["original"]]
    assert {(f["user"]["name"], f["user_agent"]["original"]) for f in mine} == {
        ("mallory", requests_agent),
        ("mallory", peirates_agent),
    }
    assert not [f for f in findings if f["user_agent"]["original"].startswith("kubectl/")]
    assert not [f for f in mine if f["user"]["name"] == "dev-alice"]
