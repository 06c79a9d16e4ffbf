"""Schemathesis against the service's own OpenAPI document, over real TLS to a real `serve` process.

Every generated input, valid or not by the schema, must get an answer below 500, and every 4xx
must be a metav1.Status naming the problem (``message`` and ``reason``): the apiserver retries a
5xx and puts a 4xx's message into its own error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.conftest import Launch
from tests.hardening.schemathesis_support import ensure_schemathesis
from tests.integration.server import PKI, ServeProcess
from webhook.serve.service import ServeSettings, Service
from webhook.serve.tls import TLSFiles

EXAMPLES = 150
"""Per operation and generation mode (positive, negative)."""


@pytest.fixture(scope="module")
def openapi(pki: PKI) -> dict[str, Any]:
    service = Service(ServeSettings(tls=TLSFiles(cert=pki.serving.cert, key=pki.serving.key)))
    try:
        doc: dict[str, Any] = service.app().openapi()
    finally:
        if service.sinks is not None:
            service.sinks.close()
    return doc


@pytest.fixture(scope="module")
def server(launch_shared: Launch) -> ServeProcess:
    return launch_shared("--mode", "enforce", "--join-wait", "0.002")


@pytest.fixture
def session(server: ServeProcess) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.verify = str(server.ca)
        yield s


def test_the_openapi_document_describes_both_bodies(openapi: dict[str, Any]) -> None:
    for path, kind in (("/validate", "AdmissionReview"), ("/audit", "EventList")):
        body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        kind_schema = body["properties"]["kind"]  # pydantic writes a const, msgspec a one-value enum
        assert kind_schema.get("const") == kind or kind_schema.get("enum") == [kind]
        assert "$ref" not in json.dumps(body)
        assert set(openapi["paths"][path]["post"]["responses"]) >= {"200", "400", "403", "413"}


@pytest.mark.parametrize("path", ["/validate", "/audit"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_input_gets_a_5xx_and_every_4xx_says_why(
    openapi: dict[str, Any], server: ServeProcess, session: requests.Session, path: str, mode: str
) -> None:
    schemathesis = ensure_schemathesis()
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_dict(openapi)
    operation = schema[path]["POST"]
    strategy = operation.as_strategy(
        GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    )
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=server.url, session=session, verify=str(server.ca), timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(
            response, checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
        )
        if 400 <= response.status_code < 500:
            doc = response.json()
            assert doc["kind"] == "Status" and doc["code"] == response.status_code, response.text
            assert doc["message"].strip() and doc["reason"].strip(), response.text

    check()
    print(f"{path} {mode}: status codes {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= EXAMPLES // 2
    if mode == "positive":
        assert seen.get(200, 0) > 0  # schema-valid bodies are answered, not refused
    elif path == "/validate":
        assert seen.get(400, 0) > 0  # invalid reviews are refused with a reason
    assert server.process is not None and server.process.poll() is None
    errors = [line for line in server.logs() if line.get("level") in ("error", "critical")]
    assert not errors, errors[:3]


def test_random_bytes_and_content_types(server: ServeProcess, session: requests.Session) -> None:
    """Bodies no schema describes: binary, wrong content type, deep nesting, huge numbers."""

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/validate", "/audit"]),
        body=st.one_of(
            st.binary(max_size=512),
            st.sampled_from(
                [
                    b"[" * 100_000 + b"]" * 100_000,
                    b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":' * 2000,
                    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":['
                    + b"1e999999," * 1000
                    + b"1]}",
                    b'{"a":' + b"9" * 100_000 + b"}",
                    b"\xef\xbb\xbf{}",
                    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"\\ud800","stage":"RequestReceived"}]}',
                ]
            ),
        ),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
        ),
    )
    def check(path: str, body: bytes, content_type: str) -> None:
        response = session.post(
            server.url + path,
            data=body,
            headers={"Content-Type": content_type},
            verify=str(server.ca),
            timeout=30,
        )
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.json()["message"], response.text

    check()
    assert server.process is not None and server.process.poll() is None
