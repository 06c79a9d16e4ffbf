"""EventList parsing: the audit webhook body into the audit models; bad items skipped, bad bodies refused."""

from __future__ import annotations

import json

import pytest

from tests.integration.traffic import audit_batch
from webhook.inputs.eventlist import AuditBodyError, parse_event_list


def test_parse_event_list_reuses_the_audit_models() -> None:
    batch = parse_event_list(json.dumps(audit_batch(1404)).encode())
    assert batch.skipped == 0
    (event,) = batch.events
    assert event.user_agent == "python-requests/2.34.2" and event.stage == "RequestReceived"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"null", "not a JSON object"),
        (b'{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": 3}', "items is not a list"),
    ],
)
def test_parse_event_list_rejects_unusable_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(AuditBodyError, match=reason):
        parse_event_list(body)


def test_an_empty_batch_is_fine() -> None:
    batch = parse_event_list(b'{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}}')
    assert batch.events == [] and batch.skipped == 0
