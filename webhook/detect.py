"""The Detector: audit events in, findings out. No I/O; replay, the tailer and /audit share it.

**unusual-agent-forbidden**: a ``ResponseComplete`` refused by authorization (decision
``forbid``; a 403 ``Forbidden`` when the annotation is missing) whose agent is not listed
(a missing agent is unlisted). Refusals are aggregated per (user, impersonated user, agent,
source IP) over a window measured in *event* time, so replaying a log and tailing it give the
same findings: the first refusal is emitted at once (``event.sequence`` 1) and, when more
followed, the window's totals are emitted on close with the same ``event.id`` (sequence 2).
Open windows are bounded; the oldest is closed early (and counted) when the bound is reached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from webhook import useragent
from webhook.allowlist import Allowlist, Decision
from webhook.audit import Event
from webhook.findings import (
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
    Verdict,
)

__all__ = [
    "DEFAULT_CONFIG",
    "PREFILTER_NEEDLES",
    "Detector",
    "DetectorConfig",
    "DetectorStats",
    "might_matter",
]

RULE_UNUSUAL_AGENT_FORBIDDEN = "unusual-agent-forbidden"


@dataclass(frozen=True, kw_only=True, slots=True)
class DetectorConfig:
    window: dt.timedelta = dt.timedelta(minutes=10)
    """How long refusals of one (user, agent, source) fold into one finding."""
    max_windows: int = 10_000
    """Open windows kept; past this the oldest is closed early and counted as evicted."""
    max_audit_ids: int = 20
    max_distinct: int = 32
    """Distinct verbs / resources listed per finding (more are counted, not listed)."""


DEFAULT_CONFIG = DetectorConfig()


@dataclass(slots=True)
class DetectorStats:
    events: int = 0
    forbidden: int = 0
    findings: int = 0
    windows_evicted: int = 0


@dataclass(slots=True)
class _Window:
    """An open aggregation window. Only JSON-able fields: it is checkpointed by the tailer."""

    rule: str
    finding_id: str
    verdict: str
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


PREFILTER_NEEDLES: tuple[bytes, ...] = (b"403",)
"""Byte strings of which every line that can give a finding holds at least one.

Readers search whole blocks for these (C speed) and decode only the lines around a hit; any
rule added to the Detector must keep this a superset of the lines it needs.
"""


def might_matter(line: bytes) -> bool:
    """Cheap pre-filter: False only for lines that cannot produce a finding.

    Most audit lines are successful requests; skipping their JSON parse is the replay fast path.
    """
    return any(needle in line for needle in PREFILTER_NEEDLES)


def _timestamp(event: Event) -> tuple[str, float | None]:
    text = event.stage_timestamp or event.request_received_timestamp
    try:
        return text, dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return text, None


def _audit_fields(event: Event) -> dict[str, Any]:
    """The ``kubernetes.audit`` part of a finding: the first refused request, as audited."""
    out: dict[str, Any] = {
        "auditID": event.audit_id,
        "stage": event.stage,
        "verb": event.verb,
        "requestURI": event.request_uri,
        "user": event.user.model_dump(),
        "sourceIPs": list(event.source_ips),
        "responseStatus": {"code": event.code, "reason": event.response_status.reason}
        if event.response_status
        else None,
        "annotations": dict(event.annotations),
        "requestReceivedTimestamp": event.request_received_timestamp,
        "stageTimestamp": event.stage_timestamp,
    }
    if event.object_ref is not None:
        out["objectRef"] = event.object_ref.model_dump(by_alias=True, exclude_defaults=True)
    if event.impersonated_user is not None:
        out["impersonatedUser"] = event.impersonated_user.model_dump()
    return out


def _finding_id(rule: str, key: tuple[Any, ...], first_audit_id: str) -> str:
    material = orjson.dumps([rule, *key, first_audit_id])
    return hashlib.sha256(material).hexdigest()[:32]


class Detector:
    """Turns audit events into findings. Not thread-safe: feed it from one task or thread."""

    def __init__(
        self,
        allowlist: Allowlist | Callable[[], Allowlist],
        *,
        config: DetectorConfig = DEFAULT_CONFIG,
    ) -> None:
        self._allowlist = allowlist if callable(allowlist) else (lambda: allowlist)
        self.config = config
        self.stats = DetectorStats()
        self._windows: OrderedDict[tuple[Any, ...], _Window] = OrderedDict()
        self._watermark: float = float("-inf")

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    def process(self, event: Event) -> list[Finding]:
        """Findings caused by ``event``: new ones, and totals of windows it closed."""
        self.stats.events += 1
        text, epoch = _timestamp(event)
        if epoch is not None and epoch > self._watermark:
            self._watermark = epoch
        out = self.close_expired(self._watermark)
        if not event.forbidden_by_authorization:
            return out
        self.stats.forbidden += 1
        allowlist = self._allowlist()
        day = dt.datetime.fromtimestamp(epoch, dt.UTC).date() if epoch is not None else None
        decision = allowlist.decide(
            event.user_agent,
            user=event.user.username,
            groups=event.user.groups,
            namespace=event.namespace,
            today=day,
        )
        if decision.verdict == "listed":
            return out
        out.extend(self._fold(RULE_UNUSUAL_AGENT_FORBIDDEN, event, decision, allowlist.hash, text, epoch))
        return out

    def _fold(
        self,
        rule: str,
        event: Event,
        decision: Decision,
        allowlist_hash: str,
        text: str,
        epoch: float | None,
    ) -> list[Finding]:
        out: list[Finding] = []
        effective = event.impersonated_user
        key = (
            rule,
            event.user.username,
            effective.username if effective else None,
            event.user_agent,
            event.source_ip,
        )
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.config.max_windows:
                _, oldest = self._windows.popitem(last=False)
                self.stats.windows_evicted += 1
                out.extend(self._close(oldest))
            window = _Window(
                rule=rule,
                finding_id=_finding_id(rule, key, event.audit_id),
                verdict=decision.verdict,
                entry=decision.entry,
                reason=decision.reason,
                allowlist_hash=allowlist_hash,
                username=event.user.username,
                uid=event.user.uid,
                groups=list(event.user.groups),
                effective_user=effective.username if effective else None,
                effective_uid=effective.uid if effective else "",
                agent=event.user_agent,
                source_ip=event.source_ip,
                first_audit=_audit_fields(event),
                start=text,
                end=text,
                start_epoch=epoch if epoch is not None else self._watermark,
            )
            self._windows[key] = window
        self._add(window, event, text)
        if window.emitted == 0:
            window.emitted = window.count
            out.append(self._finding(window, sequence=1))
        return out

    def _add(self, window: _Window, event: Event, text: str) -> None:
        window.count += 1
        window.end = text or window.end
        limit = self.config.max_distinct
        for values, value in ((window.verbs, event.verb), (window.resources, event.resource_label)):
            if value not in values:
                if len(values) < limit:
                    values.append(value)
                else:
                    window.truncated = True
        if len(window.audit_ids) < self.config.max_audit_ids:
            window.audit_ids.append(event.audit_id)
        else:
            window.truncated = True

    def close_expired(self, now: float) -> list[Finding]:
        """Close windows opened more than ``config.window`` before ``now`` (epoch seconds)."""
        out: list[Finding] = []
        span = self.config.window.total_seconds()
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.start_epoch + span > now:
                break
            del self._windows[key]
            out.extend(self._close(window))
        return out

    def flush(self) -> list[Finding]:
        """Close every open window (end of a replay, or shutdown)."""
        out: list[Finding] = []
        while self._windows:
            _, window = self._windows.popitem(last=False)
            out.extend(self._close(window))
        return out

    def _close(self, window: _Window) -> list[Finding]:
        if window.count <= window.emitted:
            return []
        window.emitted = window.count
        return [self._finding(window, sequence=2)]

    def _finding(self, window: _Window, *, sequence: int) -> Finding:
        self.stats.findings += 1
        severity: Severity = "high" if window.verdict == "denied" else "medium"
        primary = useragent.parse(window.agent).primary if window.agent else None
        effective = (
            EffectiveUser(name=window.effective_user, id=window.effective_uid)
            if window.effective_user is not None
            else None
        )
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
            ua_sentinel={
                "severity": severity,
                "verdict": Verdict(
                    verdict=window.verdict,
                    entry=window.entry,
                    reason=window.reason,
                    allowlist_hash=window.allowlist_hash,
                ).model_dump(),
                "aggregate": Aggregate(
                    verbs=list(window.verbs),
                    resources=list(window.resources),
                    audit_ids=list(window.audit_ids),
                    truncated=window.truncated,
                ).model_dump(),
            },
        )

    def snapshot(self) -> dict[str, Any]:
        """Open windows and the watermark, JSON-able, for a checkpoint."""
        return {
            "watermark": self._watermark if self._watermark != float("-inf") else None,
            "windows": [asdict(w) for w in self._windows.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Reload what :meth:`snapshot` returned (replaces any open windows)."""
        self._windows.clear()
        watermark = state.get("watermark")
        self._watermark = float(watermark) if watermark is not None else float("-inf")
        for raw in state.get("windows", []):
            window = _Window(**raw)
            key = (
                window.rule,
                window.username,
                window.effective_user,
                window.agent,
                window.source_ip,
            )
            self._windows[key] = window
