"""The Helm chart installed into a real kube-apiserver 1.20 with the real helm (no pods run: no
nodes), then its certificates and allowlist used by the real `ua-sentinel serve` end to end."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

from .charts import CHART, helm, secret_files
from .harness import ControlPlaneFactory
from .pki import KeyPair
from .sentinel import SentinelServer
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

    # The chart's certificates and allowlist ConfigMap, used by the real `ua-sentinel serve` run as
    # the chart's Deployment runs it, and the apiserver wired as the chart's NOTES say
    # (`ua-sentinel apiserver-config`, tls-server-name = the Service's name): a finding comes out.
    client = secret_files(cp, NAMESPACE, f"{FULLNAME}-audit-client", tmp_path / "audit-client")
    tls = WebhookTLS(
        ca=serving["ca.crt"],
        serving=KeyPair(serving["tls.crt"], serving["tls.key"]),
        client_ca=client["ca.crt"],
        apiserver_client=KeyPair(client["tls.crt"], client["tls.key"]),
    )
    server = SentinelServer(
        tmp_path / "serve",
        tls,
        allowlist_configmap=f"{NAMESPACE}/{FULLNAME}-allowlist",
        kubeconfig=cp.kubeconfig("admin"),
        client_auth=False,
        extra_args=["--audit-client-ca", str(client["ca.crt"]), "--webhook-name", "validate.ua-sentinel.io"],
    )
    out = tmp_path / "apiserver-config"
    args = [
        "--service-ip",
        "127.0.0.1",
        "--port",
        str(server.port),
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
    with server:
        cp.restart(audit_webhook_kubeconfig=out / "audit-webhook.kubeconfig")
        agent = f"python-requests/2.34.2 chart-{uuid.uuid4().hex[:8]}"
        assert cp.request("mallory", "GET", "/api/v1/secrets", user_agent=agent).status_code == 403
        finding = server.wait_for_finding(
            lambda f: f["rule"]["name"] == "unusual-agent-forbidden" and f["user_agent"]["original"] == agent,
            what="serve's finding, over the chart's certificates",
        )
        assert finding["user"]["name"] == "mallory"

    helm(helm_binary, cp, "uninstall", RELEASE, "-n", NAMESPACE)
    assert cp.kubectl("admin", "get", "validatingwebhookconfiguration", FULLNAME, check=False).returncode != 0
