"""Recorded apiserver events as GKE writes them to Cloud Logging: ``LogEntry`` objects whose
``protoPayload`` is an ``AuditLog`` (``serviceName`` ``k8s.io``), in the shape GKE documents
(https://cloud.google.com/kubernetes-engine/docs/how-to/audit-logging) and Wazuh's and Splunk's
GKE examples show: ``methodName`` ``io.k8s.<group>.<version>.<resource>[.<subresource>].<verb>``,
``resourceName`` ``<group>/<version>/namespaces/<ns>/<resource>/<name>[/<subresource>]``, the
caller in ``authenticationInfo`` / ``requestMetadata``, a failure as a ``google.rpc.Status`` code
with the apiserver's ``Status`` object as ``response``, the authorizer's annotations as the entry's
``labels``, ``insertId`` and ``operation.id`` the audit ID. GKE logs completed requests only.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import AUDIT_LOGS
from tests.unit.test_formats import GKE_ALLOWED, GKE_FORBIDDEN

PROJECT = "ua-sentinel-test"
CLUSTER = "prod"
LOCATION = "europe-west1"

# HTTP status → google.rpc.Code (google/rpc/code.proto's HTTP mapping).
_HTTP_TO_RPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 422: 3, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}
_READS = frozenset({"get", "list", "watch"})


def _resource_name(event: dict[str, Any]) -> str:
    ref = event.get("objectRef")
    if not ref:
        return event["requestURI"].split("?", 1)[0].lstrip("/")
    parts = [ref.get("apiGroup") or "core", ref.get("apiVersion") or "v1"]
    if ref.get("namespace"):
        parts += ["namespaces", ref["namespace"]]
    parts.append(ref["resource"])
    if ref.get("name"):
        parts.append(ref["name"])
    if ref.get("subresource"):
        parts.append(ref["subresource"])
    return "/".join(parts)


def _method(event: dict[str, Any]) -> str:
    ref = event.get("objectRef")
    if not ref:
        return f"io.k8s.{event['verb']}"
    pieces = ["io.k8s", ref.get("apiGroup") or "core", ref.get("apiVersion") or "v1", ref["resource"]]
    if ref.get("subresource"):
        pieces.append(ref["subresource"])
    return ".".join([*pieces, event["verb"]])


def log_entry(event: dict[str, Any]) -> dict[str, Any] | None:
    """The LogEntry GKE writes for a completed request (None for the other stages)."""
    if event.get("stage") != "ResponseComplete":
        return None
    code = int((event.get("responseStatus") or {}).get("code") or 200)
    method = _method(event)
    resource = _resource_name(event)
    payload: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": event["user"]["username"]},
        "authorizationInfo": [
            {"granted": code != 403, "permission": method, "resource": resource},
        ],
        "methodName": method,
        "requestMetadata": {"callerIp": (event.get("sourceIPs") or [""])[0]},
        "resourceName": resource,
        "serviceName": "k8s.io",
    }
    if event.get("userAgent"):
        payload["requestMetadata"]["callerSuppliedUserAgent"] = event["userAgent"]
    if code >= 400:
        status = event.get("responseStatus") or {}
        payload["status"] = {"code": _HTTP_TO_RPC.get(code, 2), "message": status.get("message", "")}
        payload["response"] = {
            "@type": "core.k8s.io/v1.Status",
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": code,
            "reason": status.get("reason", ""),
            "message": status.get("message", ""),
        }
    stamp = event["requestReceivedTimestamp"]
    log = "data_access" if event["verb"] in _READS else "activity"
    return {
        "insertId": event["auditID"],
        "labels": dict(event.get("annotations") or {}),
        "logName": f"projects/{PROJECT}/logs/cloudaudit.googleapis.com%2F{log}",
        "operation": {"id": event["auditID"], "producer": "k8s.io", "first": True, "last": True},
        "protoPayload": payload,
        "receiveTimestamp": event["stageTimestamp"],
        "resource": {
            "type": "k8s_cluster",
            "labels": {"project_id": PROJECT, "location": LOCATION, "cluster_name": CLUSTER},
        },
        "severity": "ERROR" if code >= 400 else ("INFO" if event["verb"] in _READS else "NOTICE"),
        "timestamp": stamp,
    }


def recorded_entries() -> list[bytes]:
    """The recorded apiserver events as LogEntry JSON with the documented examples (an allowed
    ``kubectl get pods``, a refusal), in time order: what a log sink publishes."""
    converted: list[dict[str, Any]] = [GKE_ALLOWED, GKE_FORBIDDEN]
    for path in AUDIT_LOGS:
        for line in path.read_bytes().splitlines():
            entry = log_entry(json.loads(line)) if line.strip() else None
            if entry is not None:
                converted.append(entry)
    converted.sort(key=lambda e: e["timestamp"])
    return [json.dumps(e, separators=(",", ":")).encode() for e in converted]
