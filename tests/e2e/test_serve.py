"""The real `ua-sentinel serve` wired to the real apiserver (audit webhook in batch mode + a
ValidatingWebhookConfiguration, both with the apiserver's client certificate): admission
warnings, enforce mode, /audit detection and correlation, outage safety, live allowlist ConfigMap."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from .auditlog import AuditEvent
from .harness import ControlPlane, ControlPlaneFactory
from .procs import free_port, wait_until
from .sentinel import Finding, SentinelLauncher, SentinelServer, write_allowlist
from .webhooks import WebhookTLS, validating_webhook_configuration

LISTED = ["kubectl/*", "kubectl-dispatcher/*", "kube-apiserver/*"]
RULE = "unusual-agent-forbidden"
ALLOWLIST_CM = ("ua-sentinel", "allowlist")


class Wired(Protocol):
    def __call__(
        self, *, allowlist_in_configmap: bool = False, **serve_options: Any
    ) -> tuple[SentinelServer, ControlPlane]: ...


@pytest.fixture
def wired(
    control_plane_factory: ControlPlaneFactory,
    sentinels: SentinelLauncher,  # set up after the factory, so servers stop before control planes
    webhook_tls: WebhookTLS,
    tmp_path: Path,
) -> Wired:
    """wired(**serve options) -> (server, control plane) whose /audit and /validate go to it.

    Servers are stopped before the control plane (fixtures tear down in reverse order), so the
    apiserver has no open watch to drain.

    The allowlist lists LISTED, from a file or (allowlist_in_configmap) from ConfigMap
    ua-sentinel/allowlist that the server watches with admin's kubeconfig.
    """

    def make(*, allowlist_in_configmap: bool = False, **options: Any) -> tuple[SentinelServer, ControlPlane]:
        port = free_port()
        cp = control_plane_factory(
            audit_webhook_url=f"https://127.0.0.1:{port}/audit",
            webhook_ca=webhook_tls.ca,
            client_cert=webhook_tls.apiserver_client,
        )
        if allowlist_in_configmap:
            set_allowlist_configmap(cp, LISTED)
            options.update(allowlist_configmap="/".join(ALLOWLIST_CM), kubeconfig=cp.kubeconfig("admin"))
        else:
            options.setdefault("allowlist", write_allowlist(tmp_path / "allowlist.yaml", LISTED))
        server = sentinels.server(port=port, **options)
        cp.apply_yaml(
            validating_webhook_configuration("ua-sentinel", server.validate_url, webhook_tls.ca_bundle)
        )
        return server, cp

    return make


def set_allowlist_configmap(cp: ControlPlane, agents: list[str] | None, *, text: str | None = None) -> None:
    namespace, name = ALLOWLIST_CM
    data = text if text is not None else yaml.safe_dump({"agents": agents})
    cp.apply_yaml(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"allowlist.yaml": data},
            },
        ]
    )


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _verdict(event: AuditEvent) -> str | None:
    annotations: dict[str, str] = event.get("annotations", {})
    return next((v for k, v in annotations.items() if k.endswith("/user-agent-verdict")), None)


def _completed(cp: ControlPlane, name: str) -> AuditEvent:
    return cp.wait_for_audit(
        lambda e: e["stage"] == "ResponseComplete" and e.get("objectRef", {}).get("name") == name,
        what=f"the audit event of {name}",
    )


def _ours(agent: str) -> Any:
    return lambda f: f["rule"]["name"] == RULE and f["user_agent"]["original"] == agent


def test_warn_mode_kubectl_prints_a_warning_for_an_unlisted_agent(wired: Wired) -> None:
    _, cp = wired(mode="warn")
    listed, unlisted = _unique("listed"), _unique("unlisted")

    quiet = cp.kubectl("dev-alice", "create", "configmap", listed, "-n", "team")
    loud = cp.kubectl("dev-alice", "create", "configmap", unlisted, "-n", "team", user_agent="kc-renamed")

    assert "Warning" not in quiet.stderr
    assert "Warning:" in loud.stderr and "kc-renamed/v1.20.2" in loud.stderr
    assert _verdict(_completed(cp, listed)) == "listed"
    assert _verdict(_completed(cp, unlisted)) == "unlisted"


def test_enforce_mode_denies_an_unlisted_agent_but_not_system_masters(wired: Wired) -> None:
    _, cp = wired(mode="enforce")
    name = _unique("enforce")

    denied = cp.kubectl(
        "dev-alice", "create", "configmap", name, "-n", "team", user_agent="kc-renamed", check=False
    )
    assert denied.returncode != 0
    assert "denied the request" in denied.stderr and "kc-renamed" in denied.stderr
    assert cp.kubectl("admin", "get", "configmap", name, "-n", "team", check=False).returncode != 0

    cp.kubectl("dev-alice", "create", "configmap", name, "-n", "team")  # listed agent: allowed
    cp.kubectl("admin", "create", "configmap", _unique("masters"), "-n", "team", user_agent="kc-renamed")


def test_audit_feed_finds_forbidden_unlisted_agents_only(wired: Wired) -> None:
    server, cp = wired()
    listed_probe = cp.kubectl("mallory", "get", "secrets", "-n", "kube-system", check=False)
    assert listed_probe.returncode != 0
    agent = f"python-requests/2.34.2 {_unique('e2e')}"

    response = cp.request("mallory", "GET", "/api/v1/namespaces/kube-system/secrets", user_agent=agent)

    assert response.status_code == 403
    finding = server.wait_for_finding(_ours(agent), what="the finding for mallory's probe")
    assert finding["user"]["name"] == "mallory"
    assert finding["event"]["kind"] == "alert"
    assert finding["kubernetes"]["audit"]["annotations"]["authorization.k8s.io/decision"] == "forbid"
    # kubectl's refusal came earlier and is listed: no finding about it.
    assert not [f for f in server.findings() if f["user_agent"]["original"].startswith("kubectl/")]


def test_finding_is_escalated_when_the_unlisted_agent_also_acted(wired: Wired) -> None:
    server, cp = wired()
    cp.kubectl("dev-alice", "create", "configmap", _unique("acted"), "-n", "team", user_agent="kc-escalate")
    refused = cp.kubectl(
        "dev-alice",
        "create",
        "configmap",
        _unique("probe"),
        "-n",
        "default",
        user_agent="kc-escalate",
        check=False,
    )
    assert refused.returncode != 0

    def escalated(f: Finding) -> bool:
        return bool(f["rule"]["name"] == RULE and f["user_agent"]["original"].startswith("kc-escalate/"))

    finding = server.wait_for_finding(escalated, what="the escalated finding")
    assert finding["user"]["name"] == "dev-alice"
    assert finding["ua_sentinel"]["related"]
    assert finding["ua_sentinel"]["escalated"] is True


def test_outage_cluster_keeps_working_and_detection_resumes(wired: Wired) -> None:
    server, cp = wired()
    server.stop()

    for _ in range(5):  # webhook unreachable: failurePolicy Ignore, audit webhook in batch mode
        result = cp.kubectl(
            "dev-alice", "create", "configmap", _unique("outage"), "-n", "team", user_agent="kc-renamed"
        )
        assert "Warning" not in result.stderr
    cp.apiserver.check_alive()

    server.start()
    agent = f"curl/7.88.1 {_unique('resumed')}"
    assert cp.request("mallory", "GET", "/api/v1/secrets", user_agent=agent).status_code == 403
    server.wait_for_finding(_ours(agent), what="a finding after the restart")
    loud = cp.kubectl(
        "dev-alice", "create", "configmap", _unique("back"), "-n", "team", user_agent="kc-renamed"
    )
    assert "Warning:" in loud.stderr


def test_allowlist_configmap_edits_apply_live_and_a_bad_edit_keeps_the_last_good(wired: Wired) -> None:
    server, cp = wired(allowlist_in_configmap=True)

    def warned() -> bool:
        name = _unique("live")
        result = cp.kubectl("dev-alice", "create", "configmap", name, "-n", "team", user_agent="kc-renamed")
        return "Warning:" in result.stderr

    assert warned()
    set_allowlist_configmap(cp, [*LISTED, "kc-renamed/*"])
    wait_until(lambda: not warned(), timeout=30, what="the allowlist edit to take effect", interval=0.5)

    set_allowlist_configmap(cp, None, text="agents: [unterminated\n")
    for _ in range(3):  # the broken edit is rejected; kc-renamed stays listed
        assert not warned()
    # SIGTERM ends it gracefully (uvicorn re-raises the signal after shutdown), with no SIGKILL.
    assert server.stop() in (0, -signal.SIGTERM), f"no clean exit on SIGTERM:\n{server.stderr[-2000:]}"
