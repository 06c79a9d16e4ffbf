"""Wiring webhook servers (ours, or the recorder) to the real apiserver: TLS material and objects.

tls = make_webhook_tls(tmp / "tls")               # `ua-sentinel certs` + a client CA and cert
cp = ControlPlane(bins, dir, audit_webhook_url=f"https://127.0.0.1:{port}/audit",
                  webhook_ca=tls.ca, client_cert=tls.apiserver_client)
cp.apply_yaml(validating_webhook_configuration("ua-sentinel", url, tls.ca_bundle))
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pki import KeyPair, issue, make_ca, write_keypair

__all__ = [
    "ALL_OPERATIONS",
    "SENTINEL",
    "WebhookTLS",
    "make_webhook_tls",
    "validating_webhook_configuration",
]

SENTINEL = Path(sys.executable).with_name("ua-sentinel")
ALL_OPERATIONS: tuple[str, ...] = ("CREATE", "UPDATE", "DELETE", "CONNECT")


@dataclass(frozen=True)
class WebhookTLS:
    """TLS material for a webhook server on 127.0.0.1 and the apiserver calling it."""

    ca: Path  # signed the serving certificate: caBundle / audit kubeconfig certificate-authority
    serving: KeyPair  # --tls-cert / --tls-key
    client_ca: Path  # the server trusts client certificates it signed (--client-ca, --audit-client-ca)
    apiserver_client: KeyPair  # what the apiserver presents (ControlPlane(client_cert=...))

    @property
    def ca_bundle(self) -> str:
        """Base64 PEM of `ca`, as a webhook configuration's `clientConfig.caBundle` wants it."""
        return base64.b64encode(self.ca.read_bytes()).decode()


def make_webhook_tls(directory: Path) -> WebhookTLS:
    """Serving certificates from the real `ua-sentinel certs --ip 127.0.0.1`; client ones made here."""
    done = subprocess.run(
        [SENTINEL, "certs", "--out", str(directory), "--ip", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ua-sentinel certs failed ({done.returncode}): {done.stderr}")
    client_ca = make_ca("e2e webhook client CA", days=2)
    client_ca_cert = write_keypair(client_ca, directory, "client-ca").cert
    client = issue(client_ca, "kube-apiserver", client=True, days=2)
    return WebhookTLS(
        ca=directory / "ca.crt",
        serving=KeyPair(directory / "tls.crt", directory / "tls.key"),
        client_ca=client_ca_cert,
        apiserver_client=write_keypair(client, directory, "apiserver-client"),
    )


def validating_webhook_configuration(
    name: str,
    url: str,
    ca_bundle: str,
    *,
    operations: Sequence[str] = ALL_OPERATIONS,
    resources: Sequence[str] = ("*/*",),
    failure_policy: str = "Ignore",
    timeout_seconds: int = 5,
    namespace_selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An admissionregistration.k8s.io/v1 ValidatingWebhookConfiguration calling `url`.

    Defaults: every operation on every resource (like the recorded fixtures), failurePolicy
    Ignore (our webhook must never block the cluster), sideEffects None, AdmissionReview v1.
    """
    webhook: dict[str, Any] = {
        "name": f"{name}.ua-sentinel.e2e",
        "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": [
            {
                "apiGroups": ["*"],
                "apiVersions": ["*"],
                "operations": list(operations),
                "resources": list(resources),
                "scope": "*",
            }
        ],
        "failurePolicy": failure_policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": timeout_seconds,
    }
    if namespace_selector is not None:
        webhook["namespaceSelector"] = dict(namespace_selector)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }
