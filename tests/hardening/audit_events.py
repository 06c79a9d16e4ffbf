"""Audit events and reviews for the hardening tests, shaped like the recorded apiserver traffic."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from tests.integration.traffic import admission, audit_batch

KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
PYTHON = "python-requests/2.34.2"
ALLOWLIST = 'agents:\n  - "kubectl/*"\n'
"""kubectl is listed; python-requests is merely unlisted (the built-in list would deny it)."""


def event_list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(items)}


def write_request(
    name: str, agent: str, *, audit_id: str | None = None, user: str = "dev-alice", uid: str = "1003"
) -> dict[str, Any]:
    """The RequestReceived of `create configmap team/<name>` (the name is absent on a create, so
    the join key is the user, resource and namespace: use a distinct user per scenario)."""
    event: dict[str, Any] = copy.deepcopy(audit_batch(1404)["items"][0])
    event["auditID"] = audit_id or str(uuid.uuid4())
    event["userAgent"] = agent
    event["user"] = {"username": user, "uid": uid, "groups": ["devs", "system:authenticated"]}
    event["requestURI"] = "/api/v1/namespaces/team/configmaps"
    return event


def completed(request: dict[str, Any], code: int = 201) -> dict[str, Any]:
    event = copy.deepcopy(request)
    event["stage"] = "ResponseComplete"
    event["responseStatus"] = {"metadata": {}, "code": code}
    return event


def review(name: str, *, user: str = "dev-alice", uid: str = "1003") -> dict[str, Any]:
    """The AdmissionReview of that create."""
    body = admission(1405)
    request = body["request"]
    request["uid"] = str(uuid.uuid4())
    request["name"] = name
    request["object"]["metadata"]["name"] = name
    request["userInfo"] = {"username": user, "uid": uid, "groups": ["devs", "system:authenticated"]}
    return body


def forbidden(
    agent: str, *, user: str = "mallory", uid: str = "1002", audit_id: str | None = None
) -> dict[str, Any]:
    """A ResponseComplete refused by RBAC (decision forbid): a finding when the agent is not listed."""
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id or str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/kube-system/secrets",
        "verb": "list",
        "user": {"username": user, "uid": uid, "groups": ["system:authenticated"]},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": agent,
        "objectRef": {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
        "requestReceivedTimestamp": "2026-11-27T18:10:13.637446Z",
        "stageTimestamp": "2026-11-27T18:10:13.640000Z",
        "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
    }
