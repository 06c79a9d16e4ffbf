"""The ``k8s-events`` sink: one Kubernetes Event per finding, with the official client.

The Event goes to the namespace of the refused request when it has one (so ``kubectl get
events -n team`` shows who probed ``team``), else to the tailer's own namespace (the pod's
``POD_NAMESPACE``, else its service account's namespace, else ``default``). Its name is derived
from the finding id and sequence, so delivering a finding twice meets ``409 AlreadyExists``,
which counts as delivered: Kubernetes itself drops the duplicate. The message carries the
escaped agent (``user_agent.display``), never the raw one.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from webhook.core.findings import Finding
from webhook.sinks.base import SinkError

__all__ = ["KubernetesEventsSink", "event_body", "own_namespace"]

log = logging.getLogger(__name__)

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "services": "Service",
    "serviceaccounts": "ServiceAccount",
    "deployments": "Deployment",
    "daemonsets": "DaemonSet",
    "statefulsets": "StatefulSet",
    "jobs": "Job",
    "cronjobs": "CronJob",
    "roles": "Role",
    "rolebindings": "RoleBinding",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "endpoints": "Endpoints",
    "ingresses": "Ingress",
}


def own_namespace() -> str:
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def _reason(rule: str) -> str:
    return "".join(part.capitalize() for part in rule.split("-"))


def event_body(finding: Finding, namespace: str, *, own: bool) -> dict[str, Any]:
    """A core/v1 Event (as the JSON the API takes) for ``finding`` in ``namespace``."""
    audit = finding.kubernetes.get("audit", {})
    ref = audit.get("objectRef") or {}
    severity = finding.ua_sentinel.get("severity", "medium")
    if own:
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": os.environ.get("POD_NAME") or socket.gethostname(),
        }
    else:
        group = ref.get("apiGroup")
        involved = {
            "apiVersion": f"{group}/{ref.get('apiVersion', 'v1')}" if group else ref.get("apiVersion", "v1"),
            "kind": _KINDS.get(ref.get("resource", ""), ref.get("resource", "")),
            "namespace": namespace,
            "name": ref.get("name", ""),
        }
    message = (
        f"{finding.rule.name} ({severity}): user {finding.user.name} with agent "
        f'"{finding.user_agent.display}": {finding.event.count} request(s), first '
        f"{audit.get('verb', '?')} {audit.get('requestURI', '?')} from {finding.source.ip or '?'}; "
        f"finding {finding.id}"
    )
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"ua-sentinel.{finding.id[:24]}.{finding.event.sequence}",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ua-sentinel", "ua-sentinel.io/rule": finding.rule.name},
            "annotations": {"ua-sentinel.io/finding-id": finding.id},
        },
        "involvedObject": involved,
        "reason": _reason(finding.rule.name),
        "message": message[:1024],
        "type": "Warning",
        "count": finding.event.count,
        "firstTimestamp": finding.event.start or finding.timestamp,
        "lastTimestamp": finding.event.end or finding.timestamp,
        "source": {"component": "ua-sentinel"},
        "reportingComponent": "ua-sentinel",
        "reportingInstance": os.environ.get("NODE_NAME") or socket.gethostname(),
    }


class KubernetesEventsSink:
    """Creates Events through ``CoreV1Api`` (:func:`webhook.kube.configmap.api_client`: in a pod the
    in-cluster config, else the kubeconfig)."""

    def __init__(self, *, default_namespace: str | None = None) -> None:
        from kubernetes import client

        from webhook.kube.configmap import api_client

        self._api = api_client()
        self._exception = client.ApiException
        self.namespace = default_namespace or own_namespace()

    def _create(self, namespace: str, body: dict[str, Any]) -> int:
        try:
            self._api.create_namespaced_event(namespace, body)
        except self._exception as exc:
            return int(exc.status or 0)
        return 201

    def deliver(self, finding: Finding) -> None:
        ref = finding.kubernetes.get("audit", {}).get("objectRef") or {}
        target = ref.get("namespace")
        status = self._create(target, event_body(finding, target, own=False)) if target else 0
        if status in (201, 409):
            return
        if target:
            log.info("event in namespace %s refused (HTTP %s); using %s", target, status, self.namespace)
        status = self._create(self.namespace, event_body(finding, self.namespace, own=True))
        if status not in (201, 409):
            raise SinkError(f"creating the Event failed: HTTP {status}")

    def close(self) -> None:
        return None
