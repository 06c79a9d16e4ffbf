"""EKS, GKE and AKS input shapes, on the vendors' documented sample records and on the recorded
apiserver traffic wrapped the way each cloud delivers it (see docs/tailer.md for the sources)."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook.core.audit import MalformedEvent, parse_event
from webhook.inputs.formats import decode, gke_event

from .test_detector import EXPECTED

ROOT = Path(__file__).resolve().parents[2]

# AWS Lambda Powertools' documented CloudWatch Logs subscription event (``awslogs.data``).
AWS_SAMPLE = (
    "H4sIAAAAAAAAAHWPwQqCQBCGX0Xm7EFtK+smZBEUgXoLCdMhFtKV3akI8d0bLYmibvPPN3wz00CJxmQnTO41whwWQRIctmEcB6sQbF"
    "C3CjW3XW8kxpOpP+OC22d1Wml1qZkQGtoMsScxaczKN3plG8zlaHIta5KqWsozoTYw3/djzwhpLwivWFGHGpAFe7DL68JlBUk+l7KS"
    "N7tCOEJ4M3/qOI49vMHj+zCKdlFqLaU2ZHV2a4Ct/an0/ivdX8oYc1UVX860fQDQiMdxRQEAAA=="
)

# Sumo Logic's documented AKS diagnostic records (``kube-audit`` and a ``kube-apiserver`` klog line).
AKS_KUBE_AUDIT = {
    "category": "kube-audit",
    "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
    "properties": {
        "pod": "kube-apiserver-57b5944b45-94w49",
        "log": '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":'
        '"10e60f03-0635-429b-b324-315166f249cc","stage":"ResponseComplete","requestURI":'
        '"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/external-resizer-file-csi-azure-com",'
        '"verb":"update","user":{"username":"aksService","groups":["system:masters","system:authenticated"]},'
        '"sourceIPs":["172.31.35.83"],"userAgent":"csi-resizer/v0.0.0 (linux/amd64) kubernetes/$Format",'
        '"objectRef":{"resource":"leases","namespace":"kube-system","name":"external-resizer-file-csi-azure-com",'
        '"uid":"b382c78f-c5fa-462b-8f20-ab65ad94c153","apiGroup":"coordination.k8s.io","apiVersion":"v1",'
        '"resourceVersion":"6910081"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":'
        '"2025-04-20T16:29:59.988453Z","stageTimestamp":"2025-04-20T16:29:59.994988Z","annotations":'
        '{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}\n',
        "stream": "stdout",
        "containerID": "5aeef33b3cfdafa517d8e1d8c4fe4e08901d99958bc6ad3ca5c74891120a0c44",
    },
    "resourceId": "/SUBSCRIPTIONS/C088DC46-D692-42AD-A4B6-9A542D28AD2A/RESOURCEGROUPS/HPALAKSCLUSTER/"
    "PROVIDERS/"
    "MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/ARC-CLUSTER02",
    "serviceBuild": "na",
    "time": "2025-04-20T16:29:59.995191417Z",
}
AKS_KUBE_APISERVER = {
    "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
    "category": "kube-apiserver",
    "resourceId": "/SUBSCRIPTIONS/C111111-DXXX-4XXX-AXXX-900000000/RESOURCEGROUPS/AG-AKS-RG/PROVIDERS/"
    "MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/AG-AKS-CLUSTER",
    "properties": {
        "log": "I0624 20:14:59.855669       1 wrap.go:47] PUT /api/v1/namespaces/kube-system/endpoints/"
        "kube-scheduler?timeout=10s:(9.05251ms) 200 [hyperkube/v1.12.8 (linux/amd64) kubernetes/a89f8c1/"
        "leader-election 172.31.1.1:48110]",
        "stream": "stderr",
        "pod": "kube-apiserver-796bd9b775-xqk5s",
        "containerID": "2d6cac1300da3226323fd1b936fe8278b87cba2b7a1bbd9c8401da6f8e786f5e",
    },
    "time": "2019-06-24T20:14:59.000Z",
}

# Wazuh's documented GKE audit log entry (an allowed ``kubectl get pods``).
GKE_ALLOWED = {
    "logName": "projects/gke-audit-logs/logs/cloudaudit.googleapis.com%2Fdata_access",
    "operation": {
        "first": "true",
        "id": "b2c2e792-aaa9-4422-82d0-de32940b1234",
        "last": "true",
        "producer": "k8s.io",
    },
    "protoPayload": {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": "john.doe@email.com"},
        "authorizationInfo": [
            {
                "granted": True,
                "permission": "io.k8s.core.v1.pods.list",
                "resource": "core/v1/namespaces/default/pods",
            }
        ],
        "methodName": "io.k8s.core.v1.pods.list",
        "requestMetadata": {
            "callerIp": "35.195.195.195",
            "callerSuppliedUserAgent": "kubectl/v1.18.6 (linux/amd64) kubernetes/dff82dc",
        },
        "resourceName": "core/v1/namespaces/default/pods",
        "serviceName": "k8s.io",
    },
    "receiveTimestamp": "2020-08-17T17:09:19.068723691Z",
    "resource": {
        "labels": {"cluster_name": "wazuh", "location": "us-central1-c", "project_id": "gke-audit-logs"},
        "type": "k8s_cluster",
    },
    "timestamp": "2020-08-17T17:09:05.043988Z",
}

# A refusal in the documented shape: google.rpc status 7 (PERMISSION_DENIED), the authorizer's
# decision in the entry labels (as Splunk's GKE rules query ``labels.authorization.k8s.io/decision``).
GKE_FORBIDDEN = {
    "insertId": "3a1f6f1e-6f0c-4b7a-9d0e-0d7f3c2b1a90",
    "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
    "protoPayload": {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": "mallory@example.com"},
        "authorizationInfo": [
            {
                "granted": False,
                "permission": "io.k8s.core.v1.secrets.list",
                "resource": "core/v1/namespaces/kube-system/secrets",
            }
        ],
        "methodName": "io.k8s.core.v1.secrets.list",
        "requestMetadata": {"callerIp": "203.0.113.7", "callerSuppliedUserAgent": "python-requests/2.34.2"},
        "resourceName": "core/v1/namespaces/kube-system/secrets",
        "serviceName": "k8s.io",
        "status": {"code": 7, "message": "PERMISSION_DENIED"},
    },
    "labels": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
    "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "c", "location": "l", "project_id": "p"}},
    "timestamp": "2026-11-27T18:10:11.808620Z",
}


def fixture_lines() -> list[bytes]:
    return [
        line
        for path in sorted((ROOT / "tests/data/audit").glob("*.log"))
        for line in path.read_bytes().splitlines()
    ]


def replay(tmp_path: Path, fmt: str, data: bytes) -> tuple[list[dict[str, Any]], str]:
    log = tmp_path / f"{fmt}.jsonl"
    log.write_bytes(data)
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text('agents: ["kubectl/*", "kube-*"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "replay", "--allowlist", str(allowlist), "--format", fmt, str(log)],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(x) for x in result.stdout.splitlines()], result.stderr.decode()


def agents(findings: list[dict[str, Any]]) -> set[tuple[str, Any]]:
    return {
        (f["user"]["name"], f["user_agent"].get("original"))
        for f in findings
        if f["rule"]["name"] == "unusual-agent-forbidden"
    }


def gz64(doc: dict[str, Any]) -> str:
    return base64.b64encode(gzip.compress(orjson.dumps(doc))).decode()


def subscription(messages: list[bytes], kind: str = "DATA_MESSAGE") -> dict[str, Any]:
    return {
        "messageType": kind,
        "owner": "123456789012",
        "logGroup": "/aws/eks/prod/cluster",
        "logStream": "kube-apiserver-audit-4c4bd0b1b4b54a5a9c7e1c1e2a1d3f11",
        "subscriptionFilters": ["ua-sentinel"],
        "logEvents": [
            {"id": str(i), "timestamp": 1795803011000 + i, "message": m.decode()}
            for i, m in enumerate(messages)
        ],
    }


# -- EKS -------------------------------------------------------------------------------------
def test_eks_decodes_the_documented_cloudwatch_subscription_sample() -> None:
    decoded = decode("eks", orjson.dumps({"awslogs": {"data": AWS_SAMPLE}}))
    assert decoded.events == [b"[ERROR] First test message", b"[ERROR] Second test message"]
    assert decode("eks", AWS_SAMPLE.encode()).events == decoded.events  # the bare base64 record
    with pytest.raises(MalformedEvent):
        parse_event(decoded.events[0])  # not an audit event: counted as malformed downstream


def test_eks_control_messages_are_skipped_and_truncated_events_are_errors() -> None:
    control = decode("eks", orjson.dumps({"awslogs": {"data": gz64(subscription([], "CONTROL_MESSAGE"))}}))
    assert control.events == [] and control.skipped == 1 and control.errors == []
    cut = decode("eks", orjson.dumps({"timestamp": 1, "message": '{"kind":"Event"[Truncated...]'}))
    assert cut.events == [] and "Truncated" in cut.errors[0]
    assert decode("eks", b"not a record").errors


def test_recorded_traffic_through_every_eks_delivery_shape_gives_the_same_findings(tmp_path: Path) -> None:
    lines = fixture_lines()
    out: list[bytes] = []
    for i in range(0, len(lines), 40):
        chunk = lines[i : i + 40]
        shape = (i // 40) % 6
        doc = subscription(chunk)
        if shape == 0:  # Lambda's event
            out.append(orjson.dumps({"awslogs": {"data": gz64(doc)}}))
        elif shape == 1:  # a raw subscription record (Kinesis/Firehose payload), base64
            out.append(gz64(doc).encode())
        elif shape == 2:  # already decoded
            out.append(orjson.dumps(doc))
        elif shape == 3:  # Kinesis Data Streams into Lambda
            out.append(orjson.dumps({"Records": [{"kinesis": {"data": gz64(doc)}}]}))
        elif shape == 4:  # Firehose HTTP endpoint delivery request
            out.append(orjson.dumps({"requestId": "r", "timestamp": 1, "records": [{"data": gz64(doc)}]}))
        else:  # `aws logs filter-log-events` events, one per line
            out += [
                orjson.dumps({"timestamp": 1, "message": m.decode(), "logStreamName": "s"}) for m in chunk
            ]
    found, _ = replay(tmp_path, "eks", b"\n".join(out) + b"\n")
    assert agents(found) == EXPECTED


# -- GKE -------------------------------------------------------------------------------------
def test_gke_documented_entry_becomes_an_audit_event() -> None:
    event = parse_event(gke_event(GKE_ALLOWED) or {})
    assert event.verb == "list" and event.stage == "ResponseComplete"
    assert event.user.username == "john.doe@email.com"
    assert event.user_agent == "kubectl/v1.18.6 (linux/amd64) kubernetes/dff82dc"
    assert event.source_ip == "35.195.195.195" and event.code == 200
    assert event.object_ref is not None and (event.object_ref.resource, event.object_ref.namespace) == (
        "pods",
        "default",
    )
    assert event.request_uri == "/api/v1/namespaces/default/pods"
    assert event.stage_timestamp == "2020-08-17T17:09:05.043988Z"
    assert not event.forbidden_by_authorization


def test_gke_permission_denied_is_a_refusal_by_authorization() -> None:
    event = parse_event(gke_event(GKE_FORBIDDEN) or {})
    assert event.code == 403 and event.forbidden_by_authorization
    assert event.audit_id == GKE_FORBIDDEN["insertId"]
    without_labels = dict(GKE_FORBIDDEN, labels={})
    assert parse_event(gke_event(without_labels) or {}).forbidden_by_authorization  # 403 Forbidden fallback
    admission = dict(GKE_FORBIDDEN, labels={"authorization.k8s.io/decision": "allow"})
    assert not parse_event(gke_event(admission) or {}).forbidden_by_authorization


def test_gke_resource_names_and_response_codes() -> None:
    def ref(name: str, method: str = "io.k8s.core.v1.pods.get") -> dict[str, Any]:
        entry = {"protoPayload": dict(GKE_ALLOWED["protoPayload"], resourceName=name, methodName=method)}
        return gke_event(entry) or {}

    exec_ = ref("core/v1/namespaces/team/pods/p1/exec", "io.k8s.core.v1.pods.exec.create")
    assert exec_["objectRef"] == {
        "apiVersion": "v1",
        "namespace": "team",
        "resource": "pods",
        "name": "p1",
        "subresource": "exec",
    }
    assert exec_["verb"] == "create" and exec_["responseStatus"]["code"] == 201
    role = ref("rbac.authorization.k8s.io/v1/clusterroles/admin")
    assert role["objectRef"] == {
        "apiVersion": "v1",
        "apiGroup": "rbac.authorization.k8s.io",
        "resource": "clusterroles",
        "name": "admin",
    }
    assert role["requestURI"] == "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"
    assert ref("core/v1/namespaces/team")["objectRef"] == {
        "apiVersion": "v1",
        "resource": "namespaces",
        "name": "team",
    }
    denied_by_webhook = {  # Binary Authorization's documented refusal: status 3, response code 400
        "protoPayload": dict(
            GKE_ALLOWED["protoPayload"],
            methodName="io.k8s.core.v1.pods.create",
            status={"code": 3, "message": "admission webhook denied the request"},
            response={"@type": "core.k8s.io/v1.Status", "code": 400, "reason": "VIOLATES_POLICY"},
        )
    }
    assert (gke_event(denied_by_webhook) or {})["responseStatus"]["code"] == 400


def test_gke_other_services_are_skipped_and_pubsub_push_is_unwrapped() -> None:
    iam = {
        "protoPayload": {"serviceName": "iam.googleapis.com", "methodName": "SetIamPolicy"},
        "logName": "x",
    }
    assert decode("gke", orjson.dumps(iam)).skipped == 1
    push = {
        "message": {"data": base64.b64encode(orjson.dumps(GKE_FORBIDDEN)).decode(), "messageId": "1"},
        "subscription": "s",
    }
    (event,) = decode("gke", orjson.dumps(push)).events
    assert isinstance(event, dict) and event["userAgent"] == "python-requests/2.34.2"
    assert decode("gke", b'{"no": "entry"}').errors


def test_gke_refusals_are_found_by_replay(tmp_path: Path) -> None:
    entries = [GKE_ALLOWED, GKE_FORBIDDEN, dict(GKE_FORBIDDEN, insertId="second")]
    found, err = replay(tmp_path, "gke", b"\n".join(orjson.dumps(e) for e in entries) + b"\n")
    assert agents(found) == {("mallory@example.com", "python-requests/2.34.2")}
    assert "0 malformed" in err


# -- AKS -------------------------------------------------------------------------------------
def test_aks_documented_records_give_the_audit_event_and_skip_the_rest() -> None:
    decoded = decode("aks", orjson.dumps({"records": [AKS_KUBE_AUDIT, AKS_KUBE_APISERVER]}))
    assert decoded.skipped == 1 and decoded.errors == []
    (raw,) = decoded.events
    event = parse_event(raw)
    assert event.user.username == "aksService" and event.verb == "update"
    assert event.user_agent == "csi-resizer/v0.0.0 (linux/amd64) kubernetes/$Format" and event.code == 200
    assert (
        decode("aks", orjson.dumps(AKS_KUBE_AUDIT)).events == decoded.events
    )  # storage: one record per line
    assert decode("aks", b"[1, 2]").errors


def test_recorded_traffic_in_aks_records_gives_the_same_findings(tmp_path: Path) -> None:
    lines = fixture_lines()
    out = []
    for i in range(0, len(lines), 25):
        records = [
            {**AKS_KUBE_AUDIT, "properties": {**AKS_KUBE_AUDIT["properties"], "log": line.decode() + "\n"}}
            for line in lines[i : i + 25]
        ]
        out.append(orjson.dumps({"records": [*records, AKS_KUBE_APISERVER]}))
    found, err = replay(tmp_path, "aks", b"\n".join(out) + b"\n")
    assert agents(found) == EXPECTED
    assert "0 malformed" in err
