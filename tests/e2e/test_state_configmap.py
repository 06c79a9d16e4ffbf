"""`tail --checkpoint-configmap` on the real kube-apiserver 1.20, as the chart's source
ServiceAccount with exactly the chart's source Role (rendered by the real helm and applied,
the checkpoint ConfigMap created empty by the chart), with a TokenRequest token as a pod's.

- the copy itself: written, read back, refused on a resourceVersion conflict (and then
  overwritten), the apiserver's own 1 MiB limit, and nothing else the Role lets it touch;
- a pod rescheduled: `kill -9`, its --state directory DELETED, a new process with an empty one
  (and no --from-start, as the chart runs it) resumes from the ConfigMap: every finding of
  `replay` delivered, repeats carry the same event.id;
- a graceful failover between two `--leader-elect` replicas with separate state directories:
  SIGTERM mid-stream, the standby resumes from the final checkpoint: no finding twice.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AUDIT_LOGS
from webhook.kube.state_configmap import (
    CHECKSUM_ANNOTATION,
    KEY,
    MAX_BYTES,
    StateConfigMap,
    StateReadError,
    decode,
)
from webhook.tail.checkpoint import Checkpoint

from .charts import CHART, helm
from .harness import ControlPlane
from .procs import free_port, wait_until
from .sentinel import Finding, Sentinel, SentinelLauncher, run_replay, write_allowlist
from .webhooks import SENTINEL

WAIT_S = 90.0
SOURCE = "uas-ua-sentinel-source"
STATE = f"{SOURCE}-state"
LISTED = ["kubectl/*", "kube-*"]
SPLIT = 1420
"""The recorded log's forbidden requests by unlisted agents: 5 before this line, 4 after."""
FAST = [
    "--leader-elect-lease-duration",
    "3",
    "--leader-elect-renew-deadline",
    "2",
    "--leader-elect-retry-period",
    "0.5",
]


def _lines() -> list[bytes]:
    return [line + b"\n" for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]


@dataclass(frozen=True)
class Release:
    cp: ControlPlane
    namespace: str
    kubeconfig: Path  # the chart's source ServiceAccount

    def configmap(self, name: str = STATE) -> dict[str, Any]:
        response = self.cp.request("admin", "GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        response.raise_for_status()
        obj: dict[str, Any] = response.json()
        return obj

    def checkpoint(self) -> Checkpoint | None:
        """The copy in the ConfigMap, decoded and checked as the tailer does; None before the first."""
        obj = self.configmap()
        data = (obj.get("binaryData") or {}).get(KEY)
        if data is None:
            return None
        checksum = obj["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        return Checkpoint.from_json(decode(base64.b64decode(data), checksum))

    def api(self) -> Any:
        """A CoreV1Api authenticated as the chart's source ServiceAccount."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.CoreV1Api(client.ApiClient(configuration))


@pytest.fixture
def release(control_plane: ControlPlane, helm_binary: Path) -> Release:
    """The chart's source ServiceAccount, Role, RoleBinding and checkpoint ConfigMap, in a fresh namespace."""
    namespace = f"st-{uuid.uuid4().hex[:8]}"
    rendered = helm(
        helm_binary,
        control_plane,
        "template",
        "uas",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "source.enabled=true",
        "--set",
        "source.sources={cloudwatch:/aws/eks/e2e/cluster}",
        "--show-only",
        "templates/source.yaml",
    ).stdout
    wanted = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")
    objects = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in wanted]
    assert sorted(d["kind"] for d in objects) == sorted(wanted)
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    control_plane.apply_yaml(objects)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, SOURCE)
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    path = f"/api/v1/namespaces/{namespace}/configmaps/{STATE}"
    # The RBAC authorizer reads through an informer: wait until the Role applies (200, not 403).
    wait_until(
        lambda: (
            control_plane.request(None, "GET", path, headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        ),
        timeout=WAIT_S,
        what="the chart's source RoleBinding to take effect",
        interval=0.1,
    )
    return Release(control_plane, namespace, kubeconfig)


def test_the_copy_is_written_read_back_and_a_conflicting_writer_is_refused_then_overwritten(
    release: Release, caplog: pytest.LogCaptureFixture
) -> None:
    a = StateConfigMap(release.namespace, STATE, api=release.api(), writer="replica-a")
    assert a.load() is None  # the chart created it empty
    first = Checkpoint(position=None, stats={"lines": 1}, written_at=1.0).to_json()
    assert a.save(first) is True
    b = StateConfigMap(release.namespace, STATE, api=release.api(), writer="replica-b")
    assert b.load() == first
    labels = release.configmap()["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "source"  # the chart's labels survive an update

    second = Checkpoint(position=None, stats={"lines": 2}, written_at=2.0).to_json()
    assert a.save(second) is True  # b's resourceVersion is now stale
    with (
        caplog.at_level(logging.ERROR, logger="webhook.kube.state_configmap"),
        pytest.raises(OSError, match="409"),
    ):
        b.save(Checkpoint(position=None, stats={"lines": 3}, written_at=3.0).to_json())
    assert b.conflicts == 1
    (record,) = caplog.records
    assert "another writer" in record.getMessage()
    assert record.fields["otherWriter"] == "replica-a"  # type: ignore[attr-defined]
    assert StateConfigMap(release.namespace, STATE, api=release.api()).load() == second  # a's stands
    third = Checkpoint(position=None, stats={"lines": 3}, written_at=3.0).to_json()
    assert b.save(third) is True  # re-read: the retry overwrites
    assert release.checkpoint() == Checkpoint.from_json(third)
    assert release.configmap()["metadata"]["annotations"]["ua-sentinel.io/checkpoint-writer"] == "replica-b"


def test_the_size_limit_is_the_apiservers_and_the_role_reaches_no_other_configmap(release: Release) -> None:
    """``MAX_BYTES`` is what kube-apiserver 1.20 accepts: one byte more is refused (422)."""
    probe = StateConfigMap(release.namespace, STATE, api=release.api())
    noise = os.urandom(MAX_BYTES + 1)
    probe._write(noise[:MAX_BYTES], "x")  # exactly the limit: stored
    with pytest.raises(OSError, match="422"):
        probe._write(noise, "x")
    other = StateConfigMap(release.namespace, "someone-elses", api=release.api())
    with pytest.raises(StateReadError, match="403"):
        other.load()
    with pytest.raises(OSError, match="403"):
        other.save(b"{}")  # absent and unreadable: a create, which the Role does not allow


def _tail(
    sentinels: SentinelLauncher,
    release: Release,
    allowlist: Path,
    log: Path,
    state: Path,
    *extra: str,
    **kw: Any,
) -> Sentinel:
    return sentinels.tail(
        allowlist,
        log,
        state=state,
        kubeconfig=release.kubeconfig,
        env={"POD_NAMESPACE": release.namespace, **kw.pop("env", {})},
        extra_args=[
            "--checkpoint-configmap",
            STATE,
            "--checkpoint-interval",
            "0.2",
            "--grace",
            "0",
            "--baseline-days",
            "0",
            *extra,
        ],
        **kw,
    )


def _copy_caught_up(release: Release, log: Path) -> bool:
    checkpoint = release.checkpoint()
    if checkpoint is None or checkpoint.position is None:
        return False
    return checkpoint.position.offset == log.stat().st_size and not any(checkpoint.backlog.values())


def _metrics(port: int) -> dict[str, float]:
    """Unlabelled samples of the tail's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = (line.split(" ") for line in text.splitlines() if line and not line.startswith("#"))
    return {parts[0]: float(parts[1]) for parts in samples if len(parts) == 2 and "{" not in parts[0]}


def _chosen(tail: Sentinel) -> dict[str, Any]:
    return tail.wait_for_log(
        lambda r: r.get("msg") == "checkpoint chosen", timeout=WAIT_S, what="its checkpoint"
    )


@pytest.mark.parametrize(
    "copied",
    ["after-each-batch", "only-at-start"],
)
def test_a_pod_rescheduled_without_its_state_directory_resumes_from_the_configmap(
    release: Release, sentinels: SentinelLauncher, tmp_path: Path, copied: str
) -> None:
    """``after-each-batch``: the copy is caught up when the pod dies, the new pod reads on.
    ``only-at-start`` (a checkpoint interval of an hour): the copy holds the start of the log, so the
    new pod reads everything again: every finding of the first pod repeats, with its event.id."""
    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    lines = _lines()
    log.write_bytes(b"".join(lines[:SPLIT]))
    before = run_replay(allowlist, [log])
    first_state = tmp_path / "pod-1-state"
    interval = ["--checkpoint-interval", "3600"] if copied == "only-at-start" else []
    first = _tail(sentinels, release, allowlist, log, first_state, *interval, from_start=True)
    wait_until(
        lambda: len(first.findings()) == len(before),
        timeout=WAIT_S,
        what="the first pod's findings",
        interval=0.1,
    )
    if copied == "after-each-batch":
        wait_until(
            lambda: _copy_caught_up(release, log), timeout=WAIT_S, what="the copy to catch up", interval=0.1
        )

    os.killpg(first.process.pid, signal.SIGKILL)  # the pod dies, and its emptyDir with it
    assert first.stop() == -signal.SIGKILL
    for path in sorted(first_state.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    first_state.rmdir()
    with log.open("ab") as handle:  # more arrives while no pod reads
        handle.write(b"".join(lines[SPLIT:]))

    # The chart's pod: no --from-start; without the copy it would start at the end of the log.
    port = free_port()
    second = _tail(
        sentinels,
        release,
        allowlist,
        log,
        tmp_path / "pod-2-state",
        "--metrics-port",
        str(port),
        from_start=False,
    )
    chosen = _chosen(second)
    assert chosen["source"] == "configmap" and chosen.get("localWrittenAt") is None
    wait_until(
        lambda: _copy_caught_up(release, log), timeout=WAIT_S, what="the new pod to catch up", interval=0.1
    )
    metrics = _metrics(port)
    assert metrics["ua_sentinel_tail_checkpoint_configmap_oversize_total"] == 0
    assert metrics["ua_sentinel_tail_checkpoint_configmap_conflicts_total"] == 0
    if copied == "only-at-start":  # it read everything again: it has copied its own checkpoints
        assert metrics["ua_sentinel_tail_checkpoint_configmap_writes_total"] >= 1
        assert 0 < metrics["ua_sentinel_tail_checkpoint_configmap_bytes"] < MAX_BYTES
    assert second.stop() == 0
    # Another reschedule with nothing new to read: its first and last checkpoints are the same
    # content, so the copy is not written again (resourceVersion unchanged).
    version = release.configmap()["metadata"]["resourceVersion"]
    third = _tail(sentinels, release, allowlist, log, tmp_path / "pod-3-state", from_start=False)
    third.wait_for_log(lambda r: r.get("msg") == "tailing", timeout=WAIT_S, what="the third pod to read")
    assert third.stop() == 0 and not third.findings()
    assert release.configmap()["metadata"]["resourceVersion"] == version

    delivered: list[Finding] = first.findings() + second.findings()
    expected = run_replay(allowlist, [log])
    assert len(before) < len(expected)
    assert {f["event"]["id"] for f in delivered} == {f["event"]["id"] for f in expected}
    counts = Counter((f["event"]["id"], f["event"]["sequence"]) for f in delivered)
    repeats = sum(counts.values()) - len(counts)
    print(f"{copied}: {len(expected)} by replay, {len(delivered)} delivered, {repeats} repeated (same id)")
    assert all(n <= 2 for n in counts.values()), counts
    if copied == "only-at-start":
        assert repeats == len(before)  # read again from the start: each repeat is identical
        assert sorted(map(json.dumps, second.findings()[: len(before)])) == sorted(
            map(json.dumps, first.findings())
        )
    assert "Traceback" not in first.stderr + second.stderr


@pytest.mark.parametrize("edited", [False, True], ids=["plain", "configmap-edited-before-stop"])
def test_a_graceful_failover_between_replicas_with_their_own_state_repeats_nothing(
    release: Release, sentinels: SentinelLauncher, tmp_path: Path, edited: bool
) -> None:
    """``edited``: someone else writes the ConfigMap just before the SIGTERM, so the leader's final
    copy meets a resourceVersion conflict: it says so, reads the object again and retries."""
    allowlist = write_allowlist(tmp_path / "allowlist.yaml", LISTED)
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    lines = _lines()
    log.write_bytes(b"".join(lines[:SPLIT]))
    election = ["--leader-elect", "--leader-elect-lease", SOURCE, *FAST]

    def replica(name: str, *extra: str) -> Sentinel:
        state = tmp_path / f"{name}-state"  # each pod's own emptyDir
        return _tail(
            sentinels,
            release,
            allowlist,
            log,
            state,
            *election,
            *extra,
            from_start=True,
            env={"POD_NAME": name},
        )

    # The leader checkpoints when it starts and when it stops, never in between: what the standby
    # resumes from is the final checkpoint, written before the Lease is handed back.
    leader = replica("replica-a", "--checkpoint-interval", "3600")
    leader.wait_for_log(lambda r: r.get("msg") == "tailing", timeout=WAIT_S, what="replica-a to read")
    standby = replica("replica-b")
    standby.wait_for_log(
        lambda r: r.get("msg") == "lease held by another", timeout=WAIT_S, what="replica-b to stand by"
    )
    leader.wait_for_finding(lambda f: True, timeout=WAIT_S, what="replica-a's first finding")

    with log.open("ab") as handle:  # more arrives; the leader is stopped (a rolling update, a drain)
        handle.write(b"".join(lines[SPLIT:]))
    if edited:
        response = release.cp.request(
            "admin",
            "PATCH",
            f"/api/v1/namespaces/{release.namespace}/configmaps/{STATE}",
            json={"metadata": {"annotations": {"ua-sentinel.io/checkpoint-writer": "someone-else"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()
    assert leader.stop() == 0  # SIGTERM: drain, final checkpoint (local + ConfigMap), hand back the Lease
    conflicts = [r for r in leader.log_records() if "another writer" in r.get("msg", "")]
    assert [(r["level"], r["otherWriter"]) for r in conflicts] == (
        [("error", "someone-else")] if edited else []
    )

    standby.wait_for_log(lambda r: r.get("msg") == "lease acquired", timeout=WAIT_S, what="replica-b to lead")
    chosen = _chosen(standby)
    assert chosen["source"] == "configmap"
    wait_until(
        lambda: _copy_caught_up(release, log), timeout=WAIT_S, what="replica-b to catch up", interval=0.1
    )
    assert standby.stop() == 0

    delivered: list[Finding] = leader.findings() + standby.findings()
    expected = run_replay(allowlist, [log])
    counts = Counter((f["event"]["id"], f["event"]["sequence"]) for f in delivered)
    assert sorted(counts) == sorted((f["event"]["id"], f["event"]["sequence"]) for f in expected)
    assert all(n == 1 for n in counts.values()), counts  # nothing twice
    assert "Traceback" not in leader.stderr + standby.stderr


def test_a_checkpoint_configmap_it_may_not_read_stops_it_with_one_line(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Starting without the copy could skip events (a fresh pod would start at the end): exit 1."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_lines()[:10]))
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env |= {"KUBECONFIG": str(control_plane.kubeconfig("mallory")), "POD_NAMESPACE": "default"}
    done = subprocess.run(
        [
            str(SENTINEL),
            "tail",
            "--state",
            str(tmp_path / "state"),
            "--checkpoint-configmap",
            STATE,
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if not x.startswith("{")]
    assert f"--checkpoint-configmap default/{STATE}: cannot read it: 403" in line
    assert "RBAC: the Role needs get on this ConfigMap" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "checkpoint.json").exists()  # nothing read, nothing written
