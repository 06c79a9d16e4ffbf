"""FastAPI routes for ``serve``: read bodies, call the protocol modules, map errors to status codes.

==================  =====================================================================
route               answers
==================  =====================================================================
POST /validate      AdmissionReview (v1 / v1beta1) decided by :mod:`webhook.serve.admission`;
                    400 bad review, 413 too large, 403 missing client certificate
POST /audit         EventList into the RequestIndex and the Detector; 200 fast,
                    400 unparseable body (never 5xx for bad input: the apiserver retries),
                    403 without the client certificate :data:`AuditAuth` asks for (every
                    request, when serve has neither an audit CA nor ``--audit-insecure``)
GET  /healthz       200 while the process runs
GET  /readyz        200 when the certificate and an allowlist are loaded (and the certificate
                    files on disk are servable), details as JSON
GET  /metrics       Prometheus text
==================  =====================================================================

No decision is made here, and no request body or raw user agent is logged. ``POST /validate`` is
answered before FastAPI's middleware and request handler (:class:`SentinelApp`), and its
bookkeeping (count, log line, latency) follows the sent answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

import msgspec
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from webhook.core import useragent
from webhook.core.audit import AGENT_ANNOTATION, EventList
from webhook.core.live_allowlist import LiveAllowlist
from webhook.errors import InputError
from webhook.inputs.eventlist import AuditBatch, parse_event_list
from webhook.logs import fields
from webhook.serve import admission
from webhook.serve.feed import DetectorFeed
from webhook.serve.join import RequestIndex
from webhook.serve.metrics import CONTENT_TYPE, Metrics
from webhook.serve.tls import PEER_ROLES_KEY, PeerRole

__all__ = [
    "DEFAULT_JOIN_WAIT",
    "DEFAULT_MAX_AUDIT_BODY_BYTES",
    "DEFAULT_MAX_BODY_BYTES",
    "AppState",
    "AuditAuth",
    "SentinelApp",
    "answer_review",
    "audit",
    "create_app",
    "healthz",
    "prometheus",
    "readyz",
    "validate",
]

logger = logging.getLogger(__name__)

DEFAULT_JOIN_WAIT: Final = 0.05
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""An UPDATE review carries ``object`` and ``oldObject``, each up to kube-apiserver's 3 MiB request
limit, as JSON: a lower limit would let a bloated object slip past the verdict (413, and
failurePolicy Ignore admits it unjudged)."""
DEFAULT_MAX_AUDIT_BODY_BYTES: Final = 32 * 1024 * 1024
"""A batch of up to 400 events (the apiserver's default batch size), generously sized."""
_DRAIN_FACTOR: Final = 4
AuditAuth = Literal["audit-client-ca", "client-ca", "insecure", "refused"]
"""Who may POST /audit: holders of a certificate signed by ``--audit-client-ca`` (or, without
it, by ``--client-ca``); anyone (``--audit-insecure``, said at start-up and in ``/readyz``); or
nobody (``refused``, the default without a CA: an open ``/audit`` lets anyone forge findings,
fill the caches and lend a kubectl agent to their writes, so openness must be asked for)."""
_AUDIT_REFUSED: Final = (
    "/audit requires a client certificate: pass --audit-client-ca (the CA of the apiserver's audit "
    "client certificate), or --audit-insecure to accept unauthenticated audit events"
)
_AUDIT_ROLE: Final[dict[AuditAuth, PeerRole | None]] = {
    "audit-client-ca": "audit",
    "client-ca": "client",
    "insecure": None,
    "refused": "audit",  # a role no certificate proves when serve has no audit CA
}
JSON: Final = "application/json"


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Intake(Generic[_T]):
    """How a POST route takes its body: from whom, how large, parsed how (a bad body raises an
    :class:`~webhook.errors.InputError`), refusals counted where."""

    requires: PeerRole | None
    refusal: str
    """The 403 message for a peer without the required role."""
    limit: int
    what: str
    parse: Callable[[bytes], _T]
    bad: str
    """The log message for a body that does not parse."""
    errors: Any
    """A Counter labelled by reason."""


@dataclass(kw_only=True, slots=True)
class AppState:
    """Everything the routes use; built by :mod:`webhook.serve.service`."""

    policy: admission.Policy
    index: RequestIndex
    allowlist: LiveAllowlist
    feed: DetectorFeed
    metrics: Metrics
    certificate: Callable[[], dict[str, Any]]
    join_wait: float = DEFAULT_JOIN_WAIT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_audit_body_bytes: int = DEFAULT_MAX_AUDIT_BODY_BYTES
    validate_requires: PeerRole | None = None
    audit_auth: AuditAuth = "refused"
    _validate: _Intake[admission.AdmissionReview] = field(init=False, repr=False)
    _audit: _Intake[AuditBatch] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._validate = _Intake(
            requires=self.validate_requires,
            refusal="a client certificate signed by --client-ca is required",
            limit=self.max_body_bytes,
            what="AdmissionReview",
            parse=admission.parse_review,
            bad="bad AdmissionReview",
            errors=self.metrics.review_errors,
        )
        self._audit = _Intake(
            requires=_AUDIT_ROLE[self.audit_auth],
            refusal=_AUDIT_REFUSED
            if self.audit_auth == "refused"
            else f"a client certificate signed by --{self.audit_auth} is required",
            limit=self.max_audit_body_bytes,
            what="EventList",
            parse=parse_event_list,
            bad="bad audit EventList",
            errors=self.metrics.audit_requests,
        )


class _TooLarge(InputError):
    """The body is over its route's limit (413)."""


class _Gone(InputError):
    """The client went away (or was cut off as too slow) before its whole body arrived."""


@dataclass(frozen=True, slots=True)
class _Reply:
    """A JSON answer, ready to send: raw ASGI for ``/validate``, a Response for the other routes."""

    status: int
    body: bytes
    close: bool = False
    """Ask the client to close the connection (after a 413 the rest of the body is still coming)."""

    def response(self) -> Response:
        headers = {"Connection": "close"} if self.close else None
        return Response(self.body, status_code=self.status, media_type=JSON, headers=headers)


class _Refused(InputError):
    """The request is answered before a handler acts on its body (403, 413 or 400):
    :attr:`reply` says why."""

    def __init__(self, reply: _Reply) -> None:
        self.reply = reply


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_Schema = type[BaseModel] | type[msgspec.Struct]
"""A body's model: pydantic (AdmissionReview) or a msgspec Struct (EventList)."""


def _json_schema(model: _Schema) -> dict[str, Any]:
    """``model``'s JSON schema (wire names) with its ``$defs`` inlined, for an OpenAPI document."""
    if issubclass(model, msgspec.Struct):
        schema: dict[str, Any] = msgspec.json.schema(model)
    else:
        schema = model.model_json_schema(by_alias=True)
    inlined: dict[str, Any] = _inline(schema, schema.get("$defs", {}))
    return inlined


_STATUS_SCHEMA: Final = {
    "type": "object",
    "required": ["kind", "apiVersion", "status", "message", "reason", "code"],
    "properties": {
        "kind": {"const": "Status"},
        "apiVersion": {"const": "v1"},
        "status": {"const": "Failure"},
        "message": {"type": "string", "minLength": 1},
        "reason": {"type": "string", "minLength": 1},
        "code": {"type": "integer"},
    },
}


def _openapi(model: _Schema, ok: str, errors: dict[int, str]) -> dict[str, Any]:
    """Route documentation: the request body schema (the routes read raw bodies, so FastAPI cannot
    infer it) and every answer; ``/openapi.json`` is not served, ``app.openapi()`` builds it."""
    status = {"application/json": {"schema": _STATUS_SCHEMA}}
    return {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _json_schema(model)}},
            }
        },
        "responses": {200: {"description": ok}}
        | {code: {"description": why, "content": status} for code, why in errors.items()},
    }


def _status(code: int, message: str) -> _Reply:
    """A metav1.Status body: client-go (the apiserver) puts its message into its error."""
    reason = {400: "BadRequest", 403: "Forbidden", 413: "RequestEntityTooLarge"}.get(code, "BadRequest")
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    # After a 413 the rest of the body is still on its way: close rather than read it.
    return _Reply(code, orjson.dumps({**body, "code": code}), close=code == 413)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body, or :class:`_TooLarge`. An oversized body is read on (not kept) up to a bound,
    so the client sees the 413 instead of a reset connection."""
    declared = _declared_length(scope)
    if declared is not None and declared > limit * _DRAIN_FACTOR:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone  # http.disconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit * _DRAIN_FACTOR:
            raise _TooLarge
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise _TooLarge
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _peer_ok(scope: Scope, required: PeerRole | None) -> bool:
    if required is None:
        return True
    roles: frozenset[str] = scope.get(PEER_ROLES_KEY, frozenset())
    return required in roles


async def _accepted(scope: Scope, receive: Receive, intake: _Intake[_T]) -> _T:
    """The parsed body of a request from a permitted peer, or :class:`_Refused` (403, 413 or 400),
    counted in ``intake.errors``."""
    errors = intake.errors
    if not _peer_ok(scope, intake.requires):
        errors.labels("client_cert").inc()
        raise _Refused(_status(403, intake.refusal))
    try:
        body = await _read_body(scope, receive, intake.limit)
    except _TooLarge:
        errors.labels("too_large").inc()
        raise _Refused(_status(413, f"{intake.what} larger than {intake.limit} bytes")) from None
    except _Gone:
        errors.labels("disconnected").inc()
        raise _Refused(_status(400, "the client disconnected before sending the whole body")) from None
    try:
        return intake.parse(body)
    except InputError as exc:  # ReviewError, AuditBodyError: what the parsers raise on a bad body
        errors.labels("bad_request").inc()
        logger.info(intake.bad, **fields(reason=str(exc)))
        raise _Refused(_status(400, str(exc))) from None


def _state(request: Request) -> AppState:
    """The :class:`AppState` that :func:`create_app` put in ``app.state``."""
    state: AppState = request.app.state.sentinel
    return state


async def _outcome(state: AppState, req: admission.AdmissionRequest) -> admission.Outcome:
    """The verdict on ``req``: joined with its audit event once an allowlist is loaded;
    ``unknown`` (counted, logged) if deciding fails."""
    metrics = state.metrics
    allowlist = state.allowlist.current()
    try:
        if allowlist is None:
            return admission.decide(req, None, None, state.policy)
        joined_at = time.perf_counter()
        settle = state.policy.can_deny(req.user_info)
        join = await state.index.join(admission.lookup_of(req), state.join_wait, settle=settle)
        metrics.join_wait.observe(time.perf_counter() - joined_at)
        return admission.decide(req, join, allowlist, state.policy)
    except Exception:
        metrics.review_errors.labels("internal").inc()
        logger.exception("verdict failed; answering unknown", **fields(uid=req.uid))
        return admission.unknown(allowlist.hash if allowlist else None, reason="internal error")


def _log_verdict(req: admission.AdmissionRequest, outcome: admission.Outcome) -> None:
    """Unlisted and denied verdicts at INFO; listed and unknown at DEBUG (fields built only then)."""
    if outcome.verdict not in ("listed", "unknown") or logger.isEnabledFor(logging.DEBUG):
        logger.log(
            logging.DEBUG if outcome.verdict in ("listed", "unknown") else logging.INFO,
            "admission verdict",
            **fields(
                uid=req.uid,
                verdict=outcome.verdict,
                allowed=outcome.allowed,
                agent=outcome.annotations.get(AGENT_ANNOTATION),  # escaped by admission.decide
                user=useragent.display(req.user_info.username),
                operation=req.operation,
                resource=req.resource.resource,
                subresource=req.sub_resource or None,
                namespace=req.namespace or None,
                name=req.name or None,
                dryRun=req.dry_run,
                ambiguous=outcome.ambiguous or None,
                exempt=outcome.exempt or None,
            ),
        )


async def _judge(
    state: AppState, scope: Scope, receive: Receive
) -> tuple[admission.AdmissionRequest, admission.Outcome, bytes]:
    """What a verdict needs and nothing else: the body, the join, the verdict, the answer."""
    review = await _accepted(scope, receive, state._validate)
    req = review.request
    outcome = await _outcome(state, req)
    return req, outcome, admission.render(review.api_version, req.uid, outcome)


def _book(
    state: AppState, req: admission.AdmissionRequest, outcome: admission.Outcome, started: float
) -> None:
    """The bookkeeping of an answered review: counted, logged, timed."""
    metrics = state.metrics
    metrics.reviewed(outcome.verdict, outcome.allowed)
    _log_verdict(req, outcome)
    metrics.validate_latency.observe(time.perf_counter() - started)


_JSON_HEADER: Final = (b"content-type", JSON.encode())
_CLOSE_HEADER: Final = (b"connection", b"close")


async def _send(send: Send, reply: _Reply) -> None:
    headers = [_JSON_HEADER, (b"content-length", str(len(reply.body)).encode())]
    if reply.close:
        headers.append(_CLOSE_HEADER)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def answer_review(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /validate`` as a bare ASGI exchange (:class:`SentinelApp` routes it here).

    The answer is sent first; the bookkeeping follows it (uvicorn has written the response to
    the socket when ``send`` returns), so the apiserver never waits for a log line.
    """
    started = time.perf_counter()
    try:
        req, outcome, payload = await _judge(state, scope, receive)
    except _Refused as exc:
        await _send(send, exc.reply)
        return
    await _send(send, _Reply(200, payload))
    _book(state, req, outcome, started)


# The handlers (the module docstring's table says what each answers) carry no docstring: FastAPI
# would put it into the OpenAPI document as the route's description.


async def validate(request: Request) -> Response:
    # Served by answer_review (SentinelApp); this FastAPI form keeps the route documented and
    # answers the same way when the app is reached through FastAPI's router.
    started = time.perf_counter()
    state = _state(request)
    req, outcome, payload = await _judge(state, request.scope, request.receive)
    _book(state, req, outcome, started)
    return Response(payload, media_type=JSON)


async def audit(request: Request) -> Response:
    started = time.perf_counter()
    state = _state(request)
    metrics = state.metrics
    batch = await _accepted(request.scope, request.receive, state._audit)
    state.index.observe_all(batch.events)
    queued = state.feed.submit(batch.events, batch.size)
    metrics.audit_events.inc(len(batch.events))
    if batch.skipped:
        metrics.audit_malformed.inc(batch.skipped)
        logger.warning("audit events skipped", **fields(skipped=batch.skipped, reasons=batch.reasons))
    metrics.audit_requests.labels("ok").inc()
    metrics.audit_latency.observe(time.perf_counter() - started)
    answer: dict[str, object] = {
        "accepted": len(batch.events),
        "skipped": batch.skipped,
        "queued": queued,
    }
    if batch.reasons:
        answer["reasons"] = batch.reasons
    return Response(orjson.dumps(answer), media_type=JSON)


async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    state = _state(request)
    allow = state.allowlist.status()
    certificate = state.certificate()
    # Files on disk that cannot be served (garbage, a mismatched pair) keep the previous
    # certificate in use but make the pod not ready, so the broken rotation is seen.
    ready = bool(certificate.get("loaded")) and not certificate.get("lastError") and allow.loaded
    body = {
        "ready": ready,
        "mode": state.policy.mode,
        "certificate": certificate,
        "allowlist": allow.to_dict(),
        "auditAuth": state.audit_auth,
        "join": {"pending": len(state.index), "waitSeconds": state.join_wait},
        "detector": {
            "queued": state.feed.pending,
            "queuedBytes": state.feed.pending_bytes,
            "dropped": state.feed.stats.dropped,
        },
    }
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON)


async def prometheus(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


async def _refused(_: Request, exc: _Refused) -> Response:
    return exc.reply.response()


class SentinelApp(FastAPI):
    """The serve app: FastAPI for every route but ``POST /validate``, answered by
    :func:`answer_review` before FastAPI's middleware, router and request handler.

    Those layers cost a request ~30-50 us (bench/RESULTS.md, issue 15), as much as the verdict
    itself, and /validate needs none of them: it reads one body and writes one JSON answer, its
    errors are its own 400/403/413 replies. The route stays registered, so the OpenAPI document
    (``app.openapi()``) describes it and other methods on the path get FastAPI's 405.
    """

    sentinel: AppState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/validate" and scope["method"] == "POST":
            await answer_review(self.sentinel, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _lifespan(
    on_startup: Callable[[], Awaitable[None]] | None, on_shutdown: Callable[[], Awaitable[None]] | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    return lifespan


def create_app(
    state: AppState,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> SentinelApp:
    """The ASGI app. ``on_startup``/``on_shutdown`` run in its lifespan (background workers)."""
    app = SentinelApp(
        title="ua-sentinel",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(on_startup, on_shutdown),
        exception_handlers={_Refused: _refused},
    )
    app.state.sentinel = app.sentinel = state
    app.add_api_route(
        "/validate",
        validate,
        methods=["POST"],
        **_openapi(
            admission.AdmissionReview,
            "the AdmissionReview response",
            {
                400: "not an AdmissionReview",
                403: "no client certificate signed by --client-ca",
                413: "body over --max-body-bytes",
            },
        ),
    )
    app.add_api_route(
        "/audit",
        audit,
        methods=["POST"],
        **_openapi(
            EventList,
            "accepted, skipped and queued event counts",
            {
                400: "not an audit.k8s.io/v1 EventList",
                403: "no client certificate signed by --audit-client-ca (or --client-ca); "
                "every request without either CA unless --audit-insecure",
                413: "body too large",
            },
        ),
    )
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    return app
