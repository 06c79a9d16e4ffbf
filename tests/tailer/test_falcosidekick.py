"""The falcosidekick sink against a real local HTTP server that judges each body as falcosidekick
does (``falco_payload.py``: 400 for what its decoder and ``Check()`` refuse), through the outbox
that retries it after the endpoint failed."""

from __future__ import annotations

import json

import pytest
from msgspec.structs import replace

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import ClusterSink
from webhook.sinks.falcosidekick import PRIORITY, FalcosidekickSink, falco_payload
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import parse_sink

from .conftest import ACCEPTANCE_ALLOWLIST, fixture_lines
from .endpoints import endpoint, falcosidekick
from .falco_payload import falco_payload_errors


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    out = [f for line in fixture_lines() for f in detector.process(parse_event(line))]
    return out + detector.flush()


def test_the_checker_refuses_what_falcosidekick_refuses() -> None:
    good = {
        "output": "x",
        "priority": "Warning",
        "rule": "r",
        "time": "2026-11-29T21:30:44.123456789Z",
        "output_fields": {"ka.verb": "get"},
        "source": "k8saudit",
        "tags": ["a"],
    }
    assert falco_payload_errors(json.dumps(good).encode()) == []
    for change in (
        {"priority": "high"},
        {"priority": 3},
        {"time": "2026-11-29 21:30:44"},
        {"time": "2026-13-29T21:30:44Z"},
        {"output_fields": {}},
        {"output_fields": {"k8s.ns.name": 5}},
        {"rule": ""},
        {"tags": "a"},
        {"hostname": 1},
    ):
        assert falco_payload_errors(json.dumps({**good, **change}).encode()), change


def test_every_finding_reaches_falcosidekick_after_it_failed(findings: list[Finding]) -> None:
    with endpoint(falcosidekick, fail_first=3) as sidekick:
        spec = parse_sink(f"falcosidekick:{sidekick.url}/")
        outbox = Outbox(spec, ClusterSink(FalcosidekickSink(spec.target), "prod-eu-1"))
        outbox.put(findings)
        assert outbox.drain(timeout=60)
        outbox.close()

    assert outbox.failures == 3 and [r.status for r in sidekick.received[:3]] == [503, 503, 503]
    refused = [r.errors for r in sidekick.received if r.status == 400]
    assert refused == []
    assert {(r.path, r.content_type) for r in sidekick.received} == {("/", "application/json")}
    payloads = [json.loads(r.body) for r in sidekick.received if r.status == 200]
    got = [(p["output_fields"]["event.id"], p["output_fields"]["event.sequence"]) for p in payloads]
    assert got == [(f.id, f.event.sequence) for f in findings]  # in order, none lost, none twice
    for payload, finding in zip(payloads, findings, strict=True):
        assert payload["priority"] == PRIORITY[finding.ua_sentinel["severity"]]
        assert payload["rule"] == finding.rule.name and payload["source"] == "k8saudit"
        assert "ua-sentinel" in payload["tags"] and "T1613" in payload["tags"]
        fields = payload["output_fields"]
        assert fields["orchestrator.cluster.name"] == "prod-eu-1"
        assert fields["ka.useragent"] == finding.user_agent.display
        assert fields["ka.user.name"] == finding.user.name
        assert fields["ka.verb"] == finding.kubernetes["audit"]["verb"]
        assert payload["output"].startswith("ua-sentinel cluster prod-eu-1: ")


def test_policy_report_subjects_come_from_k8saudit_fields(findings: list[Finding]) -> None:
    """falcosidekick's PolicyReport output names the subject from ka.target.{resource,name,namespace}."""
    finding = next(f for f in findings if f.kubernetes["audit"].get("objectRef"))
    ref = {"resource": "secrets", "namespace": "kube-system", "name": "admin-token"}
    audit = {**finding.kubernetes["audit"], "objectRef": ref}
    named = replace(finding, kubernetes={"audit": audit})
    fields = falco_payload(named)["output_fields"]
    assert fields["ka.target.resource"] == "secrets" and fields["ka.target.name"] == "admin-token"
    assert fields["ka.target.namespace"] == "kube-system"
    assert "k8s.ns.name" not in fields  # falcosidekick type-asserts it; the k8saudit name is used


def test_an_agent_shaped_to_fool_a_reader_reaches_chat_escaped(findings: list[Finding]) -> None:
    spoof = next(f for f in findings if f.user_agent.original and "\u202e" in f.user_agent.original)
    text = json.dumps(falco_payload(spoof), ensure_ascii=False)
    assert "\u202e" not in text and "\\\\u202e" in text


@pytest.mark.parametrize(
    ("severity", "priority"),
    [("low", "Notice"), ("medium", "Warning"), ("high", "Error"), ("critical", "Critical")],
)
def test_each_severity_is_a_priority_falcosidekick_accepts(
    findings: list[Finding], severity: str, priority: str
) -> None:
    """PolicyReports map Notice/Warning/Error/Critical back to low/medium/high/critical."""
    extra = {**findings[0].ua_sentinel, "severity": severity}
    finding = replace(findings[0], ua_sentinel=extra)
    payload = falco_payload(finding)
    assert payload["priority"] == priority
    assert falco_payload_errors(json.dumps(payload).encode()) == []
