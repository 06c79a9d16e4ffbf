"""The Detector's rules, their aggregation windows, and how a window becomes a Finding.

Rule names (``rule.name`` in findings): ``unusual-agent-forbidden`` (the design card's rule),
``forbidden-burst`` (permission enumeration), ``known-bad-agent`` (a denied agent succeeding)
and ``new-agent-forbidden`` (baseline). Windows hold only JSON-able fields: the tailer
checkpoints them (``Detector.snapshot``) and a restarted tailer continues them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from webhook.core import useragent
from webhook.core.audit import Event, UserInfo
from webhook.core.findings import (
    RISK_SCORE,
    RULES,
    Aggregate,
    EffectiveUser,
    Finding,
    FindingEvent,
    Rule,
    Severity,
    Source,
    User,
    UserAgentField,
    UserGroup,
    VerdictDetail,
)
from webhook.detect.flagged import Flagged

if TYPE_CHECKING:
    from webhook.core.allowlist import Verdict  # an annotation of Window only

__all__ = [
    "FORBIDDEN_BURST",
    "KNOWN_BAD_AGENT",
    "NEW_AGENT_FORBIDDEN",
    "UNUSUAL_AGENT_FORBIDDEN",
    "Window",
    "audit_fields",
    "build_finding",
    "finding_id",
]

UNUSUAL_AGENT_FORBIDDEN = "unusual-agent-forbidden"
FORBIDDEN_BURST = "forbidden-burst"
KNOWN_BAD_AGENT = "known-bad-agent"
NEW_AGENT_FORBIDDEN = "new-agent-forbidden"

_ESCALATE: dict[Severity, Severity] = {
    "low": "medium",
    "medium": "high",
    "high": "critical",
    "critical": "critical",
}


@dataclass(slots=True)
class Window:
    """An open aggregation window (or, for one-shot rules, a single event)."""

    rule: str
    key: list[Any]
    finding_id: str
    verdict: Verdict
    entry: str | None
    reason: str
    allowlist_hash: str
    username: str
    uid: str
    groups: list[str]
    effective_user: str | None
    effective_uid: str
    agent: str | None
    source_ip: str
    first_audit: dict[str, Any]
    start: str
    end: str
    start_epoch: float
    count: int = 0
    emitted: int = 0
    verbs: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    audit_ids: list[str] = field(default_factory=list)
    truncated: bool = False
    targets: list[str] = field(default_factory=list)
    """forbidden-burst: distinct refused URIs (up to a cap)."""
    fired: bool = True
    """forbidden-burst opens a window unfired; it fires once the threshold is reached."""
    related_emitted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Rule-specific details for ``ua_sentinel`` (burst threshold, baseline family, ...)."""


def audit_fields(event: Event) -> dict[str, Any]:
    """The ``kubernetes.audit`` part of a finding: the first request, as audited."""
    out: dict[str, Any] = {
        "auditID": event.audit_id,
        "stage": event.stage,
        "verb": event.verb,
        "requestURI": event.request_uri,
        "user": _user(event.user),
        "sourceIPs": list(event.source_ips),
        "responseStatus": {"code": event.code, "reason": event.response_status.reason}
        if event.response_status
        else None,
        "annotations": dict(event.annotations),
        "requestReceivedTimestamp": event.request_received_timestamp,
        "stageTimestamp": event.stage_timestamp,
    }
    if event.object_ref is not None:
        ref = event.object_ref
        out["objectRef"] = {
            k: v
            for k, v in (
                ("resource", ref.resource),
                ("namespace", ref.namespace),
                ("name", ref.name),
                ("apiGroup", ref.api_group),
                ("apiVersion", ref.api_version),
                ("subresource", ref.subresource),
            )
            if v
        }
    if event.impersonated_user is not None:
        out["impersonatedUser"] = _user(event.impersonated_user)
    return out


def _user(user: UserInfo) -> dict[str, Any]:
    return {"username": user.username, "uid": user.uid, "groups": list(user.groups)}


def finding_id(rule: str, key: list[Any] | tuple[Any, ...], first_audit_id: str) -> str:
    """Stable id: the same first event under the same rule and key always gives the same id."""
    material = orjson.dumps([rule, *key, first_audit_id])
    return hashlib.sha256(material).hexdigest()[:32]


def _severity(window: Window, related: Flagged | None) -> Severity:
    if window.rule == KNOWN_BAD_AGENT:
        base: Severity = "high"
    elif window.rule == NEW_AGENT_FORBIDDEN:
        base = "low" if window.verdict == "listed" else "medium" if window.verdict == "unlisted" else "high"
    elif window.rule == FORBIDDEN_BURST:
        base = "medium" if window.verdict == "listed" else "high"
    else:
        base = "high" if window.verdict == "denied" else "medium"
    if (
        related is not None
        and related.acting
        and window.rule != KNOWN_BAD_AGENT
        and window.verdict != "listed"
    ):
        return _ESCALATE[base]  # acting + probing
    return base


def build_finding(window: Window, *, sequence: int, related: Flagged | None) -> Finding:
    """The finding a window stands for now (``sequence`` 1 = first emission, 2 = totals)."""
    severity = _severity(window, related)
    primary = useragent.parse(window.agent).primary if window.agent else None
    effective = (
        EffectiveUser(name=window.effective_user, id=window.effective_uid)
        if window.effective_user is not None
        else None
    )
    success = window.rule == KNOWN_BAD_AGENT
    extra: dict[str, Any] = {
        "severity": severity,
        "verdict": VerdictDetail(
            verdict=window.verdict,
            entry=window.entry,
            reason=window.reason,
            allowlist_hash=window.allowlist_hash,
        ).as_dict(),
        "aggregate": Aggregate(
            verbs=list(window.verbs),
            resources=list(window.resources),
            audit_ids=list(window.audit_ids),
            truncated=window.truncated,
        ).as_dict(),
        **window.extra,
    }
    if window.rule == FORBIDDEN_BURST:
        extra["burst"] = {**window.extra.get("burst", {}), "distinct": len(window.targets)}
    if related is not None:
        extra["related"] = related.summary()
        extra["escalated"] = severity != _severity(window, None)
    return Finding(
        timestamp=window.end,
        event=FindingEvent(
            id=window.finding_id,
            severity=RISK_SCORE[severity],
            risk_score=RISK_SCORE[severity],
            count=window.count,
            start=window.start,
            end=window.end,
            sequence=sequence,
            outcome="success" if success else "failure",
            type=["allowed"] if success else ["denied"],
        ),
        rule=Rule(name=window.rule, description=RULES[window.rule]),
        user=User(
            name=window.username,
            id=window.uid,
            group=UserGroup(name=window.groups),
            effective=effective,
        ),
        user_agent=UserAgentField(
            original=window.agent,
            display=useragent.display(window.agent),
            name=primary.name if primary else None,
            version=primary.version if primary else None,
        ),
        source=Source(ip=window.source_ip or None),
        kubernetes={"audit": window.first_audit},
        ua_sentinel=extra,
    )
