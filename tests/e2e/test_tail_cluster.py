"""The real `ua-sentinel tail` using the Kubernetes API of the real apiserver whose audit log it
follows: its allowlist from a ConfigMap (watched live), and findings as Kubernetes Events.

The tailer runs as the chart's tailer ServiceAccount with exactly the chart's RBAC (the chart's
rbac.yaml and allowlist ConfigMap rendered by the real helm and applied), authenticated with a
token from the TokenRequest API, as a pod's projected token would be.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .charts import CHART, helm
from .harness import ControlPlane
from .procs import wait_until
from .sentinel import Finding, Sentinel, SentinelLauncher

RULE = "unusual-agent-forbidden"
RELEASE = "uas"
FULLNAME = f"{RELEASE}-ua-sentinel"
ALLOWLIST_CM = f"{FULLNAME}-allowlist"
TAILER_SA = f"{FULLNAME}-tailer"
POD_NAME = "uas-ua-sentinel-tailer-e2e"
WAIT_S = 60.0
LISTED = ["kubectl/*", "kube-apiserver/*"]


@dataclass(frozen=True)
class Release:
    """The chart's tailer RBAC and allowlist ConfigMap in a fresh namespace of the shared cluster."""

    cp: ControlPlane
    namespace: str
    kubeconfig: Path  # the chart's tailer ServiceAccount

    @property
    def configmap_ref(self) -> str:
        return f"{self.namespace}/{ALLOWLIST_CM}"

    def set_allowlist(self, text: str) -> str:
        """Replaces the ConfigMap's allowlist.yaml through the API; returns the new resourceVersion."""
        with self.cp.client("admin") as c:
            response = c.patch(
                f"/api/v1/namespaces/{self.namespace}/configmaps/{ALLOWLIST_CM}",
                json={"data": {"allowlist.yaml": text}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        response.raise_for_status()
        version: str = response.json()["metadata"]["resourceVersion"]
        return version

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Events of a namespace (default: the release's), read back from the apiserver as admin."""
        with self.cp.client("admin") as c:
            response = c.get(f"/api/v1/namespaces/{namespace or self.namespace}/events")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def tail(self, sentinels: SentinelLauncher, *extra_args: str, state: Path | None = None) -> Sentinel:
        """`ua-sentinel tail --allowlist-configmap` as the chart's tailer, over the whole audit log."""
        return sentinels.tail(
            None,
            self.cp.audit_log,
            state=state,
            from_start=True,
            allowlist_configmap=self.configmap_ref,
            kubeconfig=self.kubeconfig,
            env={"POD_NAMESPACE": self.namespace, "POD_NAME": POD_NAME},
            extra_args=extra_args,
        )


@pytest.fixture
def release(control_plane: ControlPlane, helm_binary: Path) -> Release:
    namespace = f"uas-{uuid.uuid4().hex[:8]}"
    rendered = helm(
        helm_binary,
        control_plane,
        "template",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "tailer.enabled=true",
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/configmaps.yaml",
    ).stdout
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    control_plane.apply_yaml(rendered)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, TAILER_SA)
    # The RBAC authorizer reads through an informer: wait until the tailer may read its ConfigMap.
    with httpx.Client(base_url=control_plane.url, verify=control_plane.ssl_context(), timeout=30) as c:
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        path = f"/api/v1/namespaces/{namespace}/configmaps/{ALLOWLIST_CM}"
        wait_until(
            lambda: c.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200,
            timeout=WAIT_S,
            what="the chart's RoleBinding to take effect",
            interval=0.1,
        )
    return Release(control_plane, namespace, kubeconfig)


def _probe(cp: ControlPlane, agent: str, namespace: str = "kube-system", name: str = "") -> str:
    """mallory (no rights) lists secrets (or gets the one at the URL path segment `name`) with
    `agent` (sent as UTF-8), refused by RBAC; waits until the request's completed audit event is
    in the log, so probes reach the log in order. Returns its auditID."""
    path = f"/api/v1/namespaces/{namespace}/secrets" + (f"/{name}" if name else "")
    with cp.client("mallory") as c:
        response = c.get(path, headers={b"User-Agent": agent.encode()})
    assert response.status_code == 403, response.text
    audit_id = response.headers["Audit-Id"]
    event = cp.wait_for_audit(
        lambda e: e["auditID"] == audit_id and e["stage"] == "ResponseComplete",
        timeout=WAIT_S,
        what=f"the audit event of the probe by {agent!r}",
    )
    assert event["userAgent"] == agent
    return audit_id


def _agent(label: str) -> str:
    return f"python-requests/2.34.2 {label}-{uuid.uuid4().hex[:8]}"


def _by_agent(agent: str) -> Callable[[Finding], bool]:
    return lambda f: bool(f["rule"]["name"] == RULE and f["user_agent"]["original"] == agent)


def _allowlist(*extra: str) -> str:
    return yaml.safe_dump({"agents": [*LISTED, *extra]})


def _applied(tail: Sentinel, version: str) -> str:
    """Waits for the tailer's log saying it applied ConfigMap resourceVersion `version`; its hash."""
    record = tail.wait_for_log(
        lambda r: r.get("msg") == "allowlist applied" and r.get("version") == version,
        timeout=WAIT_S,
        what=f"the tailer to apply resourceVersion {version}",
    )
    applied: str = record["hash"]
    return applied


def _finding(tail: Sentinel, agent: str) -> Finding:
    return tail.wait_for_finding(_by_agent(agent), timeout=WAIT_S, what=f"the finding for {agent!r}")


def _hash(finding: Finding) -> str:
    value: str = finding["ua_sentinel"]["verdict"]["allowlist_hash"]
    return value


def test_tail_reads_its_allowlist_from_a_configmap_and_applies_edits_live(
    release: Release, sentinels: SentinelLauncher
) -> None:
    cp = release.cp
    first_version = release.set_allowlist(_allowlist())
    # --window 0.001: every refusal is its own window, so a repeat by an unlisted agent is a new
    # finding (with the default 10 min window it would only be counted in the open one).
    tail = release.tail(sentinels, "--window", "0.001", "--baseline-days", "0")
    first_hash = _applied(tail, first_version)

    agent = _agent("unlisted")
    _probe(cp, agent)
    found = _finding(tail, agent)
    assert found["user"]["name"] == "mallory"
    assert found["ua_sentinel"]["verdict"]["verdict"] == "unlisted"
    assert _hash(found) == first_hash  # judged by the ConfigMap's allowlist

    # An edit through the API listing the agent applies live: the same agent raises nothing more.
    listing = release.set_allowlist(_allowlist(agent))
    listing_hash = _applied(tail, listing)
    repeat = _probe(cp, agent)
    barrier = _agent("barrier")
    _probe(cp, barrier)  # logged after the repeat: once its finding is out, the repeat was judged
    assert _hash(_finding(tail, barrier)) == listing_hash
    assert [f["event"]["id"] for f in tail.findings() if _by_agent(agent)(f)] == [found["event"]["id"]]
    assert repeat not in {f["kubernetes"]["audit"]["auditID"] for f in tail.findings()}

    # A broken edit is refused and reported (log line, Warning Event on the ConfigMap); the last
    # good allowlist stays in force: the agent stays listed, a fresh one is still unlisted.
    broken = release.set_allowlist("agents: [unterminated\n")
    refused = tail.wait_for_log(
        lambda r: r.get("msg") == "allowlist refused" and r.get("version") == broken,
        timeout=WAIT_S,
        what="the tailer to refuse the broken edit",
    )
    assert refused["level"] == "warning"
    assert f"keeping allowlist {listing_hash}" in refused["reason"]
    invalid = wait_until(
        lambda: next(
            (
                e
                for e in release.events()
                if e["reason"] == "AllowlistInvalid"
                and e["involvedObject"]["name"] == ALLOWLIST_CM
                and e["involvedObject"]["resourceVersion"] == broken
            ),
            None,
        ),
        timeout=WAIT_S,
        what="the AllowlistInvalid Event on the ConfigMap",
        interval=0.2,
    )
    assert invalid["type"] == "Warning" and invalid["involvedObject"]["kind"] == "ConfigMap"
    assert f"keeping allowlist {listing_hash}" in invalid["message"]
    after_broken = _probe(cp, agent)
    barrier = _agent("barrier-after-broken")
    _probe(cp, barrier)
    assert _hash(_finding(tail, barrier)) == listing_hash
    assert after_broken not in {f["kubernetes"]["audit"]["auditID"] for f in tail.findings()}

    # The repair applies (a Normal AllowlistApplied Event) and unlisting the agent applies too.
    repaired = release.set_allowlist(_allowlist())
    repaired_hash = _applied(tail, repaired)
    again = _probe(cp, agent)
    found_again = tail.wait_for_finding(
        lambda f: _by_agent(agent)(f) and f["kubernetes"]["audit"]["auditID"] == again,
        timeout=WAIT_S,
        what="a finding for the unlisted agent again",
    )
    assert _hash(found_again) == repaired_hash
    wait_until(
        lambda: any(
            e["reason"] == "AllowlistApplied" and e["involvedObject"]["resourceVersion"] == repaired
            for e in release.events()
        ),
        timeout=WAIT_S,
        what="the AllowlistApplied Event after the repair",
        interval=0.2,
    )
    assert tail.stop() == 0


def test_tail_restarted_judges_the_lines_it_missed_by_the_configmap_not_the_built_in_allowlist(
    release: Release, sentinels: SentinelLauncher
) -> None:
    """A restarted tailer reads the lines written while it was down at once; it must judge them
    by the ConfigMap (here: listing a python-requests agent the built-in allowlist denies)."""
    cp = release.cp
    release.set_allowlist(_allowlist())
    first = release.tail(sentinels, "--baseline-days", "0")
    barrier = _agent("barrier")
    _probe(cp, barrier)
    _finding(first, barrier)
    assert first.stop() == 0

    listed = _agent("listed-while-down")
    release.set_allowlist(_allowlist(listed))
    missed = _probe(cp, listed)
    barrier = _agent("barrier-while-down")
    _probe(cp, barrier)
    resumed = release.tail(sentinels, "--baseline-days", "0", state=first.workdir / "state")
    _finding(resumed, barrier)
    assert missed not in {f["kubernetes"]["audit"]["auditID"] for f in resumed.findings()}


def _events_of(release: Release, finding_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in release.events(namespace)
        if e["metadata"].get("annotations", {}).get("ua-sentinel.io/finding-id") == finding_id
    ]


def _one_event(release: Release, finding: Finding) -> dict[str, Any]:
    """Waits for the Event of `finding` in the release namespace; exactly one may exist."""
    finding_id = finding["event"]["id"]
    events = wait_until(
        lambda: _events_of(release, finding_id) or None,
        timeout=WAIT_S,
        what=f"the Event of finding {finding_id}",
        interval=0.2,
    )
    assert len(events) == 1, events
    return events[0]


def test_tail_k8s_events_sink_writes_escaped_events_where_the_docs_say_and_redelivery_adds_none(
    release: Release, sentinels: SentinelLauncher
) -> None:
    cp, namespace = release.cp, release.namespace
    release.set_allowlist(_allowlist())
    tail = release.tail(sentinels, "--sink", "k8s-events", "--baseline-days", "0")

    # Refused in the release namespace: the Event goes there, about the refused object.
    mark = uuid.uuid4().hex[:8]
    in_ns = f"python-requests/2.34.2 \u202egnp.{mark}"
    _probe(cp, in_ns, namespace)
    # Refused in kube-system, where the chart gives the tailer no rights: the Event goes to the
    # tailer's own namespace (POD_NAMESPACE), about its pod.
    elsewhere = f"python-requests/2.34.2 \u202ekube-{mark}"
    _probe(cp, elsewhere, "kube-system")
    found_in_ns, found_elsewhere = _finding(tail, in_ns), _finding(tail, elsewhere)

    local = _one_event(release, found_in_ns)
    assert local["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Secret",
        "namespace": namespace,
    }  # a list has no object name: the apiserver stores none
    remote = _one_event(release, found_elsewhere)
    assert remote["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": namespace,
        "name": POD_NAME,
    }
    assert not _events_of(release, found_elsewhere["event"]["id"], "kube-system")
    for event, finding, agent in ((local, found_in_ns, in_ns), (remote, found_elsewhere, elsewhere)):
        assert finding["user_agent"]["original"] == agent  # the apiserver logged the raw agent
        assert event["type"] == "Warning" and event["reason"] == "UnusualAgentForbidden"
        assert event["metadata"]["name"] == f"ua-sentinel.{finding['event']['id'][:24]}.1"
        assert "\u202e" not in event["message"]
        escaped = agent.replace("\u202e", "\\u202e")
        assert event["message"].startswith(f"finding {finding['event']['id']} unusual-agent-forbidden (")
        assert " user mallory from " in event["message"]
        assert event["message"].endswith(f'with agent "{escaped}"')
    assert tail.stop() == 0
    seen = {e["metadata"]["uid"] for e in (local, remote)}

    # At least once, no duplicates: a fresh tailer reads the same log from the start, derives
    # the same findings (same ids) and delivers them again; the Events already exist (409), which
    # counts as delivered: the sink moves on to a new finding, and no second Event appears.
    again = release.tail(sentinels, "--sink", "k8s-events", "--baseline-days", "0")
    assert {_finding(again, a)["event"]["id"] for a in (in_ns, elsewhere)} == {
        f["event"]["id"] for f in (found_in_ns, found_elsewhere)
    }
    later = f"python-requests/2.34.2 later-{mark}"
    _probe(cp, later)
    _one_event(release, _finding(again, later))  # delivered in order after the repeats
    assert {_one_event(release, f)["metadata"]["uid"] for f in (found_in_ns, found_elsewhere)} == seen
    assert not [r for r in again.log_records() if "delivery failed" in r["msg"]]
    assert again.stop() == 0


def test_a_refused_name_holding_escape_sequences_reaches_the_event_escaped(
    release: Release, sentinels: SentinelLauncher
) -> None:
    """`GET .../secrets/%1B%5B41mEVIL`: the apiserver audits the name with a raw ESC; the Event it
    stores names the object escaped, and its message starts with the finding id."""
    release.set_allowlist(_allowlist())
    tail = release.tail(sentinels, "--sink", "k8s-events", "--baseline-days", "0")
    agent = _agent("esc-name")
    audit_id = _probe(release.cp, agent, release.namespace, name="%1B%5B41mEVIL")
    finding = _finding(tail, agent)
    assert finding["kubernetes"]["audit"]["auditID"] == audit_id
    assert finding["kubernetes"]["audit"]["objectRef"]["name"] == "\x1b[41mEVIL"  # as audited: raw ESC
    event = _one_event(release, finding)
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Secret",
        "namespace": release.namespace,
        "name": "\\x1b[41mEVIL",
    }
    assert "\x1b" not in str(event)
    assert event["message"].startswith(f"finding {finding['event']['id']} unusual-agent-forbidden (")
    assert tail.stop() == 0
