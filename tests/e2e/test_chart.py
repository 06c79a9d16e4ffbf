"""The Helm chart installed into a real kube-apiserver 1.20 with the real helm (no pods run: no
nodes), and its generated certificates checked end to end through the apiserver's audit webhook."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

from .charts import CHART, helm, secret_files
from .harness import ControlPlaneFactory
from .pki import KeyPair
from .recorder import Recorder
from .webhooks import SENTINEL, WebhookTLS

RELEASE, NAMESPACE = "uas", "ua-sentinel"
FULLNAME = f"{RELEASE}-ua-sentinel"


def test_chart_installs_and_its_certificates_carry_audit_events(
    control_plane_factory: ControlPlaneFactory, helm_binary: Path, tmp_path: Path
) -> None:
    cp = control_plane_factory()
    helm(helm_binary, cp, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace")

    # Every object passed the real apiserver's validation; the expected ones exist.
    got = cp.kubectl(
        "admin",
        "get",
        "deployment,service,configmap,secret,networkpolicy,serviceaccount",
        "-n",
        NAMESPACE,
        "-o",
        "name",
    ).stdout.split()
    for expected in (
        f"deployment.apps/{FULLNAME}",
        f"service/{FULLNAME}",
        f"configmap/{FULLNAME}-allowlist",
        f"secret/{FULLNAME}-tls",
        f"secret/{FULLNAME}-audit-client",
    ):
        assert expected in got
    vwc = json.loads(
        cp.kubectl("admin", "get", "validatingwebhookconfiguration", FULLNAME, "-o", "json").stdout
    )
    serving = secret_files(cp, NAMESPACE, f"{FULLNAME}-tls", tmp_path / "serving")
    for webhook in vwc["webhooks"]:
        assert webhook["failurePolicy"] == "Ignore"
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == serving["ca.crt"].read_bytes()

    # No ua-sentinel pod answers (no nodes), yet writes keep working: the cluster never depends on us.
    name = f"after-chart-{uuid.uuid4().hex[:8]}"
    cp.kubectl("dev-alice", "create", "configmap", name, "-n", "team")

    # The chart's allowlist ConfigMap is a valid allowlist for the product, and lists kubectl.
    cm = json.loads(
        cp.kubectl("admin", "get", "configmap", f"{FULLNAME}-allowlist", "-n", NAMESPACE, "-o", "json").stdout
    )
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text(cm["data"]["allowlist.yaml"])
    check = subprocess.run(
        [
            SENTINEL,
            "check",
            "--allowlist",
            str(allowlist),
            "kubectl/v1.20.2 (linux/amd64) kubernetes/faecb19",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert "verdict:   listed" in check.stdout

    # The chart's certificates, wired as its NOTES say (`ua-sentinel apiserver-config`), carry
    # audit events from the real apiserver to an endpoint serving the chart's serving certificate
    # and requiring the chart's audit client certificate.
    client = secret_files(cp, NAMESPACE, f"{FULLNAME}-audit-client", tmp_path / "audit-client")
    tls = WebhookTLS(
        ca=serving["ca.crt"],
        serving=KeyPair(serving["tls.crt"], serving["tls.key"]),
        client_ca=client["ca.crt"],
        apiserver_client=KeyPair(client["tls.crt"], client["tls.key"]),
    )
    with Recorder(tls) as recorder:
        port = recorder.url.rsplit(":", 1)[1]
        out = tmp_path / "apiserver-config"
        args = [
            "--service-ip",
            "127.0.0.1",
            "--port",
            port,
            "--tls-server-name",
            f"{FULLNAME}.{NAMESPACE}.svc",
        ]
        args += [
            "--ca",
            str(tls.ca),
            "--client-cert",
            str(client["tls.crt"]),
            "--client-key",
            str(client["tls.key"]),
        ]
        config = subprocess.run(
            [SENTINEL, "apiserver-config", *args, "--out-dir", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert config.returncode == 0, config.stderr
        cp.restart(audit_webhook_kubeconfig=out / "audit-webhook.kubeconfig")

        agent = f"python-requests/2.34.2 chart-{uuid.uuid4().hex[:8]}"
        assert cp.request("mallory", "GET", "/api/v1/secrets", user_agent=agent).status_code == 403
        call = recorder.wait_for(
            lambda c: (
                c.path.startswith("/audit") and any(e.get("userAgent") == agent for e in c.body["items"])
            ),
            what="the forbidden request on /audit, over the chart's certificates",
        )
        assert call.client_cn == "kube-apiserver-audit"

    helm(helm_binary, cp, "uninstall", RELEASE, "-n", NAMESPACE)
    assert cp.kubectl("admin", "get", "validatingwebhookconfiguration", FULLNAME, check=False).returncode != 0
