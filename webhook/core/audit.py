"""audit.k8s.io/v1 ``Event`` and ``EventList``, as kube-apiserver really sends them.

Shapes follow the recorded traffic in ``tests/data/`` (kube-apiserver 1.20): a 401 has an empty
``user`` and stage ``ResponseStarted``; an empty User-Agent header means no ``userAgent`` key;
``objectRef`` is absent for non-resource URLs and has no ``name`` on a create. Unknown fields are
ignored so newer apiservers keep working; the fields we rely on are typed.

The models are msgspec Structs, the one model of this wire format: every reader on a hot path
(``/audit``, the tailer, replay) decodes JSON bytes straight into them in C, without building the
dicts first (pydantic took ~5 us an event, more than twice the JSON parse). Numbers are read
leniently, as the pydantic model read them (``strict=False``: ``"403"`` and ``403.0`` are 403;
``true`` is no number).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
import orjson

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
    "event_of_json",
    "event_of_object",
    "forbidden_by_authorization",
    "invalid_reason",
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
_AGENT_SHORT: Final = useragent.MAX_AGENT_BYTES // 4
"""An agent of at most this many characters is at most the apiserver's 1,024 bytes."""


class UserInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    username: str = ""
    uid: str = ""
    groups: list[str] = []


class ObjectReference(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    gc=False,
    rename={"api_group": "apiGroup", "api_version": "apiVersion"},
):
    resource: str = ""
    namespace: str = ""
    name: str = ""
    api_group: str = ""
    api_version: str = ""
    subresource: str = ""


class ResponseStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    code: int = 0
    status: str = ""
    reason: str = ""
    message: str = ""


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    gc=False,  # holds no cycles: one GC-tracked object fewer per event on /audit
    rename={
        "api_version": "apiVersion",
        "audit_id": "auditID",
        "request_uri": "requestURI",
        "impersonated_user": "impersonatedUser",
        "source_ips": "sourceIPs",
        "user_agent": "userAgent",
        "object_ref": "objectRef",
        "response_status": "responseStatus",
        "request_received_timestamp": "requestReceivedTimestamp",
        "stage_timestamp": "stageTimestamp",
    },
):
    """One audit event. ``user_agent`` is None when the client sent no User-Agent; it is at most
    the apiserver's 1,024 bytes and ``...TRUNCATED`` (:func:`webhook.core.useragent.cut`)."""

    kind: Literal["Event"] = "Event"
    api_version: Literal["audit.k8s.io/v1"] = "audit.k8s.io/v1"
    level: str = ""
    audit_id: Annotated[str, msgspec.Meta(min_length=1)]
    stage: Stage
    request_uri: str = ""
    verb: str = ""
    user: UserInfo = UserInfo()
    impersonated_user: UserInfo | None = None
    source_ips: list[str] = []
    user_agent: str | None = None
    object_ref: ObjectReference | None = None
    response_status: ResponseStatus | None = None
    request_received_timestamp: str = ""
    stage_timestamp: str = ""
    annotations: dict[str, str] = {}

    def __post_init__(self) -> None:
        """Cut the agent as the apiserver cuts it (a longer one is forged), before any cache keeps it."""
        agent = self.user_agent
        if agent is not None and len(agent) > _AGENT_SHORT:
            msgspec.structs.force_setattr(self, "user_agent", useragent.cut(agent))

    @property
    def code(self) -> int | None:
        return self.response_status.code if self.response_status else None

    @property
    def decision(self) -> str | None:
        return self.annotations.get(DECISION_ANNOTATION)

    @property
    def forbidden_by_authorization(self) -> bool:
        """Refused by the authorizer (see :func:`forbidden_by_authorization`)."""
        status = self.response_status
        if status is None or status.code != 403:
            return False  # most events: one look, no call
        return forbidden_by_authorization(
            stage=self.stage, code=status.code, decision=self.decision, reason=status.reason
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


class EventList(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename={"api_version": "apiVersion"}):
    """What the audit webhook backend POSTs: a batch of events."""

    kind: Literal["EventList"]
    api_version: Literal["audit.k8s.io/v1"]
    items: list[Event] = []


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


def _loads(raw: bytes | str) -> dict[str, Any]:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise MalformedEvent(f"not a JSON object but {type(data).__name__}")
    return data


def audit_object(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one audit line (or the object itself), not validated as an Event.

    Raises :class:`MalformedEvent` with a short reason for oversized or undecodable input.
    """
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_LINE_BYTES:
        raise MalformedEvent(f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
    return _loads(raw)


def invalid_reason(exc: msgspec.ValidationError, prefix: str = "invalid audit event") -> str:
    """msgspec's message as ``prefix: where: what``, where is the field's dotted path (wire names,
    as pydantic's ``loc`` was) and what says what is wrong, never the value that was sent."""
    text = str(exc)
    what, _, at = text.partition(" - at `")
    path = at.rstrip("`").removeprefix("$").replace("[...]", ".*").replace("[", ".").replace("]", "")
    missing = what.removeprefix("Object missing required field `")
    if missing != what:
        path, what = f"{path}.{missing.rstrip('`')}", "Field required"
    elif what.startswith("Invalid enum value"):
        what = "not one of the values allowed"  # msgspec names the value: attacker text, left out
    where = path.strip(".") or "event"
    return f"{prefix}: {where}: {what}"


def event_of_object(data: dict[str, Any]) -> Event:
    """An already decoded JSON object as an :class:`Event`, or :class:`MalformedEvent`."""
    try:
        return msgspec.convert(data, Event, strict=False)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(invalid_reason(exc)) from None


_DECODER: Final = msgspec.json.Decoder(Event, strict=False)


def event_of_json(raw: bytes | str) -> Event:
    """One event's JSON (of any size) as an :class:`Event`, or :class:`MalformedEvent` saying why.

    The decode goes straight from bytes to the Struct; only input it refuses is read again, the
    slow way, for the reason (not JSON, not an object, or which field is wrong).
    """
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError:
        pass
    return event_of_object(_loads(raw))


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Parse one JSON line (or an already decoded object) into an :class:`Event`.

    Raises :class:`MalformedEvent` with a short reason for oversized, undecodable or invalid input.
    """
    if isinstance(raw, dict):
        return event_of_object(raw)
    if len(raw) > MAX_LINE_BYTES:
        raise MalformedEvent(f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
    return event_of_json(raw)
