"""Bad input gets a 4xx with a reason (never a 5xx: the apiserver retries those), over real TLS."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Launch
from tests.integration.server import ServeProcess
from tests.integration.traffic import admission, audit_batch

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(launch_shared: Launch) -> ServeProcess:
    return launch_shared()


def _status(answer: httpx.Response, code: int) -> str:
    assert answer.status_code == code, answer.text
    doc = answer.json()
    assert doc["kind"] == "Status" and doc["code"] == code
    message: str = doc["message"]
    return message


def _review(**request_changes: Any) -> dict[str, Any]:
    review = admission(1405)
    review["request"].update(request_changes)
    return review


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"kind": "AdmissionReview", "apiVersion": ', "body is not JSON"),
        (b"", "body is not JSON"),
        (b'"AdmissionReview"', "not a JSON object"),
        (json.dumps({**admission(1405), "kind": "AdmissionRequest"}).encode(), "kind"),
        (json.dumps({**admission(1405), "apiVersion": "admission.k8s.io/v2"}).encode(), "apiVersion"),
        (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).encode(), "request"),
    ],
    ids=["truncated-json", "empty", "not-object", "wrong-kind", "wrong-version", "no-request"],
)
def test_malformed_reviews_get_400_with_a_reason(server: ServeProcess, body: bytes, reason: str) -> None:
    with server.client() as client:
        message = _status(client.post("/validate", content=body), 400)
    assert reason in message


def test_missing_uid_gets_400(server: ServeProcess) -> None:
    review = _review()
    del review["request"]["uid"]
    with server.client() as client:
        assert "request.uid" in _status(client.post("/validate", json=review), 400)


def test_oversized_review_gets_413_under_the_default_limit(server: ServeProcess) -> None:
    big = _review(object={"data": {"k": "x" * (8 * MiB)}})
    with server.client() as client:
        message = _status(client.post("/validate", content=json.dumps(big)), 413)
        assert str(8 * MiB) in message
        # An UPDATE of an object at the apiserver's 3 MiB request limit carries two of them.
        old = {"data": {"k": "o" * (3 * MiB - 50_000)}}
        fits = _review(object={"data": {"k": "x" * (3 * MiB - 50_000)}}, oldObject=old, operation="UPDATE")
        assert client.post("/validate", content=json.dumps(fits)).status_code == 200


def test_body_limit_is_configurable(launch: Launch) -> None:
    server = launch("--max-body-bytes", "2048")
    with server.client() as client:
        assert "2048" in _status(client.post("/validate", json=_review(object={"k": "x" * 4096})), 413)
        assert client.post("/validate", json=_review(object=None)).status_code == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "body is not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({**audit_batch(1404), "kind": "Event"}).encode(), "kind"),
        (json.dumps({**audit_batch(1404), "apiVersion": "audit.k8s.io/v1beta1"}).encode(), "apiVersion"),
        (json.dumps({**audit_batch(1404), "items": {"a": 1}}).encode(), "items"),
    ],
    ids=["truncated-json", "not-object", "wrong-kind", "wrong-version", "items-not-list"],
)
def test_unparseable_audit_bodies_get_400(server: ServeProcess, body: bytes, reason: str) -> None:
    with server.client() as client:
        assert reason in _status(client.post("/audit", content=body), 400)


def test_bad_events_are_skipped_and_the_good_ones_kept(server: ServeProcess) -> None:
    batch = audit_batch(1449)  # python-requests/2.31.0 deletes configmap team/py-cm
    batch["items"] = [{"stage": "RequestReceived"}, "junk", *batch["items"]]
    with server.client() as client:
        answer = client.post("/audit", json=batch)
        assert answer.status_code == 200
        doc = answer.json()
        assert (doc["accepted"], doc["skipped"]) == (1, 2)
        assert doc["reasons"][0].startswith("items[0]: invalid audit event: auditID")
        review = admission(1450)
        verdict = client.post("/validate", json=review).json()["response"]["auditAnnotations"]
    assert verdict["user-agent"] == "python-requests/2.31.0"


def test_unknown_routes_and_methods_are_4xx(server: ServeProcess) -> None:
    with server.client() as client:
        assert client.get("/validate").status_code == 405
        assert client.post("/nope", content=b"{}").status_code == 404
