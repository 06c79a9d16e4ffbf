"""AdmissionReviews and audit EventLists for the serve benchmarks, built from recorded traffic.

Three AdmissionReview shapes (item 2), each from a recorded review (tests/data/admission/):

- ``configmap``: the recorded ConfigMap create, ~1.5 KB.
- ``pod20k``: the recorded Pod create, grown to ~20 KB the way real Pods are (a sidecar, env
  vars, volume mounts, labels, annotations, managedFields).
- ``object200k``: a ~200 KB ConfigMap holding a dashboard JSON document (kube-prometheus-stack
  ships several of this size), with its managedFields.

Every request of a run is distinct: :data:`TOKEN` in the template is replaced by a counter (in
the review ``uid``, the object name and the username), and the RequestIndex is pre-filled with
one matching ``RequestReceived`` per counter value (:func:`request_received`), so each review
finds its audit event at once: no join wait, and one entry per join key (as in real traffic).
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TOKEN = "@@N@@"
NAMESPACE = "team"
USER_UID = "1003"
LISTED_AGENT = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
UNLISTED_AGENT = "python-requests/2.31.0"
UNLISTED_EVERY = 10
"""One request in ten comes from an unlisted agent: warning, annotations and a log line."""


def _recorded(seq: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / "admission" / f"{seq}.json").read_text())["body"]
    return body


def _personalise(review: dict[str, Any]) -> dict[str, Any]:
    request = review["request"]
    request["uid"] = f"00000000-0000-4000-8000-{TOKEN}"
    request["name"] = f"bench-{TOKEN}"
    request["namespace"] = NAMESPACE
    request["userInfo"] = {
        "username": f"system:serviceaccount:team:deployer-{TOKEN}",
        "uid": USER_UID,
        "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"],
    }
    request["object"]["metadata"]["name"] = f"bench-{TOKEN}"
    request["object"]["metadata"]["namespace"] = NAMESPACE
    return review


def configmap() -> dict[str, Any]:
    return _personalise(_recorded("01374"))


def _container(i: int, image: str) -> dict[str, Any]:
    return {
        "name": f"c{i}",
        "image": image,
        "command": ["/bin/app", "--config=/etc/app/config.yaml", f"--shard={i}"],
        "ports": [{"name": "http", "containerPort": 8080 + i, "protocol": "TCP"}],
        "env": [
            {"name": f"APP_SETTING_{k:02d}", "value": f"value-{k}-{'x' * (k % 7 + 8)}"} for k in range(40)
        ]
        + [
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": {
            "limits": {"cpu": "1", "memory": "512Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "volumeMounts": [
            {"name": f"vol-{k}", "mountPath": f"/var/lib/app/{k}", "readOnly": k % 2 == 0} for k in range(8)
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080 + i, "scheme": "HTTP"},
            "initialDelaySeconds": 10,
            "timeoutSeconds": 1,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def pod20k() -> dict[str, Any]:
    review = _recorded("01568")
    pod = review["request"]["object"]
    spec = pod["spec"]
    spec["containers"] = [
        _container(0, "registry.example.com/team/app:v2.31.4"),
        _container(1, "envoyproxy/envoy:v1.30.1"),
    ]
    spec["volumes"] = [
        {"name": f"vol-{k}", "configMap": {"name": f"app-config-{k}", "defaultMode": 420}} for k in range(8)
    ]
    pod["metadata"]["labels"] = {f"app.kubernetes.io/label-{k}": f"value-{k}" for k in range(12)}
    pod["metadata"]["annotations"]["checksum/config"] = "a" * 64
    fields = pod["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:containers"]
    for c in spec["containers"]:
        fields[f'k:{{"name":"{c["name"]}"}}'] = {
            ".": {},
            "f:env": {
                f'k:{{"name":"{e["name"]}"}}': {".": {}, "f:name": {}, "f:value": {}} for e in c["env"]
            },
            "f:volumeMounts": {
                f'k:{{"mountPath":"{m["mountPath"]}"}}': {".": {}, "f:mountPath": {}}
                for m in c["volumeMounts"]
            },
        }
    review = _personalise(review)
    size = len(json.dumps(review, separators=(",", ":")))
    pad = max(0, 20_000 - size - 40)
    pod["metadata"]["annotations"]["example.com/notes"] = "n" * pad
    return review


def object200k() -> dict[str, Any]:
    review = configmap()
    panels = [
        {
            "id": i,
            "type": "timeseries",
            "title": f"Request rate by verb {i}",
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": i * 8},
            "targets": [
                {
                    "expr": f'sum(rate(apiserver_request_total{{verb=~"{v}"}}[5m])) by (code)',
                    "legendFormat": "{{code}}",
                    "refId": chr(65 + k),
                }
                for k, v in enumerate(("GET|LIST", "POST", "PUT|PATCH", "DELETE"))
            ],
            "fieldConfig": {"defaults": {"unit": "reqps", "decimals": 2}, "overrides": []},
        }
        for i in range(200)
    ]
    dashboard = json.dumps({"title": "API server", "uid": "apiserver", "panels": panels}, indent=1)
    obj = review["request"]["object"]
    obj["metadata"]["labels"] = {"grafana_dashboard": "1"}
    obj["metadata"]["managedFields"][0]["fieldsV1"]["f:data"] = {".": {}, "f:apiserver.json": {}}
    keep = 200_000
    for _ in range(3):  # escaping grows the text: trim the document until the review is ~200 KB
        obj["data"] = {"apiserver.json": dashboard[:keep]}
        keep -= len(json.dumps(review, separators=(",", ":"))) - 200_000
    return review


PAYLOADS = {"configmap": configmap, "pod20k": pod20k, "object200k": object200k}
LABELS = {"configmap": "ConfigMap (small)", "pod20k": "Pod (20 KB)", "object200k": "object (200 KB)"}


def template(kind: str) -> str:
    """The review as compact JSON text holding :data:`TOKEN` where the counter goes."""
    return json.dumps(PAYLOADS[kind](), separators=(",", ":"))


def body(kind: str, n: int) -> bytes:
    return template(kind).replace(TOKEN, str(n)).encode()


_RR: dict[str, Any] | None = None


def _received_template() -> dict[str, Any]:
    global _RR
    if _RR is None:
        items = json.loads((DATA / "audit-webhook" / "01373.json").read_text())["body"]["items"]
        _RR = next(e for e in items if e["stage"] == "RequestReceived" and e["verb"] == "create")
    return _RR


def request_received(kind: str, n: int) -> dict[str, Any]:
    """The RequestReceived audit event of request ``n`` of ``kind`` (what the apiserver sends first)."""
    event = copy.deepcopy(_received_template())
    resource = "pods" if kind == "pod20k" else "configmaps"
    event["auditID"] = str(uuid.UUID(int=(list(PAYLOADS).index(kind) + 1) << 64 | n, version=4))
    event["requestURI"] = f"/api/v1/namespaces/{NAMESPACE}/{resource}?fieldManager=kubectl-create"
    event["user"] = {
        "username": f"system:serviceaccount:team:deployer-{n}",
        "uid": USER_UID,
        "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"],
    }
    event["userAgent"] = UNLISTED_AGENT if n % UNLISTED_EVERY == 0 else LISTED_AGENT
    event["objectRef"] = {"resource": resource, "namespace": NAMESPACE, "apiVersion": "v1"}
    return event


def event_list(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events},
        separators=(",", ":"),
    ).encode()


if __name__ == "__main__":
    for name in PAYLOADS:
        print(name, len(template(name)))
