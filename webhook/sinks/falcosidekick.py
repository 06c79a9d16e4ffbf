"""The ``falcosidekick:URL`` sink: each finding POSTed as the Falco alert falcosidekick accepts.

falcosidekick decodes ``types.FalcoPayload`` (``output``, ``priority``, ``rule``, ``time``,
``output_fields``, ``source``, ``tags``, ``hostname``) and rejects (400) a payload without a known
priority, a rule, a time or output fields; from there one setting reaches all its outputs.

- ``priority`` from our severity: low → Notice, medium → Warning, high → Error, critical →
  Critical. falcosidekick's PolicyReport output maps those back to the same four severities.
- ``source`` is ``k8saudit``: falcosidekick writes PolicyReports only for the sources
  ``syscall``, ``syscalls`` and ``k8saudit`` (``handlers.go``); Falco's own plugin says
  ``k8s_audit``, which PolicyReports would drop. The ``ua-sentinel`` tag tells our alerts apart.
- ``output_fields`` use the k8saudit plugin's names (``ka.user.name``, ``ka.useragent``,
  ``ka.verb``, ``ka.uri``, ``ka.target.*``, ...), so Falco rules' habits, falcosidekick's
  PolicyReport subjects and templated fields work, plus ECS names for what k8saudit has no name
  for (``event.id``, ``orchestrator.cluster.name``). Every attacker-shaped string (agent, user,
  URI, names) is escaped as in :meth:`Finding.one_line`: falcosidekick forwards it to chat tools.
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

import orjson

from webhook.core.findings import Finding, Severity
from webhook.core.useragent import display
from webhook.sinks.http import post

__all__ = ["PRIORITY", "SOURCE", "FalcosidekickSink", "falco_payload"]

PRIORITY: dict[Severity, str] = {
    "low": "Notice",
    "medium": "Warning",
    "high": "Error",
    "critical": "Critical",
}
SOURCE = "k8saudit"


def _rfc3339(timestamp: str) -> str:
    """Go's ``time.Time`` reads RFC 3339 only; a time it cannot read would be refused forever."""
    try:
        when = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        when = dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _esc(value: Any) -> str | None:
    return display(str(value)) if value not in (None, "") else None


def _output_fields(finding: Finding) -> dict[str, Any]:
    audit: dict[str, Any] = finding.kubernetes.get("audit", {})
    ref: dict[str, Any] = audit.get("objectRef") or {}
    status: dict[str, Any] = audit.get("responseStatus") or {}
    annotations: dict[str, Any] = audit.get("annotations") or {}
    fields: dict[str, Any] = {
        "ka.auditid": _esc(audit.get("auditID")),
        "ka.user.name": _esc(finding.user.name),
        "ka.user.groups": [display(group) for group in finding.user.group.name] or None,
        "ka.useragent": finding.user_agent.display,
        "ka.verb": _esc(audit.get("verb")),
        "ka.uri": _esc(audit.get("requestURI")),
        "ka.auth.decision": _esc(annotations.get("authorization.k8s.io/decision")),
        "ka.auth.reason": _esc(annotations.get("authorization.k8s.io/reason")),
        "ka.response.code": _esc(status.get("code")),
        "ka.target.resource": _esc(ref.get("resource")),
        "ka.target.subresource": _esc(ref.get("subresource")),
        "ka.target.namespace": _esc(ref.get("namespace")),
        "ka.target.name": _esc(ref.get("name")),
        "ka.impuser.name": _esc(finding.user.effective.name) if finding.user.effective else None,
        "event.id": finding.id,
        "event.sequence": finding.event.sequence,
        "event.count": finding.event.count,
        "event.risk_score": finding.event.risk_score,
        "source.ip": _esc(finding.source.ip),
        "orchestrator.cluster.name": _esc(finding.cluster_name),
    }
    return {key: value for key, value in fields.items() if value is not None}


def falco_payload(finding: Finding) -> dict[str, Any]:
    """The finding as falcosidekick's ``FalcoPayload``."""
    severity: Severity = finding.ua_sentinel.get("severity", "medium")
    tactics = [t["tactic"]["name"].lower() for t in finding.threat if "tactic" in t]
    techniques = {x["id"] for t in finding.threat for x in t.get("technique", [])}
    return {
        "output": f"ua-sentinel {finding.one_line()}",
        "priority": PRIORITY.get(severity, "Warning"),
        "rule": finding.rule.name,
        "time": _rfc3339(finding.timestamp),
        "output_fields": _output_fields(finding),
        "source": SOURCE,
        "tags": ["ua-sentinel", "k8s", *(f"mitre_{t}" for t in tactics), *sorted(techniques)],
        "hostname": socket.gethostname(),
    }


class FalcosidekickSink:
    """POST each finding to falcosidekick (it listens at ``/``); non-2xx raises ``SinkError``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def deliver(self, finding: Finding) -> None:
        body = orjson.dumps(falco_payload(finding))
        post(self.url, body, content_type="application/json", timeout=self.timeout)

    def close(self) -> None:
        return None
