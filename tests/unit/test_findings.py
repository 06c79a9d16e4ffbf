"""Findings: the cluster a finding comes from, the ECS names Elastic files it under, and the one
sentence people read (identifiers first, attacker-shaped fields escaped and capped one by one)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import DATASET, Finding, dumps
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
    """The unusual-agent-forbidden finding of one refusal, with ``changes`` to the audit event
    (a field changed to ``None`` is left out)."""
    event = {k: v for k, v in {**REFUSAL, **changes}.items() if v is not None}
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


def test_the_ecs_document_keeps_its_field_order_and_leaves_out_what_is_none() -> None:
    plain = finding_for(sourceIPs=[], userAgent=None)
    doc = plain.to_dict()
    assert list(doc) == [
        "@timestamp",
        *("event", "rule", "user", "user_agent", "source", "kubernetes", "threat", "data_stream"),
        "ua_sentinel",
    ]
    assert list(doc["event"]) == [
        *("kind", "category", "type", "outcome", "module", "dataset", "id", "severity", "risk_score"),
        *("count", "start", "end", "sequence"),
    ]
    assert doc["source"] == {} and "effective" not in doc["user"] and "original" not in doc["user_agent"]
    assert doc["ua_sentinel"]["verdict"]["entry"] is None  # a null inside ua_sentinel stays
    assert _nulls({k: v for k, v in doc.items() if k not in {"kubernetes", "ua_sentinel"}}) == []
    assert json.loads(dumps(plain)) == doc

    acting = finding_for(impersonatedUser={"username": "admin", "uid": "9", "groups": ["system:masters"]})
    assert acting.to_dict()["user"] == {
        "name": "mallory",
        "id": "1002",
        "group": {"name": ["system:authenticated"]},
        "effective": {"name": "admin", "id": "9"},
    }


def _nulls(doc: Any, path: str = "$") -> list[str]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _nulls(v, f"{path}[{i}]")]
    return [path] if doc is None else []


def test_what_a_caller_does_to_the_document_leaves_the_finding_alone() -> None:
    finding = finding_for()
    doc = finding.to_dict()
    doc["kubernetes"]["audit"]["verb"] = "delete"
    doc["threat"].clear()
    doc["user"]["group"]["name"].append("system:masters")
    assert finding.to_dict() == finding_for().to_dict()


def test_a_saved_finding_reads_back_as_the_same_finding() -> None:
    for finding in [
        finding_for().in_cluster("prod-eu-1"),
        finding_for(sourceIPs=[], userAgent=None),
        finding_for(impersonatedUser={"username": "admin"}),
    ]:
        assert Finding.from_dict(json.loads(dumps(finding))) == finding


def test_a_finding_saved_by_an_older_version_with_nulls_reads_back() -> None:
    """Before 0.2 a checkpoint's backlog held every field, ``None`` ones as ``null``."""
    finding = finding_for(sourceIPs=[], userAgent=None)
    old = json.loads(dumps(finding))
    old["orchestrator"] = None
    old["source"]["ip"] = None
    old["user"]["effective"] = None
    old["user_agent"] |= {"original": None, "name": None, "version": None}
    assert Finding.from_dict(old) == finding


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d["event"].update(count="many"), "Expected `int`, got `str` - at `$.event.count`"),
        (lambda d: d.pop("@timestamp"), "Object missing required field `@timestamp`"),
        (lambda d: d["user"].update(effective=["admin"]), "Expected `object | null`, got `array`"),
        (lambda d: d.update(data_stream={"type": "metrics"}), "Invalid enum value 'metrics'"),
    ],
)
def test_a_wrong_saved_finding_is_a_value_error_naming_the_field(change: Any, error: str) -> None:
    doc = finding_for().to_dict()
    change(doc)
    with pytest.raises(ValueError, match=re.escape(error)):
        Finding.from_dict(doc)
