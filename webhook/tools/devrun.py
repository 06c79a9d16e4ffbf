"""``make run``: the webhook on 127.0.0.1 with local certificates, and how to point an apiserver at it.

First run: ``ua-sentinel certs`` material in ``certs/`` (CA, serving pair for 127.0.0.1 and
localhost) plus the apiserver's audit client pair signed by the same CA. Every run: writes the
ValidatingWebhookConfiguration and the apiserver's audit files next to them, prints the commands
that use them, then replaces itself with ``ua-sentinel serve`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from webhook.core.allowlist import MODES
from webhook.tools import apiserver_config as apiserverconfig
from webhook.tools import certs

__all__ = ["main", "validating_webhook"]

WEBHOOK_NAME = "validate.ua-sentinel.io"


def validating_webhook(url: str, ca_pem: bytes) -> str:
    """A ValidatingWebhookConfiguration sending writes and CONNECTs on everything to ``url``.

    failurePolicy Ignore: the cluster keeps working when this local process is not running.
    """
    doc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "ua-sentinel"},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                "rules": [
                    {
                        "operations": ["CREATE", "UPDATE", "DELETE", "CONNECT"],
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "resources": ["*/*"],
                    }
                ],
                "sideEffects": "None",
                "admissionReviewVersions": ["v1", "v1beta1"],
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _ensure_certs(directory: Path) -> None:
    if not (directory / "tls.crt").exists() or not (directory / "ca.key").exists():
        certs.write_serving_set(directory, dns=("localhost",), ips=("127.0.0.1",))
        print(f"wrote a local CA and serving certificate into {directory}/", file=sys.stderr)
    if not (directory / "audit-client.crt").exists():
        pair = apiserverconfig.issue_audit_client(
            (directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes()
        )
        certs.write_pair(pair, directory / "audit-client.crt", directory / "audit-client.key")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m webhook.tools.devrun", description=__doc__)
    parser.add_argument("--certs", default="certs", metavar="DIR", help="(default: %(default)s)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("UA_SENTINEL_PORT", "8443")))
    parser.add_argument("--allowlist", metavar="FILE", help="default: the built-in allowlist")
    parser.add_argument("--mode", choices=MODES, default="warn")
    args = parser.parse_args(argv)

    directory = Path(args.certs).resolve()
    _ensure_certs(directory)
    ca_pem = (directory / "ca.crt").read_bytes()
    shown_port = args.port or 8443
    url = f"https://127.0.0.1:{shown_port}"
    (directory / "validating-webhook.yaml").write_text(validating_webhook(f"{url}/validate", ca_pem))
    config = apiserverconfig.build(
        service_ip="127.0.0.1",
        port=shown_port,
        ca_pem=ca_pem,
        client_cert_pem=(directory / "audit-client.crt").read_bytes(),
        client_key_pem=(directory / "audit-client.key").read_bytes(),
        config_dir=str(directory),
    )
    (directory / apiserverconfig.POLICY_FILE).write_text(config.policy)
    _write_private(directory / apiserverconfig.KUBECONFIG_FILE, config.kubeconfig)
    flags = " \\\n    ".join(config.flags)
    print(
        f"""
ua-sentinel webhook on {url} (certificates in {directory}/)

Admission (kubectl prints its warnings) - for an apiserver on this host:
    kubectl apply -f {directory}/validating-webhook.yaml

Audit events (the webhook learns each requester's user agent from them) - kube-apiserver flags:
    {flags}

Try it:
    curl --cacert {directory}/ca.crt {url}/readyz
    kubectl create configmap ua-demo --from-literal=k=v --dry-run=server
""",
        file=sys.stderr,
        flush=True,
    )
    serve = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(args.port)]
    serve += ["--tls-cert", str(directory / "tls.crt"), "--tls-key", str(directory / "tls.key")]
    serve += ["--audit-client-ca", str(directory / "ca.crt"), "--mode", args.mode]
    if args.allowlist:
        serve += ["--allowlist", args.allowlist]
    os.execv(sys.executable, serve)


if __name__ == "__main__":
    main()
