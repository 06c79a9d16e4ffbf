"""The Helm chart installed into a real kube-apiserver 1.20 with the real helm (no pods run: no
nodes), then its certificates and allowlist used by the real `ua-sentinel serve` end to end; and
the managed-cluster source objects of each cloud checked by that apiserver (`kubectl apply
--dry-run=server`: kubectl's schema validation from the server's OpenAPI, then the server's
defaulting, validation and admission, without storing anything)."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from .charts import CHART, helm, secret_files
from .harness import ControlPlane, ControlPlaneFactory
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


# One source per cloud, each with the identity its cloud documents: the ServiceAccount annotation
# (IRSA, GKE Workload Identity, Azure Workload Identity and its pod label), or a Secret's
# connection string through envFrom/valueFrom.
AZURE_WI = {"azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000000"}
CONNECTION = {"secretKeyRef": {"name": "ua-sentinel-azure", "key": "connection-string"}}
CLOUD_SOURCES: dict[str, dict[str, Any]] = {
    "eks": {
        "sources": ["cloudwatch:/aws/eks/prod/cluster"],
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/uas"}
        },
        "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    },
    "gke": {
        "sources": ["pubsub:projects/prod-eu-4711/subscriptions/ua-sentinel-audit"],
        "serviceAccount": {
            "annotations": {"iam.gke.io/gcp-service-account": "uas@prod-eu-4711.iam.gserviceaccount.com"}
        },
    },
    "aks-eventhub": {
        "sources": ["eventhub:aks-audit-ns/kube-audit"],
        "serviceAccount": {"annotations": AZURE_WI},
    },
    "aks-storage": {
        "sources": ["azblob:aksaudit01/insights-logs-kube-audit-admin"],
        "env": [{"name": "AZURE_STORAGE_CONNECTION_STRING", "valueFrom": CONNECTION}],
        "envFrom": [{"secretRef": {"name": "ua-sentinel-azure-extra", "optional": True}}],
    },
}


def _dry_run(cp: ControlPlane, docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """`kubectl apply --dry-run=server` as admin; the objects as the apiserver would store them."""
    text = yaml.safe_dump_all(docs, sort_keys=False)
    done = cp.kubectl("admin", "apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=text, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    items = out["items"] if out.get("kind") == "List" else [out]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


@pytest.mark.parametrize("cloud", sorted(CLOUD_SOURCES))
def test_source_objects_of_each_cloud_pass_the_real_apiserver(
    control_plane: ControlPlane, helm_binary: Path, tmp_path: Path, cloud: str
) -> None:
    namespace = f"src-{cloud}-{uuid.uuid4().hex[:6]}"
    values = {"clusterName": "prod-eu", "source": {"enabled": True, **CLOUD_SOURCES[cloud]}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = helm(
        helm_binary,
        control_plane,
        "template",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "-f",
        str(tmp_path / "values.yaml"),
        "--kube-version",
        "1.20.2",
        "--show-only",
        "templates/source.yaml",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount"], kinds
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    stored = _dry_run(control_plane, docs)

    name = f"{FULLNAME}-source"
    annotations = stored[("ServiceAccount", name)]["metadata"].get("annotations", {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    assert annotations == CLOUD_SOURCES[cloud].get("serviceAccount", {}).get("annotations", {})
    pod = stored[("Deployment", name)]["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == name
    (container,) = pod["spec"]["containers"]
    sources = [container["args"][i + 1] for i, a in enumerate(container["args"]) if a == "--source"]
    assert sources == CLOUD_SOURCES[cloud]["sources"]
    env = {e["name"]: e for e in container["env"]}
    for wanted in CLOUD_SOURCES[cloud].get("env", []):
        assert env[wanted["name"]] == wanted  # kept as given (a secret stays a secretKeyRef)
    assert container.get("envFrom", []) == CLOUD_SOURCES[cloud].get("envFrom", [])
    azure = "azure.workload.identity/use"
    assert (pod["metadata"]["labels"].get(azure) == "true") == (cloud == "aks-eventhub")
    assert stored[("PodDisruptionBudget", name)]["apiVersion"] == "policy/v1beta1"
    # A dry run stores nothing.
    assert (
        control_plane.kubectl("admin", "get", "deployment", name, "-n", namespace, check=False).returncode
        != 0
    )
