"""Finding.one_line: identifiers first, attacker-shaped fields escaped and capped one by one."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.core.useragent import has_unsafe_chars
from webhook.detect.detector import Detector
from webhook.kube.events import MAX_MESSAGE

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
@given(user=st.text(max_size=3000), uri=st.text(max_size=5000), agent=st.text(min_size=1, max_size=3000))
def test_any_audit_text_gives_a_short_inert_line_that_starts_with_the_identifiers(
    user: str, uri: str, agent: str
) -> None:
    finding = finding_for(
        user={"username": user or "u", "uid": "1"}, requestURI=uri or "/", userAgent=agent, verb="g\x1bt"
    )
    line = finding.one_line()
    assert len(line) <= MAX_MESSAGE
    assert not has_unsafe_chars(line)
    assert line.startswith(f"finding {finding.id} unusual-agent-forbidden (")
    assert " from 203.0.113.7 at " in line
