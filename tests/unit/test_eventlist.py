"""EventList parsing: the audit webhook body into the audit models; bad items skipped, bad bodies refused."""

from __future__ import annotations

import json

import pytest

from tests.integration.traffic import audit_batch
from webhook.core.audit import parse_event
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


def test_a_bad_item_is_skipped_with_its_reason_and_the_others_kept_in_order() -> None:
    good = audit_batch(1404)["items"][0]
    items = [good, {**good, "stage": "Bogus"}, 7, {**good, "auditID": "second"}, {**good, "auditID": ""}]
    body = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}
    batch = parse_event_list(json.dumps(body).encode())
    assert [e.audit_id for e in batch.events] == [good["auditID"], "second"]
    assert batch.skipped == 3
    assert batch.reasons == [
        "items[1]: invalid audit event: stage: not one of the values allowed",
        "items[2]: not a JSON object but int",
        "items[4]: invalid audit event: auditID: Expected `str` of length >= 1",
    ]


def test_a_batch_holds_the_events_its_lines_would_give() -> None:
    """One model for both wire formats' events: a POST's items read as log lines give the same."""
    for seq in (1404, 1371, 1372):
        items = audit_batch(seq)["items"]
        batch = parse_event_list(json.dumps(audit_batch(seq)).encode())
        assert batch.events == [parse_event(json.dumps(item).encode()) for item in items]
