from __future__ import annotations

import json

import orjson
import pytest

from tests.conftest import DATA
from webhook.core.audit import (
    Event,
    EventList,
    MalformedEvent,
    audit_object,
    forbidden_by_authorization,
    parse_event,
)


def events(lines: list[bytes]) -> list[Event]:
    return [parse_event(line) for line in lines]


def test_every_recorded_audit_line_parses(audit_lines: list[bytes]) -> None:
    parsed = events(audit_lines)
    assert len(parsed) == len(audit_lines) > 1500
    assert {e.stage for e in parsed} >= {"RequestReceived", "ResponseComplete", "ResponseStarted"}


def test_every_recorded_audit_webhook_post_parses() -> None:
    posts = sorted((DATA / "audit-webhook").glob("*.json"))
    counts = [len(EventList.model_validate(json.loads(p.read_text())["body"]).items) for p in posts]
    assert len(posts) > 200 and all(n >= 1 for n in counts)


def test_unauthorized_request_has_an_empty_user(audit_lines: list[bytes]) -> None:
    (unauthorized,) = [e for e in events(audit_lines) if e.code == 401]
    assert unauthorized.stage == "ResponseStarted"
    assert unauthorized.user.username == ""
    assert not unauthorized.forbidden_by_authorization


def test_empty_agent_header_means_no_user_agent(audit_lines: list[bytes]) -> None:
    no_agent = [e for e in events(audit_lines) if e.user_agent is None]
    assert no_agent and all(e.user.username == "mallory" for e in no_agent)


def test_impersonation_names_both_users(audit_lines: list[bytes]) -> None:
    imp = [e for e in events(audit_lines) if e.impersonated_user is not None and e.forbidden_by_authorization]
    assert len(imp) == 1
    assert imp[0].user.username == "admin"
    assert imp[0].effective_user.username == "mallory"


def test_truncated_and_unicode_agents_are_kept_as_sent(audit_lines: list[bytes]) -> None:
    agents = {e.user_agent for e in events(audit_lines) if e.user_agent}
    assert "kubectl/v1.30.0 \u202e(evil) \u200b" in agents
    (long_agent,) = [a for a in agents if a.startswith("AAAA")]
    assert len(long_agent) == 1024 + len("...TRUNCATED") and long_agent.endswith("...TRUNCATED")


def test_403_with_decision_allow_is_not_an_authorization_refusal(audit_lines: list[bytes]) -> None:
    later_denied = [e for e in events(audit_lines) if e.code == 403 and e.decision == "allow"]
    assert later_denied and not any(e.forbidden_by_authorization for e in later_denied)


def test_403_without_annotations_falls_back_to_reason(audit_lines: list[bytes]) -> None:
    raw = next(
        json.loads(line) for line in audit_lines if b'"forbid"' in line and b"ResponseComplete" in line
    )
    del raw["annotations"]
    assert parse_event(raw).forbidden_by_authorization
    raw["responseStatus"]["reason"] = "NotFound"
    assert not parse_event(raw).forbidden_by_authorization


@pytest.mark.parametrize("stage", ["ResponseComplete", "ResponseStarted"])
@pytest.mark.parametrize("code", [403, 401, 200])
@pytest.mark.parametrize("decision", ["forbid", "allow", None])
@pytest.mark.parametrize("reason", ["Forbidden", "NotFound", None])
def test_the_raw_refusal_test_is_the_models(
    stage: str, code: int, decision: str | None, reason: str | None
) -> None:
    """``suggest`` asks it of raw objects, the Detector of Events: one definition for both."""
    raw: dict[str, object] = {"auditID": "a", "stage": stage, "responseStatus": {"code": code}}
    if reason is not None:
        raw["responseStatus"] = {"code": code, "reason": reason}
    if decision is not None:
        raw["annotations"] = {"authorization.k8s.io/decision": decision}
    expected = stage == "ResponseComplete" and code == 403 and (decision or reason) in ("forbid", "Forbidden")
    assert parse_event(raw).forbidden_by_authorization == expected
    assert forbidden_by_authorization(stage=stage, code=code, decision=decision, reason=reason) == expected


def test_an_audit_object_is_the_json_object_unvalidated() -> None:
    assert audit_object(b'{"kind": "Other"}') == {"kind": "Other"}
    with pytest.raises(MalformedEvent, match="not a JSON object"):
        audit_object(b"[1]")


def test_unknown_fields_are_ignored(audit_lines: list[bytes]) -> None:
    raw = json.loads(audit_lines[0])
    raw["somethingNew"] = {"x": 1}
    raw["user"]["extra"] = {"k": ["v"]}
    assert parse_event(orjson.dumps(raw)).audit_id == raw["auditID"]


def test_resource_label_includes_group_and_subresource() -> None:
    ev = parse_event(
        {
            "auditID": "a",
            "stage": "ResponseComplete",
            "objectRef": {"resource": "deployments", "apiGroup": "apps", "subresource": "scale"},
        }
    )
    assert ev.resource_label == "apps/deployments/scale"
    ev2 = parse_event({"auditID": "b", "stage": "ResponseComplete", "requestURI": "/version?timeout=5s"})
    assert ev2.resource_label == "/version"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"kind":"Event","auditID":"x","stage":"Resp', "not JSON"),
        (b"\x00\xff\xfe binary", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"kind":"Event","stage":"ResponseComplete"}', "auditID"),
        (b'{"kind":"Event","auditID":"x","stage":"Bogus"}', "stage"),
        (b'{"kind":"Event","auditID":"x","stage":"ResponseComplete","responseStatus":{"code":"x"}}', "code"),
        (b" " * (4 * 1024 * 1024 + 1), "exceeds"),
    ],
)
def test_malformed_lines_raise_a_short_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        parse_event(raw)
