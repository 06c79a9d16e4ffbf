from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import AUDIT_LOGS, DATA
from webhook.core import useragent
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
    counts = [len(msgspec.convert(json.loads(p.read_text())["body"], EventList).items) for p in posts]
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


# The one model of the wire format, checked against the JSON itself: what every field of a decoded
# Event holds is what the event's JSON says, or the field's default when the key is absent.
_DEFAULTS: dict[str, Any] = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "",
    "requestURI": "",
    "verb": "",
    "user": {},
    "impersonatedUser": None,
    "sourceIPs": [],
    "userAgent": None,
    "objectRef": None,
    "responseStatus": None,
    "requestReceivedTimestamp": "",
    "stageTimestamp": "",
    "annotations": {},
}
_NESTED: dict[str, dict[str, Any]] = {
    "user": {"username": "", "uid": "", "groups": []},
    "impersonatedUser": {"username": "", "uid": "", "groups": []},
    "objectRef": dict.fromkeys(
        ("resource", "namespace", "name", "apiGroup", "apiVersion", "subresource"), ""
    ),
    "responseStatus": {"code": 0, "status": "", "reason": "", "message": ""},
}


def _as_sent(raw: dict[str, Any]) -> dict[str, Any]:
    """What an Event must hold for ``raw``: its known keys (defaults for the missing ones), unknown
    keys dropped, the agent cut as the apiserver cuts it."""
    out: dict[str, Any] = {"auditID": raw["auditID"], "stage": raw["stage"]}
    for key, default in _DEFAULTS.items():
        value = raw.get(key, default)
        if key in _NESTED and value is not None:
            value = {k: value.get(k, d) for k, d in _NESTED[key].items()}
        out[key] = value
    if out["userAgent"] is not None:
        out["userAgent"] = useragent.cut(out["userAgent"])
    return out


def _recorded_events() -> list[dict[str, Any]]:
    lines = [json.loads(line) for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
    posts = sorted((DATA / "audit-webhook").glob("*.json"))
    return lines + [item for p in posts for item in json.loads(p.read_text())["body"]["items"]]


def test_every_recorded_event_decodes_to_what_its_json_says() -> None:
    """Both audit log files and every /audit POST recorded on kube-apiserver 1.20 (tests/data, the
    copy of ../shared/fixtures/apiserver-1.20), read from bytes and from the decoded object alike."""
    recorded = _recorded_events()
    assert len(recorded) > 1800
    for raw in recorded:
        expected = _as_sent(raw)
        assert msgspec.to_builtins(parse_event(orjson.dumps(raw))) == expected
        assert msgspec.to_builtins(parse_event(raw)) == expected


_TEXT = st.text(max_size=12)
_USER = st.fixed_dictionaries(
    {}, optional={"username": _TEXT, "uid": _TEXT, "groups": st.lists(_TEXT, max_size=3)}
)
_EVENTS = st.fixed_dictionaries(
    {
        "auditID": st.text(min_size=1, max_size=12),
        "stage": st.sampled_from(["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]),
    },
    optional={
        "kind": st.just("Event"),
        "apiVersion": st.just("audit.k8s.io/v1"),
        "level": _TEXT,
        "requestURI": _TEXT,
        "verb": _TEXT,
        "user": _USER,
        "impersonatedUser": st.none() | _USER,
        "sourceIPs": st.lists(_TEXT, max_size=3),
        "userAgent": st.none() | _TEXT | st.text(min_size=250, max_size=1500),
        "objectRef": st.none()
        | st.fixed_dictionaries({}, optional=dict.fromkeys(_NESTED["objectRef"], _TEXT)),
        "responseStatus": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "code": st.integers(-(2**63), 2**63 - 1),
                "status": _TEXT,
                "reason": _TEXT,
                "message": _TEXT,
            },
        ),
        "requestReceivedTimestamp": _TEXT,
        "stageTimestamp": _TEXT,
        "annotations": st.dictionaries(_TEXT, _TEXT, max_size=4),
        "somethingNew": st.dictionaries(_TEXT, st.integers(-1000, 1000) | _TEXT, max_size=2),
    },
)


@given(_EVENTS)
def test_generated_events_decode_to_what_their_json_says(raw: dict[str, Any]) -> None:
    expected = _as_sent(raw)
    assert msgspec.to_builtins(parse_event(orjson.dumps(raw))) == expected
    assert msgspec.to_builtins(parse_event(raw)) == expected


_WRONG = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), min_size=1, max_size=2),
)
_FIELDS = {
    "kind": _WRONG | st.just("Other"),
    "apiVersion": _WRONG | st.just("audit.k8s.io/v2"),
    "auditID": _WRONG | st.just("") | st.none(),
    "stage": _WRONG | st.just("Bogus") | st.none(),
    "requestURI": _WRONG | st.none(),
    "user": _WRONG | st.none(),
    "user.username": _WRONG | st.none(),
    "user.groups": _WRONG | st.just("system:masters"),
    "sourceIPs": _WRONG | st.just("10.0.0.1"),
    "userAgent": _WRONG,
    "objectRef.namespace": _WRONG | st.none(),
    "responseStatus.code": st.booleans() | st.just("forbidden") | st.floats(0.1, 0.9) | st.just([1]),
    "annotations": _WRONG | st.just("x"),
}


@given(_EVENTS, st.sampled_from(sorted(_FIELDS)), st.data())
def test_a_field_of_the_wrong_type_is_refused_with_its_name(
    raw: dict[str, Any], where: str, data: st.DataObject
) -> None:
    """Counted and skipped with a reason naming the field, never the value (attacker text)."""
    value = data.draw(_FIELDS[where])
    head, _, tail = where.partition(".")
    raw[head] = {**(raw.get(head) or {}), tail: value} if tail else value
    for sent in (orjson.dumps(raw), raw):
        with pytest.raises(MalformedEvent, match=f"^invalid audit event: {re.escape(where)}(\\.|: )"):
            parse_event(sent)


def test_numbers_are_read_as_pydantic_read_them_but_a_bool_is_no_code() -> None:
    """The numbers' lax reading the pydantic model had; ``true`` (pydantic: 1) is refused."""
    for code in (403, 403.0, "403"):
        assert parse_event({"auditID": "a", "stage": "Panic", "responseStatus": {"code": code}}).code == 403
    with pytest.raises(MalformedEvent, match=r"responseStatus\.code"):
        parse_event(b'{"auditID": "a", "stage": "Panic", "responseStatus": {"code": true}}')


def test_a_forged_long_agent_is_cut_whichever_way_the_event_comes_in() -> None:
    agent = "é" * 3000  # 6,000 bytes
    raw = {"auditID": "a", "stage": "ResponseComplete", "userAgent": agent}
    cut = "é" * 512 + useragent.TRUNCATION_MARK
    assert parse_event(orjson.dumps(raw)).user_agent == cut
    assert parse_event(raw).user_agent == cut
    body = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [raw]}
    assert msgspec.convert(body, EventList).items[0].user_agent == cut
    assert msgspec.json.decode(orjson.dumps(body), type=EventList).items[0].user_agent == cut
