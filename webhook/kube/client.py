"""Reaching the Kubernetes API, and where this process sits in the cluster.

:func:`api_client` builds a ``CoreV1Api`` the way both processes need it (in-cluster config in a
pod, else the kubeconfig). :func:`pod_namespace` and :func:`own_namespace` answer "which namespace
am I in" for the two uses that need different strictness: a ConfigMap named without a namespace
resolves only against ``$POD_NAMESPACE`` (a guess would watch the wrong object), while the Events
sink's fallback namespace may also come from the service account, then ``default``.
"""

from __future__ import annotations

import os
from typing import Any, Final

__all__ = ["api_client", "configured_api_client", "own_namespace", "parse_configmap_ref", "pod_namespace"]

_SA_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def configured_api_client(*, retries: bool | None = None) -> Any:
    """An ApiClient: in-cluster config inside a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config).

    ``retries=False`` turns off urllib3's own retries (3 by default, also of a timed-out PUT), for
    callers whose ``_request_timeout`` must bound the whole call.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if retries is not None:
        configuration.retries = retries
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def api_client() -> Any:
    """A CoreV1Api over :func:`configured_api_client`."""
    from kubernetes import client

    return client.CoreV1Api(configured_api_client())


def pod_namespace() -> str | None:
    """``$POD_NAMESPACE`` (the chart sets it from the downward API in every pod), or None."""
    return os.environ.get("POD_NAMESPACE") or None


def own_namespace() -> str:
    """``$POD_NAMESPACE``, else the service account's namespace, else ``default``."""
    env = pod_namespace()
    if env:
        return env
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def parse_configmap_ref(text: str, default_namespace: str | None = None) -> tuple[str, str]:
    """``NS/NAME`` (or ``NAME`` with ``default_namespace``, e.g. ``$POD_NAMESPACE``) → (ns, name)."""
    namespace, sep, name = text.partition("/")
    if not sep:
        namespace, name = default_namespace or "", text
    if not namespace or not name or "/" in name:
        raise ValueError(f"{text!r}: expected NAMESPACE/NAME (or NAME with $POD_NAMESPACE set)")
    return namespace, name
