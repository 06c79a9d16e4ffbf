"""audit.k8s.io/v1 ``Event`` and ``EventList``, as kube-apiserver really sends them.

Shapes follow the recorded traffic in ``tests/data/`` (kube-apiserver 1.20): a 401 has an empty
``user`` and stage ``ResponseStarted``; an empty User-Agent header means no ``userAgent`` key;
``objectRef`` is absent for non-resource URLs and has no ``name`` on a create. Unknown fields are
ignored so newer apiservers keep working; the fields we rely on are typed.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webhook.core import useragent
from webhook.errors import InputError

__all__ = [
    "AGENT_ANNOTATION",
    "DECISION_ANNOTATION",
    "HASH_ANNOTATION",
    "JOIN_ANNOTATION",
    "MAX_LINE_BYTES",
    "MUTATING_VERBS",
    "VERDICT_ANNOTATION",
    "Event",
    "EventList",
    "MalformedEvent",
    "ObjectReference",
    "ResponseStatus",
    "Stage",
    "UserInfo",
    "audit_object",
    "forbidden_by_authorization",
    "parse_event",
]

DECISION_ANNOTATION = "authorization.k8s.io/decision"
VERDICT_ANNOTATION = "user-agent-verdict"
AGENT_ANNOTATION = "user-agent"
HASH_ANNOTATION = "allowlist-hash"
JOIN_ANNOTATION = "user-agent-join"
"""The webhook's auditAnnotations keys; the apiserver prefixes each with the webhook's name."""
MUTATING_VERBS = frozenset(("create", "update", "patch", "delete", "deletecollection"))
MAX_LINE_BYTES = 4 * 1024 * 1024
"""Longest audit line accepted. Metadata-level events are ~1 KB; anything this big is not ours."""

Stage = Literal["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: list[str] = Field(default_factory=list)


class ObjectReference(_Wire):
    resource: str = ""
    namespace: str = ""
    name: str = ""
    api_group: str = Field(default="", alias="apiGroup")
    api_version: str = Field(default="", alias="apiVersion")
    subresource: str = ""


class ResponseStatus(_Wire):
    code: int = 0
    status: str = ""
    reason: str = ""
    message: str = ""


class Event(_Wire):
    """One audit event. ``user_agent`` is None when the client sent no User-Agent; it is at most
    the apiserver's 1,024 bytes and ``...TRUNCATED`` (:func:`webhook.core.useragent.cut`)."""

    kind: Literal["Event"] = "Event"
    api_version: Literal["audit.k8s.io/v1"] = Field(default="audit.k8s.io/v1", alias="apiVersion")
    level: str = ""
    audit_id: str = Field(alias="auditID", min_length=1)
    stage: Stage
    request_uri: str = Field(default="", alias="requestURI")
    verb: str = ""
    user: UserInfo = Field(default_factory=UserInfo)
    impersonated_user: UserInfo | None = Field(default=None, alias="impersonatedUser")
    source_ips: list[str] = Field(default_factory=list, alias="sourceIPs")
    user_agent: str | None = Field(default=None, alias="userAgent")
    object_ref: ObjectReference | None = Field(default=None, alias="objectRef")
    response_status: ResponseStatus | None = Field(default=None, alias="responseStatus")
    request_received_timestamp: str = Field(default="", alias="requestReceivedTimestamp")
    stage_timestamp: str = Field(default="", alias="stageTimestamp")
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("user_agent")
    @classmethod
    def _cut_agent(cls, agent: str | None) -> str | None:
        """Cut as the apiserver cuts (a longer one is forged), before any cache keeps it."""
        return None if agent is None else useragent.cut(agent)

    @property
    def code(self) -> int | None:
        return self.response_status.code if self.response_status else None

    @property
    def decision(self) -> str | None:
        return self.annotations.get(DECISION_ANNOTATION)

    @property
    def forbidden_by_authorization(self) -> bool:
        """Refused by the authorizer (see :func:`forbidden_by_authorization`)."""
        return forbidden_by_authorization(
            stage=self.stage,
            code=self.code,
            decision=self.decision,
            reason=self.response_status.reason if self.response_status is not None else None,
        )

    @property
    def effective_user(self) -> UserInfo:
        """Whom the request acted as: the impersonated user when there is one."""
        return self.impersonated_user or self.user

    @property
    def source_ip(self) -> str:
        return self.source_ips[0] if self.source_ips else ""

    @property
    def namespace(self) -> str | None:
        return self.object_ref.namespace or None if self.object_ref else None

    @property
    def resource_label(self) -> str:
        """``configmaps``, ``pods/exec`` or, for non-resource requests, the URL path."""
        if self.object_ref and self.object_ref.resource:
            ref = self.object_ref
            res = f"{ref.resource}/{ref.subresource}" if ref.subresource else ref.resource
            return f"{ref.api_group}/{res}" if ref.api_group else res
        return self.request_uri.split("?", 1)[0]


class EventList(_Wire):
    """What the audit webhook backend POSTs: a batch of events."""

    kind: Literal["EventList"]
    api_version: Literal["audit.k8s.io/v1"] = Field(alias="apiVersion")
    items: list[Event] = Field(default_factory=list)


class MalformedEvent(InputError):
    """An audit line that is not a usable Event; the message says why (never the line itself)."""


def forbidden_by_authorization(*, stage: object, code: object, decision: object, reason: object) -> bool:
    """Refused by the authorizer: a completed 403 whose decision annotation says ``forbid``.

    Some exports drop annotations; then a 403 whose reason is ``Forbidden`` counts. A 403
    with decision ``allow`` was refused later (admission), not by RBAC, and does not. Takes the
    fields rather than an :class:`Event`, so ``suggest`` can ask it of raw objects at JSON speed.
    """
    if stage != "ResponseComplete" or code != 403:
        return False
    if decision is not None:
        return decision == "forbid"
    return reason == "Forbidden"


def audit_object(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one audit line (or the object itself), not validated as an Event.

    Raises :class:`MalformedEvent` with a short reason for oversized or undecodable input.
    """
    if isinstance(raw, dict):
        data: Any = raw
    else:
        if len(raw) > MAX_LINE_BYTES:
            raise MalformedEvent(f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(f"not JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise MalformedEvent(f"not a JSON object but {type(data).__name__}")
    return data


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Parse one JSON line (or an already decoded object) into an :class:`Event`.

    Raises :class:`MalformedEvent` with a short reason for oversized, undecodable or invalid input.
    """
    data = audit_object(raw)
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        raise MalformedEvent(f"invalid audit event: {where}: {err['msg']}") from None
