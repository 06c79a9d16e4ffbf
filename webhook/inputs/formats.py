"""Input shapes besides kube-apiserver's JSON lines: EKS (CloudWatch), GKE (Cloud Audit Logs), AKS.

Each line of input becomes zero or more audit events (``audit.k8s.io/v1`` Event, as bytes or
as a decoded dict), which then go through the same Detector as the apiserver's own lines.

- ``k8s``: one Event per line (the apiserver's ``--audit-log-format=json``).
- ``eks``: EKS sends the apiserver's own events to CloudWatch Logs (log group
  ``/aws/eks/<cluster>/cluster``, streams ``kube-apiserver-audit-*``); a log event's ``message``
  is the Event JSON. Accepted per line: a subscription delivery as Lambda receives it
  (``{"awslogs": {"data": base64(gzip(json))}}``), the bare base64 string, the decoded
  ``{"messageType": "DATA_MESSAGE", "logEvents": [...]}`` (``CONTROL_MESSAGE`` is skipped),
  Firehose/Kinesis envelopes holding such data, a log event ``{"timestamp", "message"}``, a bare
  Event, or ``<ISO time> <message>``. CloudWatch cuts events over 256 KB and appends
  ``[Truncated...]``: such a message is malformed.
- ``gke``: Cloud Logging ``LogEntry`` objects with ``protoPayload.serviceName == "k8s.io"``
  (other services are skipped), one per line, or a Pub/Sub push envelope holding one. GKE
  rewrites the event: ``methodName`` ``io.k8s.core.v1.secrets.list`` gives the verb,
  ``resourceName`` ``core/v1/namespaces/ns/secrets`` the object, ``requestMetadata.
  callerSuppliedUserAgent`` the agent, ``authenticationInfo.principalEmail`` the user, the
  entry ``labels`` the annotations (``authorization.k8s.io/decision``), and ``status.code`` the
  outcome as a google.rpc code (7 = PERMISSION_DENIED = HTTP 403). ``insertId`` (else
  ``operation.id``) is the auditID; GKE logs completed requests only (stage ResponseComplete).
- ``aks``: Azure diagnostic settings (Event Hub or storage): ``{"records": [...]}`` or one
  record per line; records of category ``kube-audit`` / ``kube-audit-admin`` carry the Event
  JSON as a string in ``properties.log``; other categories are skipped.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson

from webhook.inputs.files import READ_ERRORS, is_gzip

__all__ = ["FORMATS", "AuditInput", "Decoded", "Format", "aks_record", "decode", "gke_event"]

Format = Literal["k8s", "eks", "gke", "aks"]
FORMATS: tuple[Format, ...] = get_args(Format)

AuditInput = bytes | dict[str, Any]
"""One audit event as an input holds it: a JSON line, or an object already decoded."""

MAX_DECODED_BYTES = 64 * 1024 * 1024
"""A compressed record may not expand beyond this (zip bombs)."""

# google.rpc.Code → HTTP status, as mapped in google/rpc/code.proto.
_RPC_TO_HTTP = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
_AKS_AUDIT_CATEGORIES = frozenset({"kube-audit", "kube-audit-admin"})


@dataclass(slots=True)
class Decoded:
    events: list[AuditInput] = field(default_factory=list)
    skipped: int = 0
    """Well-formed records that are not Kubernetes audit events (other services, categories)."""
    errors: list[str] = field(default_factory=list)


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {str(exc).splitlines()[0][:100]}") from None


def _gunzip_b64(text: str | bytes) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not is_gzip(raw):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
            out: bytes = unzipped.read(MAX_DECODED_BYTES + 1)
    except READ_ERRORS as exc:
        raise ValueError(f"bad gzip data: {exc}") from None
    if len(out) > MAX_DECODED_BYTES:
        raise ValueError(f"record expands beyond {MAX_DECODED_BYTES} bytes")
    return out


# -- EKS ----------------------------------------------------------------------------------
def _eks_message(message: Any, out: Decoded) -> None:
    if not isinstance(message, str):
        out.errors.append("CloudWatch log event without a string message")
    elif message.endswith("[Truncated...]"):
        out.errors.append("event cut by CloudWatch Logs (over 256 KB, ends in [Truncated...])")
    else:
        out.events.append(message.encode())


def _eks_subscription(doc: dict[str, Any], out: Decoded) -> None:
    kind = doc.get("messageType")
    if kind == "CONTROL_MESSAGE":
        out.skipped += 1
        return
    events = doc.get("logEvents")
    if kind != "DATA_MESSAGE" or not isinstance(events, list):
        out.errors.append("CloudWatch subscription record without DATA_MESSAGE logEvents")
        return
    for item in events:
        _eks_message(item.get("message") if isinstance(item, dict) else None, out)


def _eks_blob(data: str | bytes, out: Decoded) -> None:
    doc = _loads(_gunzip_b64(data))
    if not isinstance(doc, dict):
        raise ValueError("decoded CloudWatch record is not an object")
    _eks_subscription(doc, out)


def _eks(line: bytes, out: Decoded) -> None:
    text = line.strip()
    if text[:1] != b"{":
        if text.startswith(b"H4sI"):  # base64 of gzip's magic bytes: a raw subscription record
            _eks_blob(text, out)
            return
        stamp, _, message = text.partition(b" ")
        if stamp[:2].isdigit() and message[:1] == b"{":
            _eks_message(message.decode("utf-8", "replace"), out)
            return
        raise ValueError("not a CloudWatch record")
    doc = _loads(text)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if isinstance(doc.get("awslogs"), dict):
        _eks_blob(doc["awslogs"].get("data", ""), out)
    elif "messageType" in doc:
        _eks_subscription(doc, out)
    elif isinstance(doc.get("records"), list):  # Firehose HTTP endpoint delivery
        for record in doc["records"]:
            _eks_blob(record.get("data", "") if isinstance(record, dict) else "", out)
    elif isinstance(doc.get("Records"), list):  # Kinesis Data Streams → Lambda
        for record in doc["Records"]:
            kinesis = record.get("kinesis", {}) if isinstance(record, dict) else {}
            _eks_blob(kinesis.get("data", ""), out)
    elif "message" in doc:
        _eks_message(doc["message"], out)
    elif doc.get("kind") == "Event":
        out.events.append(doc)
    else:
        raise ValueError("JSON object is neither a CloudWatch record nor an audit Event")


# -- GKE ----------------------------------------------------------------------------------
def _object_ref(resource_name: str) -> tuple[dict[str, str] | None, str]:
    """``core/v1/namespaces/ns/pods/p1/exec`` → objectRef and a reconstructed requestURI."""
    parts = [p for p in resource_name.split("/") if p]
    if len(parts) < 3:
        return None, "/" + resource_name.lstrip("/")
    group, version, rest = parts[0], parts[1], parts[2:]
    ref: dict[str, str] = {"apiVersion": version}
    if group != "core":
        ref["apiGroup"] = group
    if rest[0] == "namespaces" and len(rest) >= 3:
        ref["namespace"] = rest[1]
        rest = rest[2:]
    for key, value in zip(("resource", "name", "subresource"), rest, strict=False):
        ref[key] = value
    prefix = f"/api/{version}" if group == "core" else f"/apis/{group}/{version}"
    return ref, prefix + "/" + "/".join(parts[2:])


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _gke_id(entry: dict[str, Any]) -> str:
    """``insertId``; else ``operation.id`` (GKE sets it to the same value); else a content hash."""
    found = entry.get("insertId") or _obj(entry.get("operation")).get("id")
    return str(found) if found else "gke-" + hashlib.sha256(orjson.dumps(entry)).hexdigest()[:32]


def gke_event(entry: dict[str, Any]) -> dict[str, Any] | None:
    """An audit Event dict from a GKE Cloud Audit Logs entry; None for other services."""
    payload = _obj(entry.get("protoPayload"))
    if payload.get("serviceName") != "k8s.io":
        return None
    method = str(payload.get("methodName", ""))
    verb = method.rsplit(".", 1)[-1] if method else ""
    ref, uri = _object_ref(str(payload.get("resourceName", "")))
    status = _obj(payload.get("status"))
    rpc = int(status.get("code", 0) or 0)
    response = _obj(payload.get("response"))
    code = response.get("code") if isinstance(response.get("code"), int) else None
    if code is None:
        code = 201 if rpc == 0 and verb == "create" else _RPC_TO_HTTP.get(rpc, 500)
    metadata = _obj(payload.get("requestMetadata"))
    auth = _obj(payload.get("authenticationInfo"))
    labels = _obj(entry.get("labels"))
    stamp = str(entry.get("timestamp") or entry.get("receiveTimestamp") or "")
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": _gke_id(entry),
        "stage": "ResponseComplete",
        "requestURI": uri,
        "verb": verb,
        "user": {"username": str(auth.get("principalEmail", ""))},
        "sourceIPs": [metadata["callerIp"]] if metadata.get("callerIp") else [],
        "responseStatus": {
            "code": code,
            "reason": "Forbidden" if code == 403 else str(response.get("reason", "")),
            "message": str(status.get("message", "")),
        },
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
        "annotations": {str(k): str(v) for k, v in labels.items()},
    }
    agent = metadata.get("callerSuppliedUserAgent")
    if agent:
        event["userAgent"] = str(agent)
    if ref is not None:
        event["objectRef"] = ref
    return event


def _gke(line: bytes, out: Decoded) -> None:
    doc = _loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    message = doc.get("message")
    if isinstance(message, dict) and "data" in message:  # Pub/Sub push envelope
        doc = _loads(_gunzip_b64(message["data"]))
        if not isinstance(doc, dict):
            raise ValueError("Pub/Sub message data is not a LogEntry object")
    event = gke_event(doc)
    if event is None:
        if "protoPayload" in doc or "logName" in doc:
            out.skipped += 1
            return
        raise ValueError("not a Cloud Logging LogEntry")
    out.events.append(event)


# -- AKS ----------------------------------------------------------------------------------
def aks_record(record: Any, out: Decoded) -> None:
    """The audit events of one AKS diagnostic record (a line of a storage blob, an item of an
    Event Hubs ``records`` array) into ``out``; other categories are counted skipped."""
    if not isinstance(record, dict):
        out.errors.append("diagnostic record is not an object")
        return
    if record.get("category") not in _AKS_AUDIT_CATEGORIES:
        out.skipped += 1
        return
    props = record.get("properties")
    text = props.get("log") if isinstance(props, dict) else None
    if not isinstance(text, str):
        out.errors.append("kube-audit record without properties.log")
        return
    for piece in text.split("\n"):
        if piece.strip():
            out.events.append(piece.encode())


def _aks(line: bytes, out: Decoded) -> None:
    doc = _loads(line)
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        for record in doc["records"]:
            aks_record(record, out)
    elif isinstance(doc, dict) and "category" in doc:
        aks_record(doc, out)
    else:
        raise ValueError('neither {"records": [...]} nor a diagnostic record')


def decode(fmt: Format, line: bytes) -> Decoded:
    """The audit events one input line holds. Never raises: problems land in ``errors``."""
    out = Decoded()
    if fmt == "k8s":
        out.events.append(line)
        return out
    try:
        {"eks": _eks, "gke": _gke, "aks": _aks}[fmt](line, out)
    except ValueError as exc:
        out.errors.append(f"{fmt}: {exc}")
    return out
