"""The admission decision: AdmissionReview in (``admission.k8s.io/v1`` or ``v1beta1``), response out.

Pure: no HTTP, no I/O, no clock beyond the allowlist's day. ``app.py`` reads the body, awaits
the join (:mod:`webhook.serve.join`) and writes what :func:`render` returns.

Errors, two kinds (kopf's split)::

    ReviewError      the review itself is unusable (not JSON, wrong kind, no uid): HTTP 400
    (a denial)       not an error: an ``allowed: false`` response with a 403 status

Only the ``request`` fields the verdict needs are modelled; the embedded ``object`` and
``oldObject`` (up to megabytes) are never validated or turned into Python objects: msgspec
scans the body once, leaving each ``request`` value as raw JSON text, the two objects are dropped
and pydantic validates what is left (:func:`parse_review`). An object nested deeper than those
parsers recurse (~200 levels for pydantic, ~1000 for msgspec) is cut out by a loop that counts
brackets, so its review still gets a verdict: the verdict never depends on what the object holds.

The verdict never fails a request on its own: ``unknown`` (no audit event joined, allowlist not
loaded yet, any internal error) is always allowed and carries no warning.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import orjson
import re2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webhook.core import useragent
from webhook.core.allowlist import VERDICT_RANK, Allowlist, AnnotatedVerdict, Decision, Mode
from webhook.core.audit import AGENT_ANNOTATION, HASH_ANNOTATION, JOIN_ANNOTATION, VERDICT_ANNOTATION
from webhook.core.cache import CacheStats, Memo, text_cost
from webhook.errors import InputError
from webhook.serve.join import JoinResult, Lookup

__all__ = [
    "API_VERSIONS",
    "DEFAULT_EXEMPT_GROUPS",
    "WARNING_MAX",
    "AdmissionRequest",
    "AdmissionReview",
    "GroupVersionResource",
    "Outcome",
    "Policy",
    "ReviewError",
    "UserInfo",
    "cache_stats",
    "decide",
    "lookup_of",
    "parse_review",
    "render",
    "unknown",
    "warning_text",
]

API_VERSIONS: Final = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
DEFAULT_EXEMPT_GROUPS: Final = ("system:masters", "system:nodes", "system:serviceaccounts:kube-system")

WARNING_MAX: Final = 120
"""Longest warning we send: kubectl prints it on one line after ``Warning: ``."""

_shown: Memo[str | None, str] = Memo(
    useragent.display, max_entries=4096, cost=lambda agent, _: text_cost(agent or "")
)
"""Escaping is pure and agents repeat (every kubectl call sends the same one): cache it, bounded
by bytes as every cache keyed by attacker text is."""


class ReviewError(InputError):
    """The AdmissionReview cannot be answered; the message says what is wrong with it (HTTP 400)."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class GroupVersionResource(_Wire):
    group: str = ""
    version: str = ""
    resource: str = ""


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: list[str] = Field(default_factory=list)


class AdmissionRequest(_Wire):
    """The part of ``request`` the verdict reads; ``object``/``oldObject`` are skipped unparsed."""

    uid: str = Field(min_length=1)
    resource: GroupVersionResource = Field(default_factory=GroupVersionResource)
    sub_resource: str = Field(default="", alias="subResource")
    request_resource: GroupVersionResource | None = Field(default=None, alias="requestResource")
    request_sub_resource: str | None = Field(default=None, alias="requestSubResource")
    name: str = ""
    namespace: str = ""
    operation: str = Field(min_length=1)
    user_info: UserInfo = Field(alias="userInfo")
    dry_run: bool | None = Field(default=None, alias="dryRun")


class AdmissionReview(_Wire):
    kind: Literal["AdmissionReview"]
    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = Field(alias="apiVersion")
    request: AdmissionRequest


class _Skim(msgspec.Struct, omit_defaults=True):
    """The envelope with ``request``'s values kept as raw JSON text: scanned, never built."""

    api_version: msgspec.Raw | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="apiVersion")
    kind: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    request: dict[str, msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET


_SKIM_DECODER: Final = msgspec.json.Decoder(_Skim)
_SKIM_ENCODER: Final = msgspec.json.Encoder()
_SKIPPED: Final = ("object", "oldObject")
SKIM_FROM: Final = 4096
"""Bodies smaller than this go straight to pydantic: the skim costs more than it saves (~1 us)."""


def parse_review(body: bytes) -> AdmissionReview:
    """Validate the envelope and the request fields we use; raise :class:`ReviewError` saying why.

    A 20 KB Pod costs pydantic ~150 us to build and throw away, the rest of the review ~5 us.
    So the body is first skimmed (one msgspec pass, nothing built for the objects) and pydantic
    validates the review without them. Anything the skim does not accept as an ordinary review
    takes the plain pydantic path, so the result and every error message are pydantic's; a body
    that path cannot read as JSON gets one more try with its objects cut out
    (:func:`_without_objects`), so nesting inside an object never costs the verdict.
    """
    if len(body) >= SKIM_FROM:
        try:
            skim = _SKIM_DECODER.decode(body)
            if isinstance(skim.request, dict):
                for key in _SKIPPED:
                    skim.request.pop(key, None)
            return AdmissionReview.model_validate_json(_SKIM_ENCODER.encode(skim))
        except Exception:  # only a shortcut: what it cannot take (deep nesting, say), pydantic decides
            pass
    try:
        return _parse_whole(body)
    except _NotJSON:
        flat = _without_objects(body)
        if flat is None:
            raise
    return _parse_whole(flat)


class _NotJSON(ReviewError):
    """pydantic could not read the body as JSON (it may only be nested too deep)."""


def _parse_whole(body: bytes) -> AdmissionReview:
    try:
        return AdmissionReview.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise _NotJSON(f"body is not JSON: {err['msg']}") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise ReviewError("body is not a JSON object") from None
        where = ".".join(str(p) for p in err["loc"]) or "review"
        hint = ""
        if where == "kind":
            hint = " (expected AdmissionReview)"
        elif where == "apiVersion":
            hint = f" (expected one of {', '.join(API_VERSIONS)})"
        raise ReviewError(f"invalid AdmissionReview: {where}: {err['msg']}{hint}") from None


_STRUCTURE: Final = re2.compile(rb'["\[\]{}]')
_BLANK: Final = b" \t\r\n"
_CUT: Final = frozenset((*_SKIPPED, "options"))
"""``request`` members that come from the client (``options`` too: an embedded object)."""


class _Unreadable(InputError):
    """Not the shape :func:`_without_objects` reads (the caller reports pydantic's error)."""


def _string_end(body: bytes, at: int) -> int:
    """Index after the JSON string starting at ``body[at] == '"'``: O(length), no recursion."""
    start = at + 1
    while True:
        quote = body.find(b'"', start)
        if quote < 0:
            raise _Unreadable
        back = quote - 1
        while back >= at and body[back] == 0x5C:  # backslash
            back -= 1
        if (quote - 1 - back) % 2 == 0:
            return quote + 1
        start = quote + 1


_SKIP_BUDGET: Final = 50_000
"""Brackets and strings one review may make :func:`_without_objects` step over (~0.1 s): the
apiserver's order needs none inside the objects; a body in another order gets this far."""


def _value_end(body: bytes, at: int, budget: list[int]) -> int:
    """Index after the JSON value starting at ``at``; nesting is counted in a loop, never recursed.
    Each bracket or string stepped over costs one of ``budget[0]``; none left: unreadable."""
    first = body[at : at + 1]
    if first == b'"':
        return _string_end(body, at)
    if first not in (b"{", b"["):
        end = at
        while end < len(body) and body[end : end + 1] not in (b",", b"}", b"]") and body[end] not in _BLANK:
            end += 1
        if end == at:
            raise _Unreadable
        return end
    depth = 0
    skip_to = at
    for match in _STRUCTURE.finditer(body, at):
        where: int = match.start()
        if where < skip_to:
            continue  # a bracket inside a string
        budget[0] -= 1
        if budget[0] < 0:
            raise _Unreadable
        char = body[where]
        if char == 0x22:  # '"'
            skip_to = _string_end(body, where)
        elif char in (0x7B, 0x5B):  # '{' '['
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return where + 1
    raise _Unreadable


def _blank(body: bytes, at: int) -> int:
    while at < len(body) and body[at] in _BLANK:
        at += 1
    return at


class _Members:
    """Walks the members of the JSON object at ``body[at] == '{'``: :meth:`key` reads the next
    key, the caller decides whether to :meth:`skip` its value (one pass, no recursion) or stop."""

    def __init__(self, body: bytes, at: int, budget: list[int]) -> None:
        if body[at : at + 1] != b"{":
            raise _Unreadable
        self.body = body
        self.budget = budget
        self.at = _blank(body, at + 1)
        self.first = True

    def key(self) -> tuple[str, int, int] | None:
        """(key, where the member starts, where its value starts), or None after the last."""
        body = self.body
        if body[self.at : self.at + 1] == b"}":
            return None
        if not self.first:
            if body[self.at : self.at + 1] != b",":
                raise _Unreadable
            self.at = _blank(body, self.at + 1)
        self.first = False
        start = self.at
        if body[start : start + 1] != b'"':
            raise _Unreadable
        key_end = _string_end(body, start)
        key = orjson.loads(body[start:key_end])
        colon = _blank(body, key_end)
        if body[colon : colon + 1] != b":" or not isinstance(key, str):
            raise _Unreadable
        return key, start, _blank(body, colon + 1)

    def skip(self, value_at: int) -> int:
        """Skip the value at ``value_at``; where it ends."""
        end = _value_end(self.body, value_at, self.budget)
        self.at = _blank(self.body, end)
        return end


_ENVELOPE: Final = frozenset(("apiVersion", "kind"))
_HEADER: Final = frozenset(("uid", "operation", "userInfo"))


def _without_objects(body: bytes) -> bytes | None:
    """The review in ``body`` without ``request.object``, ``oldObject`` and ``options``, found
    without parsing them (any depth); None if the envelope is not a JSON object with a
    ``request`` object.

    The apiserver writes the envelope's ``apiVersion`` and ``kind`` before ``request``, and the
    request's header (uid, resource, name, namespace, operation, userInfo) before ``object``:
    then reading stops at ``object``, whatever its size (``dryRun``, written after the objects,
    is then not read: it is only logged). In any other order every value is skipped, each in
    one pass that counts brackets, within :data:`_SKIP_BUDGET` (the apiserver's own limit of
    10,000 levels fits): a crafted body cannot hold the event loop.
    """
    top: list[bytes] = []
    seen_top: set[str] = set()
    found = False
    try:
        budget = [_SKIP_BUDGET]
        members = _Members(body, _blank(body, 0), budget)
        while (member := members.key()) is not None:
            key, key_at, value_at = member
            if key != "request" or body[value_at : value_at + 1] != b"{" or found:
                top.append(body[key_at : members.skip(value_at)])
                seen_top.add(key)
                continue
            found = True
            early = seen_top >= _ENVELOPE
            kept: list[bytes] = []
            seen: set[str] = set()
            fields = _Members(body, value_at, budget)
            while (field := fields.key()) is not None:
                name, field_at, field_value_at = field
                if name in _CUT and early and seen >= _HEADER:
                    break
                end = fields.skip(field_value_at)
                if name not in _CUT:
                    kept.append(body[field_at:end])
                    seen.add(name)
            top.append(b'"request":{' + b",".join(kept) + b"}")
            if early:
                break
            members.at = _blank(body, fields.at + 1)  # after the request's closing brace
    except (_Unreadable, orjson.JSONDecodeError):
        return None
    return b"{" + b",".join(top) + b"}" if found else None


def lookup_of(request: AdmissionRequest) -> Lookup:
    """Join attributes; ``requestResource`` is what the client asked for, as audited."""
    gvr = request.request_resource or request.resource
    sub = request.request_sub_resource if request.request_sub_resource is not None else request.sub_resource
    return Lookup(
        operation=request.operation,
        username=request.user_info.username,
        uid=request.user_info.uid,
        group=gvr.group,
        resource=gvr.resource,
        subresource=sub,
        namespace=request.namespace,
        name=request.name,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """What the webhook does with a verdict. ``exempt_*`` are never denied in ``enforce`` mode."""

    mode: Mode = "warn"
    exempt_users: frozenset[str] = frozenset()
    exempt_groups: frozenset[str] = frozenset(DEFAULT_EXEMPT_GROUPS)

    def exempt(self, user: UserInfo) -> bool:
        return user.username in self.exempt_users or any(g in self.exempt_groups for g in user.groups)

    def can_deny(self, user: UserInfo) -> bool:
        """Whether a verdict on ``user``'s request can refuse it: then the join settles first
        (:meth:`webhook.serve.join.RequestIndex.join`), so no concurrent request lends its agent."""
        return self.mode == "enforce" and not self.exempt(user)


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """The decision for one review, ready to render."""

    verdict: AnnotatedVerdict
    agent: str | None = None
    allowed: bool = True
    warnings: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    """The denial message (only when ``allowed`` is False)."""
    decision: Decision | None = None
    ambiguous: bool = False
    exempt: bool = False


def cache_stats() -> dict[str, CacheStats]:
    """The admission path's caches, for ``ua_sentinel_cache_*``."""
    return {"admission_agent_display": _shown.stats(), "admission_warnings": _warnings.stats()}


def warning_text(verdict: AnnotatedVerdict, agent: str | None) -> str:
    """The warning kubectl prints (after ``Warning: ``): escaped, at most :data:`WARNING_MAX` chars."""
    return _warnings((verdict, agent))


def _warning(key: tuple[AnnotatedVerdict, str | None]) -> str:
    verdict, agent = key
    if agent is None:
        return "this request sent no User-Agent; requests without one are recorded"
    if verdict == "denied":
        head, tail = 'user agent "', '" is a known-bad agent on this cluster; this request was recorded'
    else:
        head, tail = 'user agent "', "\" is not on this cluster's allowlist; this request was recorded"
    return head + useragent.display(agent, WARNING_MAX - len(head) - len(tail)) + tail


_warnings: Memo[tuple[AnnotatedVerdict, str | None], str] = Memo(
    _warning, max_entries=4096, cost=lambda key, text: text_cost(key[1] or "") + len(text)
)


def _deny_message(verdict: AnnotatedVerdict, agent: str | None, allowlist_hash: str) -> str:
    shown = (
        f'user agent "{useragent.display(agent, 96)}"'
        if agent is not None
        else "a request without a user agent"
    )
    if verdict == "denied":
        return f"{shown} is a known-bad agent on this cluster (allowlist {allowlist_hash}); request refused"
    return (
        f"{shown} is not on this cluster's allowlist (allowlist {allowlist_hash}); use an allowed "
        "client such as kubectl, or ask a cluster admin to add it"
    )


def unknown(allowlist_hash: str | None, *, reason: str | None = None) -> Outcome:
    """Allowed, no warning: nothing tells us the agent (or something went wrong finding it)."""
    annotations = {VERDICT_ANNOTATION: "unknown", HASH_ANNOTATION: allowlist_hash or "none"}
    if reason:
        annotations[JOIN_ANNOTATION] = reason
    return Outcome(verdict="unknown", annotations=annotations)


def decide(
    request: AdmissionRequest,
    join: JoinResult | None,
    allowlist: Allowlist | None,
    policy: Policy,
    *,
    today: dt.date | None = None,
) -> Outcome:
    """The verdict for ``request`` given the pending audit requests it joined.

    Several pending requests with different agents: every agent is judged and the worst
    verdict answers (denied > unlisted > listed); ``user-agent-join`` says so. Scopes are
    matched against each request's authenticated user: for an impersonated write, the
    impersonator, not the user the review names.
    """
    if allowlist is None:
        return unknown(None, reason="no allowlist loaded yet")
    if join is None:
        return unknown(allowlist.hash)
    user = request.user_info
    worst: tuple[str | None, Decision] | None = None
    for agent, authenticated, groups in join.judged:
        # Scopes match the authenticated user of each joined request (README), never the
        # impersonated one the review names.
        decision = allowlist.decide(
            agent,
            user=authenticated or user.username,
            groups=list(groups) if authenticated else user.groups,
            namespace=request.namespace or None,
            today=today,
        )
        if worst is None or VERDICT_RANK[decision.verdict] > VERDICT_RANK[worst[1].verdict]:
            worst = (agent, decision)
    assert worst is not None  # a JoinResult holds at least one entry
    agent, decision = worst
    verdict: AnnotatedVerdict = decision.verdict
    annotations = {
        VERDICT_ANNOTATION: verdict,
        AGENT_ANNOTATION: _shown(agent),
        HASH_ANNOTATION: allowlist.hash,
    }
    if join.ambiguous:
        annotations[JOIN_ANNOTATION] = (
            f"ambiguous: {len(join.entries)} pending requests with {len(join.agents)} different agents "
            "matched; the worst verdict was used"
        )
    if verdict == "listed":
        return Outcome(
            verdict=verdict, agent=agent, annotations=annotations, decision=decision, ambiguous=join.ambiguous
        )
    exempt = policy.exempt(user)
    warnings = (warning_text(verdict, agent),) if policy.mode != "observe" else ()
    if policy.mode == "enforce" and not exempt:
        return Outcome(
            verdict=verdict,
            agent=agent,
            allowed=False,
            warnings=warnings,
            annotations=annotations,
            message=_deny_message(verdict, agent, allowlist.hash),
            decision=decision,
            ambiguous=join.ambiguous,
        )
    return Outcome(
        verdict=verdict,
        agent=agent,
        warnings=warnings,
        annotations=annotations,
        decision=decision,
        ambiguous=join.ambiguous,
        exempt=exempt,
    )


def render(api_version: str, uid: str, outcome: Outcome) -> bytes:
    """The AdmissionReview response, in the version the request came in, as JSON bytes."""
    response: dict[str, Any] = {
        "uid": uid,
        "allowed": outcome.allowed,
        "auditAnnotations": outcome.annotations,
    }
    if outcome.warnings:
        response["warnings"] = list(outcome.warnings)
    if not outcome.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": outcome.message or "forbidden"}
    return orjson.dumps({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
