"""Findings: the cluster a finding comes from, the ECS names Elastic files it under, and the one
sentence people read (identifiers first, attacker-shaped fields escaped and capped one by one)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import DATASET, Finding
from webhook.core.useragent import has_unsafe_chars
from webhook.detect.detector import Detector
from webhook.kube.events import MAX_MESSAGE
from webhook.sinks.base import ClusterSink

ALLOWLIST = 'agents:\n  - "kubectl/*"\n'


@pytest.fixture(scope="module")
def finding() -> Finding:
    detector = Detector(Allowlist.from_yaml(ALLOWLIST))
    lines = (line for path in AUDIT_LOGS for line in path.read_bytes().splitlines())
    return next(f for line in lines for f in detector.process(parse_event(line)))


def test_a_cluster_name_is_ecs_orchestrator_cluster_and_keeps_the_id(finding: Finding) -> None:
    stamped = finding.in_cluster("prod-eu-1")
    assert stamped.to_dict()["orchestrator"] == {"type": "kubernetes", "cluster": {"name": "prod-eu-1"}}
    assert stamped.id == finding.id and stamped.event == finding.event
    assert "orchestrator" not in finding.to_dict() and finding.in_cluster(None) is finding


def test_the_text_people_read_names_the_cluster_escaped(finding: Finding) -> None:
    assert (
        finding.in_cluster("prod-eu-1")
        .one_line()
        .startswith(f"cluster prod-eu-1: finding {finding.id} unusual-agent-forbidden")
    )
    shaped = finding.in_cluster("prod\u202e\x1b[2J").one_line()
    assert "\u202e" not in shaped and "\x1b" not in shaped and "\\u202e" in shaped
    assert not finding.one_line().startswith("cluster")


def test_event_dataset_and_data_stream_agree_as_ecs_asks(finding: Finding) -> None:
    data = finding.to_dict()
    assert data["data_stream"] == {"type": "logs", "dataset": DATASET, "namespace": "default"}
    assert data["event"]["dataset"] == DATASET
    assert "-" not in DATASET and DATASET.lower() == DATASET and len(DATASET) <= 100


def test_the_cluster_sink_stamps_what_it_hands_on(finding: Finding) -> None:
    class Collect:
        def __init__(self) -> None:
            self.got: list[Finding] = []

        def deliver(self, finding: Finding) -> None:
            self.got.append(finding)

        def close(self) -> None:
            return None

    inner = Collect()
    ClusterSink(inner, "prod-eu-1").deliver(finding)
    assert [f.cluster_name for f in inner.got] == ["prod-eu-1"]


REFUSAL: dict[str, Any] = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "auditID": "3262f9b2-cda5-4cfe-9dd0-d4e6d958eb3d",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/kube-system/secrets",
    "verb": "list",
    "user": {"username": "mallory", "uid": "1002", "groups": ["system:authenticated"]},
    "sourceIPs": ["203.0.113.7"],
    "userAgent": "python-requests/2.34.2",
    "objectRef": {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
    "requestReceivedTimestamp": "2026-11-27T18:10:11.803517Z",
    "stageTimestamp": "2026-11-27T18:10:11.808620Z",
    "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
}


def finding_for(**changes: Any) -> Finding:
    """The unusual-agent-forbidden finding of one refusal, with ``changes`` to the audit event."""
    event = {**REFUSAL, **changes}
    detector = Detector(Allowlist.from_yaml('agents: ["kubectl/*"]'))
    (finding, *_) = [*detector.process(parse_event(json.dumps(event))), *detector.flush()]
    return finding


def test_a_long_request_uri_never_pushes_out_the_identifiers() -> None:
    finding = finding_for(requestURI="/api/v1/namespaces/team/secrets?" + "&" * 700_000)
    line = finding.one_line()
    assert len(line) <= MAX_MESSAGE
    assert line.startswith(f"finding {finding.id} unusual-agent-forbidden (")
    assert "user mallory from 203.0.113.7 at " in line
    assert line.endswith('with agent "python-requests/2.34.2"')


def test_a_uri_with_control_characters_is_escaped() -> None:
    line = finding_for(requestURI="/api/v1/namespaces/team/secrets/\x1b[41mEVIL\x1b]0;x\x07").one_line()
    assert "\x1b" not in line and "\x07" not in line
    assert "/secrets/\\x1b[41mEVIL\\x1b]0;x\\x07" in line


@settings(max_examples=150, deadline=None)
@given(
    user=st.text(max_size=3000),
    uri=st.text(max_size=5000),
    agent=st.text(min_size=1, max_size=3000),
    cluster=st.none() | st.text(min_size=1, max_size=500),
)
def test_any_audit_text_gives_a_short_inert_line_that_starts_with_the_identifiers(
    user: str, uri: str, agent: str, cluster: str | None
) -> None:
    finding = finding_for(
        user={"username": user or "u", "uid": "1"}, requestURI=uri or "/", userAgent=agent, verb="g\x1bt"
    ).in_cluster(cluster)
    line = finding.one_line()
    assert len(line) <= MAX_MESSAGE
    assert not has_unsafe_chars(line)
    assert f"finding {finding.id} unusual-agent-forbidden (" in line[:200]
    assert " from 203.0.113.7 at " in line
    assert line.endswith('"')  # nothing was cut: every field fits on its own cap
