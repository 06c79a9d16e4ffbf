"""The real `ua-sentinel tail` following the audit log the real apiserver writes and rotates."""

from __future__ import annotations

import uuid
from pathlib import Path

from .harness import ControlPlane, ControlPlaneFactory
from .sentinel import Finding, Sentinel, SentinelLauncher, write_allowlist

RULE = "unusual-agent-forbidden"
LISTED = ["kubectl/*", "kube-apiserver/*", "filler/*"]


def _probe(cp: ControlPlane, label: str) -> str:
    """One forbidden list of secrets by mallory with a fresh python-requests agent; returns the agent."""
    agent = f"python-requests/2.34.2 {label}-{uuid.uuid4().hex[:8]}"
    assert (
        cp.request("mallory", "GET", "/api/v1/namespaces/kube-system/secrets", user_agent=agent).status_code
        == 403
    )
    return agent


def _rotate(cp: ControlPlane) -> None:
    """Sends listed-agent requests until the apiserver rotates audit.log (maxsize 1 MB)."""
    before = set(cp.audit_log_files())
    with cp.client("admin", user_agent="filler/1 " + "x" * 900) as client:
        for i in range(3000):
            if set(cp.audit_log_files()) != before:
                return
            client.get(f"/api/v1/namespaces/team/configmaps/absent-{i}")
    raise AssertionError("no rotation after 3000 requests")


def _wait(tail: Sentinel, agent: str) -> Finding:
    return tail.wait_for_finding(
        lambda f: f["rule"]["name"] == RULE and f["user_agent"]["original"] == agent,
        timeout=30,
        what=f"the tailer's finding for {agent}",
    )


def test_tail_follows_rotation_and_resumes_from_its_checkpoint(
    control_plane_factory: ControlPlaneFactory, sentinels: SentinelLauncher, tmp_path: Path
) -> None:
    cp = control_plane_factory()
    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    early = _probe(cp, "early")  # before the tailer starts: --from-start must read it
    tail = sentinels.tail(allowlist, cp.audit_log, from_start=True)
    _wait(tail, early)

    live = _probe(cp, "live")
    _wait(tail, live)
    _rotate(cp)
    after_rotation = _probe(cp, "rotated")
    found = _wait(tail, after_rotation)
    assert found["user"]["name"] == "mallory"
    assert found["kubernetes"]["audit"]["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert not [f for f in tail.findings() if f["user_agent"]["original"].startswith(("kubectl/", "filler/"))]
    first_run = {(f["event"]["id"], f["event"]["sequence"]) for f in tail.findings()}
    tail.stop()

    while_down = _probe(cp, "while-down")  # written while no tailer runs
    resumed = sentinels.tail(allowlist, cp.audit_log, state=tail.workdir / "state", from_start=False)
    _wait(resumed, while_down)
    # At-least-once: anything repeated from before the restart carries the same id and sequence.
    old_agents = {early, live, after_rotation}
    repeats = {
        (f["event"]["id"], f["event"]["sequence"])
        for f in resumed.findings()
        if f["user_agent"]["original"] in old_agents
    }
    assert repeats <= first_run
