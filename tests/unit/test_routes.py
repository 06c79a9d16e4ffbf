"""routes.py at the ASGI boundary: what /validate sends, and in which order it does its work.

The HTTP behaviour over a real TLS server is in tests/integration; here the app object is driven
directly, so the order of the answer and the bookkeeping can be observed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tests.integration.traffic import admission
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.core.live_allowlist import LiveAllowlist
from webhook.detect.detector import Detector
from webhook.serve import admission as adm
from webhook.serve.feed import DetectorFeed
from webhook.serve.join import RequestIndex
from webhook.serve.metrics import Metrics
from webhook.serve.routes import AppState, SentinelApp, create_app

ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*"]', source="test")


class _Discard:
    def deliver(self, finding: Finding) -> None:
        pass

    def close(self) -> None:
        pass


def _app() -> tuple[SentinelApp, AppState]:
    live = LiveAllowlist(ALLOWLIST, fallback=ALLOWLIST)
    state = AppState(
        policy=adm.Policy(mode="warn"),
        index=RequestIndex(),
        allowlist=live,
        feed=DetectorFeed(Detector(live.current_or_fallback), _Discard()),
        metrics=Metrics("warn"),
        certificate=dict,
        join_wait=0.0,
    )
    return create_app(state), state


def _received(agent: str) -> dict[str, Any]:
    """The RequestReceived of the recorded create that review 01405 judges."""
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "7d0cbb2e-0000-4000-8000-000000001405",
        "stage": "RequestReceived",
        "verb": "create",
        "user": {"username": "dev-alice", "uid": "1003", "groups": ["devs", "system:authenticated"]},
        "userAgent": agent,
        "objectRef": {"resource": "configmaps", "namespace": "team", "apiVersion": "v1"},
    }


def _exchange(app: SentinelApp, method: str, path: str, body: bytes, log: list[str]) -> list[dict[str, Any]]:
    """Drive one request through ``app``; every message it sends is also noted in ``log``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8443),
    }
    sent: list[dict[str, Any]] = []
    chunks = [body[:100], body[100:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        log.append(message["type"])

    asyncio.run(app(scope, receive, send))
    return sent


class _Noting(logging.Handler):
    def __init__(self, log: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.append(record.getMessage())


@pytest.fixture
def log() -> Any:
    noted: list[str] = []
    handler = _Noting(noted)
    logger = logging.getLogger("webhook.serve.routes")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield noted
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_the_answer_is_sent_before_the_verdict_is_logged_and_counted(log: list[str]) -> None:
    app, state = _app()
    state.index.observe(parse_event(_received("python-requests/2.31.0")))
    body = json.dumps(admission(1405)).encode()
    sent = _exchange(app, "POST", "/validate", body, log)
    assert log == ["http.response.start", "http.response.body", "admission verdict"]
    start, answer = sent
    assert start["status"] == 200
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": b"%d" % len(answer["body"]),
    }
    response = json.loads(answer["body"])["response"]
    assert response["allowed"] is True and response["auditAnnotations"]["user-agent-verdict"] == "unlisted"
    assert state.metrics.review_counts["unlisted", True] == 1
    assert sum(state.metrics.validate_latency.counts) == 1 and sum(state.metrics.join_wait.counts) == 1


def test_refusals_are_status_objects_and_a_413_closes_the_connection(log: list[str]) -> None:
    app, state = _app()
    state.max_body_bytes = 1024
    state.__post_init__()
    start, answer = _exchange(app, "POST", "/validate", b"{" + b" " * 2000 + b"}", log)
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    assert json.loads(answer["body"])["reason"] == "RequestEntityTooLarge"
    start, answer = _exchange(app, "POST", "/validate", b"[]", log)
    assert start["status"] == 400 and (b"connection", b"close") not in start["headers"]
    assert json.loads(answer["body"]) == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": "body is not a JSON object",
        "reason": "BadRequest",
        "code": 400,
    }
    assert state.metrics.review_counts == dict.fromkeys(state.metrics.review_counts, 0)


def test_other_methods_on_validate_still_get_fastapis_405(log: list[str]) -> None:
    app, _ = _app()
    start, _answer = _exchange(app, "GET", "/validate", b"", log)
    assert start["status"] == 405
    assert "/validate" in app.openapi()["paths"]
