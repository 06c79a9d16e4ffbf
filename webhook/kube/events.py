"""The one writer of Kubernetes core/v1 Events: every Event body is built and created here.

Two callers: the allowlist ConfigMap watch (``AllowlistInvalid`` / ``AllowlistApplied`` about
the ConfigMap, :meth:`EventWriter.about`) and the ``k8s-events`` sink (one Event per finding,
:meth:`EventWriter.body` + :meth:`EventWriter.create`). A body is the JSON the API takes; its
message is capped at :data:`MAX_MESSAGE` characters. The message is shown by ``kubectl``, so
callers put only escaped attacker-controlled text in it (a finding's ``user_agent.display``).

Reporting instance (``source.host``, ``reportingInstance``): ``$POD_NAME``, else the host name
(which is the pod name inside a pod). The pod name names exactly one replica of the reporting
component, which is what the field means; the chart sets ``POD_NAME`` in both workloads (serve
and the tailer), while ``NODE_NAME`` exists only in the tailer and is shared by every serve
replica on a node. It is also the pod the ``k8s-events`` sink's fallback Events are about.

Creating an Event that already exists (409 AlreadyExists) counts as delivered: names are
derived from what the Event reports, so a second copy is one Kubernetes already holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

from webhook.logs import fields

__all__ = ["COMPONENT", "DELIVERED", "MAX_MESSAGE", "EventType", "EventWriter", "reporting_instance"]

logger = logging.getLogger(__name__)

COMPONENT: Final = "ua-sentinel"
MAX_MESSAGE: Final = 1024
DELIVERED: Final = frozenset({201, 409})
"""HTTP statuses of :meth:`EventWriter.create` that count as delivered (created, already there)."""

EventType = Literal["Normal", "Warning"]


def reporting_instance() -> str:
    """``$POD_NAME``, else the host name: the replica that reports (see the module docstring)."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class EventWriter:
    """Builds and creates Events through one ``CoreV1Api`` (:func:`webhook.kube.client.api_client`)."""

    def __init__(self, api: Any, *, instance: str | None = None) -> None:
        self.api = api
        self.instance = instance or reporting_instance()

    def body(
        self,
        *,
        namespace: str,
        name: str,
        involved: Mapping[str, Any],
        type_: EventType,
        reason: str,
        message: str,
        first: str,
        last: str,
        count: int = 1,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A core/v1 Event named ``name`` in ``namespace`` about ``involved`` (an ObjectReference)."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": metadata,
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "type": type_,
            "count": count,
            "firstTimestamp": first,
            "lastTimestamp": last,
            "source": {"component": COMPONENT, "host": self.instance},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        }

    def create(self, namespace: str, body: Mapping[str, Any]) -> int:
        """Create ``body``; the HTTP status (in :data:`DELIVERED`, or the API's refusal; 0 if none).

        Transport errors (no connection, timeout) raise: the caller decides whether to retry.
        """
        from kubernetes import client

        try:
            self.api.create_namespaced_event(namespace, body)
        except client.ApiException as exc:
            return int(exc.status or 0)
        return 201

    def about(self, obj: Any, *, kind: str, type_: EventType, reason: str, message: str) -> bool:
        """An Event about ``obj`` (a client model with ``.metadata``) in its namespace.

        Never raises (an Event is a courtesy: a failed one must not stop a reload); logs instead.
        """
        meta = obj.metadata
        now = dt.datetime.now(dt.UTC).isoformat()
        involved = {
            "apiVersion": "v1",
            "kind": kind,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
        }
        body = self.body(
            namespace=meta.namespace,
            name=f"{meta.name}.{time.time_ns():x}",
            involved={key: value for key, value in involved.items() if value is not None},
            type_=type_,
            reason=reason,
            message=message,
            first=now,
            last=now,
        )
        try:
            status = self.create(meta.namespace, body)
        except Exception as exc:
            error = str(exc)
        else:
            if status in DELIVERED:
                return True
            error = f"HTTP {status}"
        logger.warning(
            "cannot create Event",
            **fields(reason=reason, object=f"{meta.namespace}/{meta.name}", error=error[:300]),
        )
        return False
