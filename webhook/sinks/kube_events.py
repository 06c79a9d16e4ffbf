"""The ``k8s-events`` sink: one Kubernetes Event per finding, with the official client.

The Event goes to the namespace of the refused request when it has one (so ``kubectl get
events -n team`` shows who probed ``team``), else to the tailer's own namespace (the pod's
``POD_NAMESPACE``, else its service account's namespace, else ``default``), about the tailer's
pod. Its name is derived from the finding id and sequence, so delivering a finding twice meets
``409 AlreadyExists``, which counts as delivered: Kubernetes itself drops the duplicate. The
message carries the escaped agent (``user_agent.display``), never the raw one. The body is built
and created by :class:`webhook.kube.events.EventWriter`, as every Event of ua-sentinel is.

The refused object's reference comes from the request's URL, which the client chose: a request
for ``.../secrets/%1B%5B41mEVIL`` audits a name holding a raw ESC. Every ``involvedObject`` field
is therefore escaped (:func:`~webhook.core.useragent.display`, capped at 253 characters, the
longest object name). A name any real object can have holds none of the escaped characters, so
it is kept as it is and the Event still identifies the object; a name no object can have is
shown escaped, which is what ``kubectl describe`` prints. A namespace that is not shown as it is
(escaping changed it) cannot exist: such a finding's Event goes to our own namespace.
"""

from __future__ import annotations

import logging
from typing import Any

from webhook.core.findings import Finding
from webhook.core.useragent import display
from webhook.kube.client import api_client, own_namespace
from webhook.kube.events import DELIVERED, EventWriter
from webhook.logs import fields
from webhook.sinks.base import SinkError

__all__ = ["KubernetesEventsSink", "finding_event"]

logger = logging.getLogger(__name__)

_NAME_MAX = 253
"""The longest object name (a DNS subdomain); an escaped reference field is cut there."""

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


def _reason(rule: str) -> str:
    return "".join(part.capitalize() for part in rule.split("-"))


def _shown(text: str) -> str:
    """A reference field from the audited URL, escaped: unchanged for any name an object can have."""
    return display(text, _NAME_MAX)


def finding_event(events: EventWriter, finding: Finding, namespace: str, *, own: bool) -> dict[str, Any]:
    """The Event for ``finding`` in ``namespace``: about the refused object, or (``own``) our pod."""
    audit = finding.kubernetes.get("audit", {})
    ref = audit.get("objectRef") or {}
    if own:
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": events.instance}
    else:
        group = ref.get("apiGroup")
        version = str(ref.get("apiVersion", "v1"))
        resource = str(ref.get("resource", ""))
        involved = {
            "apiVersion": _shown(f"{group}/{version}" if group else version),
            "kind": _shown(_KINDS.get(resource, resource)),
            "namespace": namespace,
            "name": _shown(str(ref.get("name", ""))),
        }
    message = finding.one_line()
    return events.body(
        namespace=namespace,
        name=f"ua-sentinel.{finding.id[:24]}.{finding.event.sequence}",
        involved=involved,
        type_="Warning",
        reason=_reason(finding.rule.name),
        message=message,
        first=finding.event.start or finding.timestamp,
        last=finding.event.end or finding.timestamp,
        count=finding.event.count,
        labels={"app.kubernetes.io/name": "ua-sentinel", "ua-sentinel.io/rule": finding.rule.name},
        annotations={"ua-sentinel.io/finding-id": finding.id},
    )


class KubernetesEventsSink:
    """Creates Events through ``CoreV1Api`` (:func:`webhook.kube.client.api_client`: in a pod the
    in-cluster config, else the kubeconfig)."""

    def __init__(self, *, default_namespace: str | None = None) -> None:
        self._events = EventWriter(api_client())
        self.namespace = default_namespace or own_namespace()

    def deliver(self, finding: Finding) -> None:
        ref = finding.kubernetes.get("audit", {}).get("objectRef") or {}
        target = ref.get("namespace")
        if target and _shown(str(target)) == target:
            status = self._events.create(target, finding_event(self._events, finding, target, own=False))
            if status in DELIVERED:
                return
            logger.info(
                "the Event was refused in the object's namespace; creating it in our own namespace",
                **fields(namespace=display(target), status=status, ownNamespace=self.namespace),
            )
        own = finding_event(self._events, finding, self.namespace, own=True)
        status = self._events.create(self.namespace, own)
        if status not in DELIVERED:
            raise SinkError(f"creating the Event failed: HTTP {status}")

    def close(self) -> None:
        return None
