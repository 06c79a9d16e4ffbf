"""Faults of the Kubernetes API under `serve --allowlist-configmap`, on a REAL kube-apiserver
(the e2e harness: etcd + kube-apiserver 1.20, built once and cached): the allowlist ConfigMap
deleted, and the API server unreachable for the watch (its process stopped, then restarted).

Stated behaviour: the last good allowlist stays in force and the service keeps answering
(admission verdicts and findings), the problem is logged and shown in /readyz; when the
ConfigMap or the API server comes back, the watch picks up the change.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.harness import ControlPlane
from tests.e2e.tools import ToolError, ensure_binaries
from tests.hardening.audit_events import event_list, forbidden, review, write_request
from tests.hardening.conftest import Launch
from tests.hardening.faults import RULE
from tests.integration.server import ServeProcess, wait_for

NAMESPACE, NAME = "ua-sentinel", "allowlist"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        binaries = ensure_binaries(progress=sys.stderr)
    except ToolError as exc:
        pytest.fail(f"could not get the control-plane binaries: {exc}", pytrace=False)
    with ControlPlane(binaries, tmp_path_factory.mktemp("control-plane")) as cp:
        yield cp


def set_allowlist(cp: ControlPlane, agents: list[str]) -> None:
    cp.apply_yaml(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "data": {"allowlist.yaml": yaml.safe_dump({"agents": agents})},
            },
        ]
    )


def readyz(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    with server.client() as client:
        answer = client.get("/readyz")
    return answer.status_code, answer.json()


def verdict(server: ServeProcess, agent: str) -> str:
    """The admission verdict for a fresh write made with ``agent`` (its audit event sent first)."""
    user, uid = f"u-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with server.client() as client:
        assert (
            client.post("/audit", json=event_list(write_request("cm", agent, user=user, uid=uid))).status_code
            == 200
        )
        answer = client.post("/validate", json=review("cm", user=user, uid=uid))
    assert answer.status_code == 200
    result: str = answer.json()["response"]["auditAnnotations"]["user-agent-verdict"]
    return result


def probe_finds(server: ServeProcess, user: str) -> None:
    with server.client() as client:
        assert client.post("/audit", json=event_list(forbidden("curl/8.5.0", user=user))).status_code == 200
    wait_for(
        lambda: user in {f["user"]["name"] for f in server.findings() if f["rule"]["name"] == RULE},
        timeout=20,
        what=f"the finding for {user}",
    )


def watching(launch: Launch, cp: ControlPlane) -> ServeProcess:
    server = launch("--allowlist-configmap", f"{NAMESPACE}/{NAME}", KUBECONFIG=str(cp.kubeconfig("admin")))
    wait_for(lambda: readyz(server)[0] == 200, timeout=30, what="the ConfigMap allowlist to load")
    return server


def test_allowlist_configmap_deleted(launch: Launch, control_plane: ControlPlane) -> None:
    cp = control_plane
    set_allowlist(cp, ["kubectl/*", "kc-custom/*"])
    server = watching(launch, cp)
    loaded = readyz(server)[1]["allowlist"]
    assert f"configmap {NAMESPACE}/{NAME}" in loaded["source"]
    assert verdict(server, "kc-custom/1.0") == "listed"  # not in the built-in list: the ConfigMap's

    cp.kubectl("admin", "delete", "configmap", NAME, "-n", NAMESPACE)
    wait_for(
        lambda: "not found" in (readyz(server)[1]["allowlist"]["lastError"] or ""),
        timeout=30,
        what="the deletion to be seen",
    )
    code, doc = readyz(server)
    assert code == 200 and doc["allowlist"]["hash"] == loaded["hash"]  # the last good one, in force
    assert "keeping the last good allowlist" in doc["allowlist"]["lastError"]
    refused = [line for line in server.logs() if line.get("msg") == "allowlist refused"]
    assert refused and "not found" in refused[-1]["reason"]
    assert verdict(server, "kc-custom/1.0") == "listed"
    assert verdict(server, "python-requests/2.31.0") != "listed"
    probe_finds(server, "prober-cm-deleted")  # no finding lost
    assert server.metric("ua_sentinel_allowlist_last_reload_failed") == 1

    set_allowlist(cp, ["kubectl/*", "kc-custom/*", "kc-recreated/*"])
    wait_for(
        lambda: verdict(server, "kc-recreated/2.0") == "listed", timeout=30, what="the recreated ConfigMap"
    )
    assert readyz(server)[1]["allowlist"]["lastError"] is None


def test_api_server_unreachable_for_the_watch(launch: Launch, control_plane: ControlPlane) -> None:
    cp = control_plane
    set_allowlist(cp, ["kubectl/*", "kc-custom/*"])
    server = watching(launch, cp)
    wait_for(lambda: verdict(server, "kc-custom/1.0") == "listed", timeout=30, what="the allowlist")
    hash_before = readyz(server)[1]["allowlist"]["hash"]

    cp.apiserver.stop(5)  # the watch's connection drops; lists are refused
    try:
        wait_for(
            lambda: any(line.get("msg") == "allowlist watch failed; retrying" for line in server.logs()),
            timeout=30,
            what="the watch failure to be logged",
        )
        for _ in range(3):  # the service keeps answering with the last good allowlist
            assert verdict(server, "kc-custom/1.0") == "listed"
            code, doc = readyz(server)
            assert code == 200 and doc["allowlist"]["hash"] == hash_before
        probe_finds(server, "prober-api-down")
        failures = [line for line in server.logs() if line.get("msg") == "allowlist watch failed; retrying"]
        assert all("retryIn" in line for line in failures)
    finally:
        cp.restart()

    set_allowlist(cp, ["kubectl/*", "kc-custom/*", "kc-after-outage/*"])
    wait_for(
        lambda: verdict(server, "kc-after-outage/1.0") == "listed",
        timeout=90,
        what="the watch to resume after the API server came back",
        interval=0.5,
    )
    assert server.process is not None and server.process.poll() is None
    probe_finds(server, "prober-api-back")
