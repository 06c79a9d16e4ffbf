"""Acceptance on the real kube-apiserver: an existing audit policy merged by
`ua-sentinel apiserver-config --policy` records what it recorded before, and the join and
detection work through it.

The same request script runs twice, each time on a fresh control plane wired to a real
`ua-sentinel serve`: once with the original policy (tests/data/policies/realistic.yaml: None for
system users, health checks and events; RequestResponse for Secrets; RequestReceived omitted
policy-wide), once with the merged one. Event by event, the merged log holds every event the
original held (same stage, level, verb, user, URI, object, status, bodies present, annotations
but ua-sentinel's own, whose verdict the join changes); the events it adds are exactly the
stages ua-sentinel needs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from .auditlog import AuditEvent
from .harness import USERS, ControlPlane, ControlPlaneFactory
from .procs import free_port
from .sentinel import SentinelLauncher, SentinelServer, write_allowlist
from .webhooks import WebhookTLS, validating_webhook_configuration

POLICIES = Path(__file__).parents[1] / "data" / "policies"
LISTED = ["kubectl/*", "kubectl-dispatcher/*", "kube-apiserver/*"]
PROBE_AGENT = f"python-requests/2.34.2 events-{uuid.uuid4().hex[:8]}"  # one agent per refusal:
SECRETS_AGENT = f"curl/8.5.0 secrets-{uuid.uuid4().hex[:8]}"  # a finding names the one it came from
SCRIPT_PATHS = {
    "/api/v1/namespaces/team/configmaps",
    "/api/v1/namespaces/team/configmaps/cm-policy",
    "/api/v1/namespaces/team/secrets",
    "/api/v1/namespaces/kube-system/events",
    "/api/v1/namespaces/kube-system/secrets",
    "/version",
}


def merged_policy() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "apiserver-config", "--policy", str(POLICIES / "realistic.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def wire(
    factory: ControlPlaneFactory, sentinels: SentinelLauncher, tls: WebhookTLS, tmp: Path, policy: str
) -> tuple[SentinelServer, ControlPlane]:
    port = free_port()
    cp = factory(
        audit_webhook_url=f"https://127.0.0.1:{port}/audit",
        webhook_ca=tls.ca,
        client_cert=tls.apiserver_client,
        audit_policy=policy,
    )
    server = sentinels.server(port=port, allowlist=write_allowlist(tmp / f"allowlist-{port}.yaml", LISTED))
    cp.apply_yaml(validating_webhook_configuration("ua-sentinel", server.validate_url, tls.ca_bundle))
    return server, cp


def run_script(cp: ControlPlane) -> tuple[str, list[int]]:
    """The same requests in both runs: kubectl's stderr of the renamed create, and HTTP codes."""
    create = cp.kubectl(
        "dev-alice", "create", "configmap", "cm-policy", "-n", "team", user_agent="kc-renamed"
    )
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s-policy"}, "data": {"k": "dg=="}}
    codes = [
        cp.request("admin", "POST", "/api/v1/namespaces/team/secrets", json=secret).status_code,
        cp.request(
            "mallory", "GET", "/api/v1/namespaces/kube-system/events", user_agent=PROBE_AGENT
        ).status_code,
        cp.request(
            "mallory", "GET", "/api/v1/namespaces/kube-system/secrets", user_agent=SECRETS_AGENT
        ).status_code,
        cp.request("admin", "GET", "/version").status_code,
    ]
    cp.kubectl("dev-alice", "get", "configmap", "cm-policy", "-n", "team")
    return create.stderr, codes


def script_events(cp: ControlPlane) -> list[AuditEvent]:
    return [
        e
        for e in cp.audit_events()
        if e["user"]["username"] in USERS and e["requestURI"].partition("?")[0] in SCRIPT_PATHS
    ]


def key(event: AuditEvent) -> tuple[Any, ...]:
    """What an existing log consumer reads, minus per-run values (ids, times, uids)."""
    # ua-sentinel's own annotations (its verdict: unknown before, unlisted after) are not the log's
    annotations = {k: v for k, v in event.get("annotations", {}).items() if "ua-sentinel" not in k}
    ref = event.get("objectRef", {})
    return (
        event["stage"],
        event["level"],
        event["verb"],
        event["user"]["username"],
        event["requestURI"],
        event["userAgent"],
        (ref.get("resource"), ref.get("namespace"), ref.get("name")),
        event.get("responseStatus", {}).get("code"),
        "requestObject" in event,
        "responseObject" in event,
        tuple(sorted(annotations.items())),
    )


def test_merged_policy_keeps_the_existing_log_and_ua_sentinel_works(
    control_plane_factory: ControlPlaneFactory,
    sentinels: SentinelLauncher,
    webhook_tls: WebhookTLS,
    tmp_path: Path,
) -> None:
    original_text = (POLICIES / "realistic.yaml").read_text()
    server, cp = wire(control_plane_factory, sentinels, webhook_tls, tmp_path, original_text)
    before_stderr, before_codes = run_script(cp)
    cp.wait_for_audit(lambda e: e["requestURI"].startswith("/api/v1/namespaces/team/configmaps/cm-policy"))
    before = script_events(cp)
    cp.stop()
    server.stop()
    # With the original policy ua-sentinel is blind: no RequestReceived for the join, events hidden.
    assert "Warning:" not in before_stderr
    assert not [e for e in before if e["requestURI"].endswith("/kube-system/events")]
    assert not [e for e in before if e["stage"] == "RequestReceived"]

    server, cp = wire(control_plane_factory, sentinels, webhook_tls, tmp_path, merged_policy())
    after_stderr, after_codes = run_script(cp)
    assert after_codes == before_codes == [201, 403, 403, 200]

    # The join works: kubectl printed the warning for the renamed client.
    assert "Warning:" in after_stderr and "kc-renamed/v1.20.2" in after_stderr
    # Detection works: the refused read of events (hidden before) is a finding.
    finding = server.wait_for_finding(
        lambda f: f["user_agent"]["original"] == PROBE_AGENT,
        what="the finding for mallory's refused events read",
    )
    assert finding["user"]["name"] == "mallory"

    cp.wait_for_audit(lambda e: e["requestURI"].startswith("/api/v1/namespaces/team/configmaps/cm-policy"))
    after = script_events(cp)
    kept = Counter(map(key, after))
    for k, n in Counter(map(key, before)).items():
        assert kept[k] >= n, f"the merged policy lost an event the original recorded: {k}"
        kept[k] -= n
    added = +kept
    # What the merge added: the writes' RequestReceived (same level as their rule), and Metadata
    # ResponseComplete for the requests the original dropped (events read, /version).
    assert sorted((k[0], k[1], k[2], k[4].partition("?")[0]) for k in added.elements()) == sorted(
        [
            ("RequestReceived", "Request", "create", "/api/v1/namespaces/team/configmaps"),
            ("RequestReceived", "RequestResponse", "create", "/api/v1/namespaces/team/secrets"),
            ("ResponseComplete", "Metadata", "list", "/api/v1/namespaces/kube-system/events"),
            ("ResponseComplete", "Metadata", "get", "/version"),
        ]
    )


def test_lean_default_policy_keeps_the_join_and_detection(
    control_plane_factory: ControlPlaneFactory,
    sentinels: SentinelLauncher,
    webhook_tls: WebhookTLS,
    tmp_path: Path,
) -> None:
    """Our own policy omits RequestReceived for get/list/watch; writes still warn, refusals still find."""
    from webhook.tools.apiserver_config import AUDIT_POLICY

    server, cp = wire(control_plane_factory, sentinels, webhook_tls, tmp_path, AUDIT_POLICY)
    name = f"lean-{uuid.uuid4().hex[:8]}"
    loud = cp.kubectl("dev-alice", "create", "configmap", name, "-n", "team", user_agent="kc-renamed")
    assert "Warning:" in loud.stderr and "kc-renamed/v1.20.2" in loud.stderr
    agent = f"python-requests/2.34.2 {name}"
    assert (
        cp.request("mallory", "GET", "/api/v1/namespaces/kube-system/secrets", user_agent=agent).status_code
        == 403
    )
    server.wait_for_finding(
        lambda f: f["user_agent"]["original"] == agent, what="the finding for a refused read"
    )
    read = [e for e in cp.audit_events() if e["userAgent"] == agent]
    assert {e["stage"] for e in read} == {"ResponseComplete"}  # the lean part: no RequestReceived
