"""Two real `ua-sentinel tail --leader-elect` replicas on one Lease of the real kube-apiserver 1.20,
each as the chart's source ServiceAccount with exactly the chart's source Role (rendered by the
real helm and applied), authenticated with a TokenRequest token as a pod's would be.

They share the audit log and the --state directory (what the new leader resumes from). Only
the holder of the Lease reads: the standby waits for the Lease *before* it locks the state
directory (otherwise it would fail with StateLocked). `kill -9` of the leader hands over after
the lease expires; the union of findings equals `ua-sentinel replay`'s, and repeats (at least
once) carry the same event.id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AUDIT_LOGS

from .charts import CHART, helm
from .harness import ControlPlane, ControlPlaneFactory
from .procs import wait_until
from .sentinel import Finding, Sentinel, SentinelLauncher, run_replay, write_allowlist
from .webhooks import SENTINEL

WAIT_S = 90.0
LEASE = "uas-ua-sentinel-source"
# Short durations so the test is quick; the order (duration > deadline > 1.2 x retry) is client-go's.
FAST = [
    "--leader-elect-lease-duration",
    "3",
    "--leader-elect-renew-deadline",
    "2",
    "--leader-elect-retry-period",
    "0.5",
]
# A frozen apiserver: each call may hang until its timeout. lease 4 > 0.5 + 2 (the holder's latest
# exit); three calls of 2 s each (timeouts of the whole deadline) would take it past 4.
HANG = [
    "--leader-elect-lease-duration",
    "4",
    "--leader-elect-renew-deadline",
    "2",
    "--leader-elect-retry-period",
    "0.5",
]
LISTED = ["kubectl/*", "kube-*"]
SPLIT = 1420
"""The recorded log's forbidden requests by unlisted agents: 5 before this line, 4 after."""


def _lines() -> list[bytes]:
    return [line + b"\n" for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]


@dataclass(frozen=True)
class Release:
    namespace: str
    kubeconfig: Path  # the chart's source ServiceAccount


@pytest.fixture
def release(control_plane: ControlPlane, helm_binary: Path) -> Release:
    """The chart's source ServiceAccount, Role and RoleBinding in a fresh namespace."""
    namespace = f"le-{uuid.uuid4().hex[:8]}"
    values = ["--set", "source.enabled=true", "--set", "source.sources={cloudwatch:/aws/eks/e2e/cluster}"]
    rendered = helm(
        helm_binary,
        control_plane,
        "template",
        "uas",
        str(CHART),
        "-n",
        namespace,
        *values,
        "--show-only",
        "templates/source.yaml",
    ).stdout
    rbac = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")
    ]
    assert len(rbac) == 3
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    control_plane.apply_yaml(rbac)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, LEASE)
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    # The RBAC authorizer reads through an informer: wait until the Role applies (404, not 403).
    wait_until(
        lambda: (
            control_plane.request(None, "GET", path, headers={"Authorization": f"Bearer {token}"}).status_code
            == 404
        ),
        timeout=WAIT_S,
        what="the chart's source RoleBinding to take effect",
        interval=0.1,
    )
    return Release(namespace, kubeconfig)


def _lease(cp: ControlPlane, namespace: str) -> dict[str, Any] | None:
    response = cp.request(
        "admin", "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    spec: dict[str, Any] = response.json()["spec"]
    return spec


def _replica(
    sentinels: SentinelLauncher,
    release: Release,
    name: str,
    allowlist: Path,
    log: Path,
    state: Path,
) -> Sentinel:
    return sentinels.tail(
        allowlist,
        log,
        state=state,
        from_start=True,
        kubeconfig=release.kubeconfig,
        env={"POD_NAME": name, "POD_NAMESPACE": release.namespace},
        extra_args=[
            "--leader-elect",
            "--leader-elect-lease",
            LEASE,
            *FAST,
            "--checkpoint-interval",
            "0.2",
            "--grace",
            "0",
            "--baseline-days",
            "0",
        ],
    )


def _reading_and_renewing(leader: Sentinel, cp: ControlPlane, namespace: str) -> None:
    """Wait until ``leader`` (replica-a) reads and has renewed the Lease at least once."""
    leader.wait_for_log(lambda r: r.get("msg") == "tailing", timeout=WAIT_S, what="replica-a to read")
    first = _lease(cp, namespace)
    assert first is not None
    wait_until(
        lambda: (_lease(cp, namespace) or {}).get("renewTime") != first["renewTime"],
        timeout=WAIT_S,
        what="replica-a to renew its lease",
        interval=0.1,
    )


def _logged(tail: Sentinel, msg: str) -> list[dict[str, Any]]:
    return [r for r in tail.log_records() if r.get("msg") == msg]


def _caught_up(state: Path, log: Path) -> bool:
    try:
        checkpoint = json.loads((state / "checkpoint.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    position = checkpoint.get("position") or {}
    return bool(
        position.get("offset") == log.stat().st_size and not any(checkpoint.get("backlog", {}).values())
    )


def test_only_the_lease_holder_reads_and_after_kill_9_the_standby_resumes_from_the_shared_state(
    control_plane: ControlPlane, sentinels: SentinelLauncher, release: Release, tmp_path: Path
) -> None:
    cp, namespace = control_plane, release.namespace
    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    log, state = tmp_path / "logs" / "audit.log", tmp_path / "state"
    log.parent.mkdir()
    lines = _lines()
    first, second = lines[:SPLIT], lines[SPLIT:]
    log.write_bytes(b"".join(first))

    leader = _replica(sentinels, release, "replica-a", allowlist, log, state)
    leader.wait_for_log(lambda r: r.get("msg") == "tailing", timeout=WAIT_S, what="replica-a to read")
    standby = _replica(sentinels, release, "replica-b", allowlist, log, state)
    standby.wait_for_log(
        lambda r: r.get("msg") == "lease held by another" and r.get("holder") == "replica-a",
        timeout=WAIT_S,
        what="replica-b to wait for the lease held by replica-a",
    )
    wait_until(lambda: _caught_up(state, log), timeout=WAIT_S, what="replica-a to catch up", interval=0.1)
    standby.process.check_alive()  # it did not touch the locked state directory
    assert not _logged(standby, "tailing") and not standby.findings()
    held = _lease(cp, namespace)
    assert held is not None and held["holderIdentity"] == "replica-a" and held["leaseDurationSeconds"] == 3
    leader.wait_for_finding(lambda f: True, timeout=WAIT_S, what="replica-a's first finding")

    # The second half arrives; the leader dies at once, mid-read (nothing graceful runs).
    with log.open("ab") as handle:
        handle.write(b"".join(second))
    os.killpg(leader.process.pid, signal.SIGKILL)
    assert leader.stop() == -signal.SIGKILL

    standby.wait_for_log(lambda r: r.get("msg") == "lease acquired", timeout=WAIT_S, what="replica-b to lead")
    wait_until(lambda: _caught_up(state, log), timeout=WAIT_S, what="replica-b to catch up", interval=0.1)
    taken = _lease(cp, namespace)
    assert taken is not None and taken["holderIdentity"] == "replica-b" and taken["leaseTransitions"] == 1
    assert standby.stop() == 0
    released = _lease(cp, namespace)
    assert released is not None and released.get("holderIdentity", "") == ""  # handed back on SIGTERM

    delivered: list[Finding] = leader.findings() + standby.findings()
    expected = run_replay(allowlist, [log])
    assert {f["event"]["id"] for f in delivered} == {f["event"]["id"] for f in expected}
    counts = Counter((f["event"]["id"], f["event"]["sequence"]) for f in delivered)
    repeats = sum(n - 1 for n in counts.values())
    print(f"findings: {len(expected)} by replay, {len(delivered)} delivered, {repeats} repeated (same id)")
    assert all(n <= 2 for n in counts.values()), counts  # one handover: at most one repeat each
    assert "Traceback" not in leader.stderr + standby.stderr


def test_a_leader_whose_lease_is_taken_exits_before_reading_on(
    control_plane: ControlPlane, sentinels: SentinelLauncher, release: Release, tmp_path: Path
) -> None:
    """client-go's OnStoppedLeading: renewal that fails for the renew deadline ends the process
    (exit 3); in a pod it restarts and waits as a standby."""
    cp, namespace = control_plane, release.namespace
    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_lines()[:10]))
    leader = _replica(sentinels, release, "replica-a", allowlist, log, tmp_path / "state")
    _reading_and_renewing(leader, cp, namespace)
    leader.process.check_alive()
    response = cp.request(
        "admin",
        "PATCH",
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}",
        json={"spec": {"holderIdentity": "replica-elsewhere", "leaseDurationSeconds": 3600}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    response.raise_for_status()
    wait_until(lambda: not leader.process.running(), timeout=WAIT_S, what="replica-a to exit", interval=0.1)
    assert leader.process.returncode == 3
    lost = _logged(leader, "lease lost; stopping")
    assert lost and lost[0]["holder"] == "replica-elsewhere" and lost[0]["level"] == "error"


def test_a_replica_the_lease_api_refuses_says_so_and_keeps_waiting(
    control_plane: ControlPlane, sentinels: SentinelLauncher, tmp_path: Path
) -> None:
    """Missing RBAC must not look like a quiet standby: one warning naming the status."""
    namespace = f"le-{uuid.uuid4().hex[:8]}"
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_lines()[:10]))
    replica = sentinels.tail(
        write_allowlist(tmp_path / "allowlist.yaml", LISTED),
        log,
        kubeconfig=control_plane.kubeconfig("mallory"),  # no rights at all
        env={"POD_NAME": "replica-a", "POD_NAMESPACE": namespace},
        extra_args=["--leader-elect", "--leader-elect-lease", LEASE, *FAST],
    )
    warning = replica.wait_for_log(
        lambda r: r.get("msg") == "lease unavailable; retrying", timeout=WAIT_S, what="the refusal"
    )
    assert warning["level"] == "warning" and warning["status"] == 403
    assert warning["lease"] == f"{namespace}/{LEASE}"
    replica.process.check_alive()
    assert not _logged(replica, "tailing")
    assert len(_logged(replica, "lease unavailable; retrying")) == 1
    assert replica.stop() == 0  # SIGTERM while waiting: a clean exit, nothing to hand back


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--leader-elect-lease", "ns/lease"], "--leader-elect-lease needs --leader-elect"),
        (["--leader-elect", "--leader-elect-lease", "a/b/c"], "--leader-elect-lease: 'a/b/c': expected"),
        (
            ["--leader-elect", "--leader-elect-lease-duration", "10", "--leader-elect-renew-deadline", "10"],
            "the lease duration (10 s) must exceed the renew deadline (10.0 s)",
        ),
        (
            ["--leader-elect", "--leader-elect-renew-deadline", "2", "--leader-elect-retry-period", "2"],
            "must exceed 1.2 x the retry period (2.0 s)",
        ),
        (["--leader-elect"], "--leader-elect: no Kubernetes API access"),
    ],
)
def test_leader_election_mistakes_are_one_line_and_exit_1(
    tmp_path: Path, args: list[str], message: str
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env |= {"KUBECONFIG": str(tmp_path / "absent-kubeconfig"), "POD_NAMESPACE": "ns"}
    done = subprocess.run(
        [str(SENTINEL), "tail", "--state", str(tmp_path / "state"), *args, str(log)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # nothing locked or written before the Lease


def test_a_leader_whose_apiserver_hangs_stops_before_its_lease_could_expire(
    control_plane_factory: ControlPlaneFactory, sentinels: SentinelLauncher, tmp_path: Path
) -> None:
    """The apiserver is frozen (SIGSTOP) under a renewing leader. No API call may outlive the
    renew deadline, so the leader exits before a standby could take the lease: its `lease lost`
    comes before the last renewTime it wrote plus the lease duration (both on this host's clock)."""
    cp = control_plane_factory()
    namespace = f"le-{uuid.uuid4().hex[:8]}"
    cp.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_lines()[:10]))
    leader = sentinels.tail(
        write_allowlist(tmp_path / "allowlist.yaml", LISTED),
        log,
        kubeconfig=cp.kubeconfig("admin"),
        env={"POD_NAME": "replica-a", "POD_NAMESPACE": namespace},
        extra_args=["--leader-elect", "--leader-elect-lease", LEASE, *HANG],
    )
    _reading_and_renewing(leader, cp, namespace)
    os.kill(cp.apiserver.pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: not leader.process.running(), timeout=WAIT_S, what="replica-a to exit", interval=0.1
        )
    finally:
        os.kill(cp.apiserver.pid, signal.SIGCONT)
    assert leader.process.returncode == 3
    (lost,) = _logged(leader, "lease lost; stopping")
    last = _lease(cp, namespace)
    assert last is not None and last["holderIdentity"] == "replica-a"
    renewed = datetime.fromisoformat(last["renewTime"].replace("Z", "+00:00"))
    exited = datetime.fromisoformat(lost["ts"])
    assert exited < renewed + timedelta(seconds=last["leaseDurationSeconds"]), (renewed, exited)
