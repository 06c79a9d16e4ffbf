"""Findings: the schema (ECS field names, nested), the rule descriptions, and their JSON form.

A finding is emitted once when its window opens and, if more refusals followed, once more when
the window closes, with the same ``event.id`` and the totals. Sinks may therefore see an id
twice; the later copy supersedes the earlier one.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import orjson

from webhook.core.allowlist import Verdict
from webhook.core.useragent import display, has_unsafe_chars

__all__ = [
    "DATASET",
    "ONE_LINE_MAX",
    "RULES",
    "THREAT",
    "Aggregate",
    "DataStream",
    "EffectiveUser",
    "Finding",
    "FindingEvent",
    "Orchestrator",
    "OrchestratorCluster",
    "Rule",
    "Severity",
    "Source",
    "User",
    "UserAgentField",
    "UserGroup",
    "VerdictDetail",
    "dumps",
]

DATASET = "ua_sentinel.finding"
"""``event.dataset`` and ``data_stream.dataset`` alike, as ECS asks (lowercase, no ``-``)."""

ONE_LINE_MAX = 1024
""":meth:`Finding.one_line` never exceeds this (a Kubernetes Event message's cap)."""
_USER_MAX = 96
_URI_MAX = 220
_AGENT_MAX = 150

Severity = Literal["low", "medium", "high", "critical"]
RISK_SCORE: dict[Severity, int] = {"low": 21, "medium": 47, "high": 73, "critical": 99}

RULES: dict[str, str] = {
    "unusual-agent-forbidden": (
        "A request from a user agent that is not on the cluster's allowlist was refused by "
        "authorization (403, decision forbid): the signature of recon tooling probing RBAC."
    ),
    "forbidden-burst": (
        "One principal and agent were refused on many distinct resources or URIs in a short "
        "window: permission enumeration (kubectl auth can-i loops, peirates, kdigger)."
    ),
    "known-bad-agent": (
        "A request from an agent on the allowlist's denied list (attack tools, scripting HTTP "
        "clients) succeeded: it was not only probing, it got an answer or changed something."
    ),
    "new-agent-forbidden": (
        "A request was refused from an agent family (product and major version) not refused in "
        "the baseline window before it (default 7 days), whether or not the allowlist lists it."
    ),
}

THREAT: list[dict[str, Any]] = [
    {
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": "TA0002",
            "name": "Execution",
            "reference": "https://attack.mitre.org/tactics/TA0002/",
        },
        "technique": [
            {
                "id": "T1613",
                "name": "Container and Resource Discovery",
                "reference": "https://attack.mitre.org/techniques/T1613/",
            }
        ],
    },
    {
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": "TA0007",
            "name": "Discovery",
            "reference": "https://attack.mitre.org/tactics/TA0007/",
        },
        "technique": [
            {
                "id": "T1613",
                "name": "Container and Resource Discovery",
                "reference": "https://attack.mitre.org/techniques/T1613/",
            }
        ],
    },
]


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """A part of a finding: immutable (sinks share one finding), built without validation from the
    Detector's own values; :meth:`Finding.from_dict` validates what is read back from elsewhere."""

    def as_dict(self) -> dict[str, Any]:
        """Every field by its wire name, ``None`` included, values as they are (not copied): a part
        kept inside a plain dict such as ``ua_sentinel``."""
        return {
            key: getattr(self, name)
            for name, key in zip(self.__struct_fields__, self.__struct_encode_fields__, strict=True)
        }


class FindingEvent(_Out, frozen=True, kw_only=True):
    kind: Literal["alert"] = "alert"
    category: list[str] = msgspec.field(default_factory=lambda: ["api", "iam"])
    type: list[str] = msgspec.field(default_factory=lambda: ["denied"])
    outcome: Literal["failure", "success", "unknown"] = "failure"
    module: str = "ua-sentinel"
    dataset: str = DATASET
    id: str
    severity: int
    risk_score: int
    count: int
    start: str
    end: str
    sequence: int
    """1 for the first emission of this id, 2 for the window total."""


class DataStream(_Out, frozen=True, kw_only=True):
    """ECS ``data_stream``: where an Elastic ingest pipeline files the finding
    (``logs-ua_sentinel.finding-default``). The namespace stays ``default``: cluster names may hold
    ``-``, which ECS forbids there; the cluster is in ``orchestrator.cluster.name``."""

    type: Literal["logs"] = "logs"
    dataset: str = DATASET
    namespace: str = "default"


class OrchestratorCluster(_Out, frozen=True, kw_only=True):
    name: str


class Orchestrator(_Out, frozen=True, kw_only=True):
    """ECS ``orchestrator``: which cluster the finding comes from (``--cluster-name``)."""

    type: Literal["kubernetes"] = "kubernetes"
    cluster: OrchestratorCluster


class Rule(_Out, frozen=True, kw_only=True):
    name: str
    description: str
    ruleset: str = "ua-sentinel"


class UserGroup(_Out, frozen=True, kw_only=True):
    name: list[str] = []


class EffectiveUser(_Out, frozen=True, kw_only=True):
    name: str
    id: str = ""


class User(_Out, frozen=True, kw_only=True):
    name: str
    id: str = ""
    group: UserGroup = msgspec.field(default_factory=UserGroup)
    effective: EffectiveUser | None = None


class UserAgentField(_Out, frozen=True, kw_only=True):
    original: str | None = None
    """The raw agent, attacker-controlled: never print it."""
    display: str
    """Control, bidi and zero-width characters escaped; length capped."""
    name: str | None = None
    version: str | None = None


class Source(_Out, frozen=True, kw_only=True):
    ip: str | None = None


class VerdictDetail(_Out, frozen=True, kw_only=True):
    """The allowlist's :data:`~webhook.core.allowlist.Verdict` on the agent, and which entry gave it."""

    verdict: Verdict
    entry: str | None = None
    reason: str = ""
    allowlist_hash: str = ""


class Aggregate(_Out, frozen=True, kw_only=True):
    verbs: list[str]
    resources: list[str]
    audit_ids: list[str]
    truncated: bool
    """More distinct values were seen than are listed."""


class Finding(_Out, frozen=True, kw_only=True):
    """One alert. Serialise with :func:`dumps`; read one back with :meth:`from_dict`."""

    timestamp: str = msgspec.field(name="@timestamp")
    event: FindingEvent
    rule: Rule
    user: User
    user_agent: UserAgentField
    source: Source
    kubernetes: dict[str, Any]
    threat: list[dict[str, Any]] = msgspec.field(default_factory=lambda: THREAT)
    data_stream: DataStream = msgspec.field(default_factory=DataStream)
    orchestrator: Orchestrator | None = None
    ua_sentinel: dict[str, Any] = {}

    @classmethod
    def from_dict(cls, data: Any) -> Finding:
        """A finding saved as :meth:`to_dict` (or by an older version, ``null`` fields included),
        validated: a wrong or missing field raises ``msgspec.ValidationError`` (a ``ValueError``)
        naming its path, e.g. ``Expected `int`, got `str` - at `$.event.count```."""
        return msgspec.convert(data, cls)

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def cluster_name(self) -> str | None:
        return self.orchestrator.cluster.name if self.orchestrator else None

    def in_cluster(self, name: str | None) -> Finding:
        """This finding stamped with its cluster; the id stays (the same finding from any source
        has one id, and a renamed cluster must not turn old findings into new ones)."""
        if not name:
            return self
        return msgspec.structs.replace(
            self, orchestrator=Orchestrator(cluster=OrchestratorCluster(name=name))
        )

    def to_dict(self) -> dict[str, Any]:
        """The ECS document: wire names (``@timestamp``), fields in declaration order, a field that is
        ``None`` left out (a ``null`` inside ``kubernetes`` or ``ua_sentinel`` stays)."""
        return _plain(self)

    def one_line(self) -> str:
        """The finding as one sentence for people (Event messages, chat), at most
        :data:`ONE_LINE_MAX` characters whatever the audit event held.

        Identifiers come first (cluster, finding id, rule, user, source IP, time), so a cut made by
        whoever shows the line never loses them; the long attacker-shaped fields (verb, URI, agent) come
        last, each escaped (:func:`~webhook.core.useragent.display`) and capped on its own. Only the
        escaped agent (``user_agent.display``) appears, never the raw one.
        """
        audit = self.kubernetes.get("audit", {})
        severity = display(str(self.ua_sentinel.get("severity", "?")), 16)
        user = display(self.user.name, _USER_MAX)
        if self.user.effective is not None:
            user += f" (as {display(self.user.effective.name, _USER_MAX)})"
        cluster = f"cluster {display(self.cluster_name, 64)}: " if self.cluster_name else ""
        return (
            f"{cluster}finding {display(self.id, 64)} {display(self.rule.name, 48)} ({severity}): "
            f"user {user} from {display(self.source.ip or '?', 64)} at {display(self.timestamp, 40)}: "
            f"{self.event.count} request(s), first {display(str(audit.get('verb', '?')), 32)} "
            f"{display(str(audit.get('requestURI', '?')), _URI_MAX)} "
            f'with agent "{_capped(self.user_agent.display, _AGENT_MAX)}"'
        )[:ONE_LINE_MAX]


def _capped(shown: str, limit: int) -> str:
    """An already escaped text (``user_agent.display``) cut to ``limit``, never escaped twice."""
    if has_unsafe_chars(shown):  # not what display() makes: a finding read back from elsewhere
        shown = display(shown, limit)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_NONE_LEFT_OUT: tuple[tuple[str, ...], ...] = (
    ("orchestrator",),
    ("user", "effective"),
    ("user_agent", "original"),
    ("user_agent", "name"),
    ("user_agent", "version"),
    ("source", "ip"),
)
"""The fields that may be ``None`` (their default), by wire path: the document leaves them out."""


def _plain(finding: Finding) -> dict[str, Any]:
    """New dicts and lists all the way down (msgspec's C walk, wire names, field order), less the
    fields that are ``None``; a ``null`` inside ``kubernetes`` or ``ua_sentinel`` stays."""
    doc: dict[str, Any] = msgspec.to_builtins(finding)
    for *parents, key in _NONE_LEFT_OUT:
        part = doc
        for parent in parents:
            part = part[parent]
        if key in part and part[key] is None:
            del part[key]
    return doc


def dumps(finding: Finding) -> bytes:
    """One JSON line (no trailing newline)."""
    return orjson.dumps(_plain(finding))
