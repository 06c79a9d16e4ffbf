"""What a kube-apiserver needs to send its audit events to ua-sentinel: two files and its flags.

- The audit policy: ``Metadata`` level for every request. Detection needs ``ResponseComplete``
  (status code, authorization decision) of every request; the admission join needs the
  ``RequestReceived`` stage (it names the requester's user agent before the admission call) of
  what reaches admission only, so get/list/watch omit it (lean: reads are most API traffic;
  bench/audit_volume.py measures it). Metadata carries no request or response bodies, so Secrets
  never leave the apiserver. An existing policy is merged instead (``policy_merge``).
- The audit webhook kubeconfig: the Service's ClusterIP (the apiserver does not resolve cluster
  DNS), the CA that signed the serving certificate, the Service's DNS name to check it against
  (``tls-server-name``: the serving certificate is issued for the name, not the IP), and the
  client certificate that ``/audit`` requires (``serve --audit-client-ca``).
- The flags: batch mode, never blocking. Measured on a real apiserver (DESIGN.md): in blocking
  mode an unreachable webhook stalled the apiserver until it exited; in batch mode with
  ``--audit-webhook-batch-max-wait=20ms --audit-webhook-batch-throttle-enable=false`` it kept
  serving, and RequestReceived reached ``/audit`` within 20 ms of the admission call.

Pure functions over text the caller has read; the CLI (``ua-sentinel apiserver-config``) does
the file I/O. Errors are ``ValueError`` with a message that says what to fix.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Required, TypedDict, Unpack

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.tools import certs

__all__ = [
    "AUDIT_POLICY",
    "DEFAULT_CONFIG_DIR",
    "KUBECONFIG_FILE",
    "POLICY_FILE",
    "ApiserverConfig",
    "WebhookTarget",
    "apiserver_flags",
    "audit_webhook_kubeconfig",
    "build",
    "issue_audit_client",
    "webhook_url",
]

DEFAULT_CONFIG_DIR = "/etc/kubernetes/ua-sentinel"
POLICY_FILE = "audit-policy.yaml"
KUBECONFIG_FILE = "audit-webhook.kubeconfig"
DEFAULT_PORT = 443
BATCH_MAX_WAIT = "20ms"
AUDIT_CLIENT_NAME = "kube-apiserver-audit"

AUDIT_POLICY = """\
# ua-sentinel audit policy: Metadata level (no request or response bodies) for every request.
# Detection needs ResponseComplete of every request; the admission join needs RequestReceived
# only for what reaches admission, so reads omit it (about half of their events).
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  # CONNECT reaches admission even as a GET (exec/attach over websockets): keep RequestReceived.
  - level: Metadata
    resources:
      - group: ""
        resources: ["*/exec", "*/attach", "*/portforward", "*/proxy"]
  # Reads never reach admission.
  - level: Metadata
    verbs: ["get", "list", "watch"]
    omitStages: ["RequestReceived"]
  - level: Metadata
"""


def webhook_url(service_ip: str, port: int = DEFAULT_PORT) -> str:
    """``https://IP:PORT/audit`` (IPv6 in brackets). Only an IP: the apiserver has no cluster DNS."""
    try:
        ip = ipaddress.ip_address(service_ip)
    except ValueError:
        raise ValueError(
            f"service IP {service_ip!r} is not an IP address: use the Service's ClusterIP "
            "(kubectl get service NAME -o jsonpath='{.spec.clusterIP}'); the apiserver does not "
            "resolve cluster DNS names"
        ) from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"https://{host}:{port}/audit"


def _pem_cert(what: str, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError(f"{what} is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None


def _check_client_pair(cert_pem: bytes, key_pem: bytes) -> None:
    cert = _pem_cert("the client certificate", cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("the client key is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != cert.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise ValueError("the client key does not belong to the client certificate (swapped files?)")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise ValueError(
            "the client certificate is not valid for client authentication (no clientAuth usage)"
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audit_webhook_kubeconfig(
    *,
    service_ip: str,
    ca_pem: bytes,
    client_cert_pem: bytes,
    client_key_pem: bytes,
    port: int = DEFAULT_PORT,
    tls_server_name: str | None = None,
) -> str:
    """The ``--audit-webhook-config-file`` kubeconfig, certificates embedded.

    ``ca_pem`` is the CA of the *serving* certificate; ``client_cert_pem``/``client_key_pem``
    are what the apiserver presents to ``/audit``. The certificate and key are checked to be a
    pair, since a swapped file only shows up later as silently dropped audit batches.
    """
    _pem_cert("the CA", ca_pem)
    _check_client_pair(client_cert_pem, client_key_pem)
    cluster: dict[str, Any] = {"server": webhook_url(service_ip, port)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    cluster["certificate-authority-data"] = _b64(ca_pem)
    config: Mapping[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ua-sentinel", "cluster": cluster}],
        "users": [
            {
                "name": "kube-apiserver",
                "user": {
                    "client-certificate-data": _b64(client_cert_pem),
                    "client-key-data": _b64(client_key_pem),
                },
            }
        ],
        "contexts": [
            {"name": "ua-sentinel", "context": {"cluster": "ua-sentinel", "user": "kube-apiserver"}}
        ],
        "current-context": "ua-sentinel",
    }
    header = "# ua-sentinel audit webhook backend (kube-apiserver --audit-webhook-config-file)\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=1 << 16)


def apiserver_flags(*, config_dir: str = DEFAULT_CONFIG_DIR, audit_log_path: str | None = None) -> list[str]:
    """The kube-apiserver flags, one per item. ``audit_log_path`` adds the log backend the tailer reads."""
    directory = config_dir.rstrip("/") or "/"
    flags = [
        f"--audit-policy-file={directory}/{POLICY_FILE}",
        f"--audit-webhook-config-file={directory}/{KUBECONFIG_FILE}",
        "--audit-webhook-version=audit.k8s.io/v1",
        "--audit-webhook-mode=batch",
        f"--audit-webhook-batch-max-wait={BATCH_MAX_WAIT}",
        "--audit-webhook-batch-throttle-enable=false",
    ]
    if audit_log_path:
        flags += [
            f"--audit-log-path={audit_log_path}",
            "--audit-log-format=json",
            "--audit-log-maxsize=100",
            "--audit-log-maxbackup=5",
        ]
    return flags


@dataclass(frozen=True, slots=True)
class ApiserverConfig:
    """The two files (by name, relative to ``config_dir``) and the flags that point at them."""

    config_dir: str
    policy: str
    kubeconfig: str
    flags: tuple[str, ...]

    def files(self) -> dict[str, str]:
        return {POLICY_FILE: self.policy, KUBECONFIG_FILE: self.kubeconfig}

    def render(self) -> str:
        """One text for stdout: each file under a comment naming its path, then the flags."""
        parts = [
            f"# ---- {self.config_dir.rstrip('/')}/{name} ----\n{text}" for name, text in self.files().items()
        ]
        flags = "".join(f"{flag}\n" for flag in self.flags)
        parts.append(f"# ---- kube-apiserver flags (batch mode: never blocking) ----\n{flags}")
        return "\n".join(parts)


class WebhookTarget(TypedDict, total=False):
    """Where the apiserver sends audit events and how it proves itself: the keyword arguments of
    :func:`audit_webhook_kubeconfig`, which :func:`build` passes on."""

    service_ip: Required[str]
    ca_pem: Required[bytes]
    client_cert_pem: Required[bytes]
    client_key_pem: Required[bytes]
    port: int
    tls_server_name: str | None


def build(
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    audit_log_path: str | None = None,
    policy: str = AUDIT_POLICY,
    **target: Unpack[WebhookTarget],
) -> ApiserverConfig:
    """Everything to drop next to the apiserver, checked (see ``audit_webhook_kubeconfig``).

    ``policy`` is ours by default, or an existing policy merged (``policy_merge``)."""
    kubeconfig = audit_webhook_kubeconfig(**target)
    flags = apiserver_flags(config_dir=config_dir, audit_log_path=audit_log_path)
    return ApiserverConfig(config_dir, policy, kubeconfig, tuple(flags))


def issue_audit_client(
    ca_cert_pem: bytes, ca_key_pem: bytes, *, days: int = certs.DEFAULT_DAYS
) -> certs.CertPair:
    """A client certificate for the apiserver's audit webhook, signed by a local CA.

    For installs without the chart (``ua-sentinel certs`` made the CA): serve then trusts it with
    ``--audit-client-ca ca.crt``. The chart issues its own, under a CA of its own.
    """
    cert = _pem_cert("the CA", ca_cert_pem)
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("the CA key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key (ua-sentinel certs makes EC keys)")
    return certs.issue(certs.CertPair(cert, key), AUDIT_CLIENT_NAME, client=True, days=days)
