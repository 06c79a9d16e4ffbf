"""`helm lint --strict` and `helm template` over every supported variant, with the properties that
must hold in all of them: valid API versions for Kubernetes 1.20+, a restricted container in
every pod, nothing cluster-wide besides the webhook configuration."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import yaml

from webhook.cli import build_parser

from .conftest import (
    CERT_MANAGER,
    CHART,
    FULLNAME,
    NAMESPACE,
    PROMETHEUS,
    ROOT,
    SECRET_MODE,
    SERVING_CA,
    Helm,
    Render,
)

# name -> (values, --api-versions, --kube-version)
VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...], str | None]] = {
    "default": ({}, (), None),
    "kubernetes-1.20": ({}, (), "1.20.2"),
    "cert-manager": ({"certs": {"mode": "cert-manager"}}, CERT_MANAGER, None),
    "secret": (SECRET_MODE, (), None),
    "tailer": ({"tailer": {"enabled": True}}, (), None),
    "replicas-1": ({"replicas": 1}, (), None),
    "enforce": ({"mode": "enforce", "webhook": {"failurePolicy": "Fail"}}, (), None),
    "managed-clouds": (
        {
            "source": {
                "enabled": True,
                "sources": [
                    "cloudwatch:/aws/eks/prod/cluster",
                    "pubsub:projects/prod-eu-4711/subscriptions/ua-sentinel-audit",
                    "eventhub:aks-audit-ns/kube-audit",
                    "azblob:aksaudit01/insights-logs-kube-audit-admin",
                ],
                "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "0000"}},
                "envFrom": [{"secretRef": {"name": "ua-sentinel-azure"}}],
            },
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
        PROMETHEUS,
        "1.20.2",
    ),
    "everything": (
        {
            "tailer": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "grafana": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "networkPolicy": {"controlPlaneCIDRs": ["10.0.0.10/32"]},
            "webhook": {"clientCA": SERVING_CA.cert_pem.decode()},
            "service": {"clusterIP": "10.96.0.200"},
            "priorityClassName": "system-cluster-critical",
        },
        PROMETHEUS,
        None,
    ),
}

# Every (apiVersion, kind) the chart may emit; all are served by Kubernetes 1.20 (or by
# cert-manager / the Prometheus Operator when those modes are chosen).
ALLOWED_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("policy/v1beta1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
CLUSTER_SCOPED = {"ValidatingWebhookConfiguration"}


def render_variant(render: Render, name: str) -> Any:
    values, api_versions, kube_version = VARIANTS[name]
    return render(values, api_versions=api_versions, kube_version=kube_version)


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for o in objects:
        if o["kind"] in {"Deployment", "DaemonSet"}:
            specs.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((o["metadata"]["name"], o["spec"]))
    return specs


def test_lint_strict_is_clean(helm: Helm) -> None:
    done = helm.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


# `helm lint` has no --api-versions, so the variants that need cert-manager's or the Prometheus
# Operator's API (and fail without it, on purpose) are only rendered.
@pytest.mark.parametrize("name", ["secret", "tailer", "replicas-1", "enforce"])
def test_lint_strict_is_clean_for_each_variant(helm: Helm, name: str) -> None:
    values, _, _ = VARIANTS[name]
    done = helm.run("lint", "--strict", str(CHART), *helm.args(values, (), None))
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_renders_valid_namespaced_objects(render: Render, name: str) -> None:
    rendered = render_variant(render, name)
    assert {"Deployment", "Service", "ConfigMap", "Role", "RoleBinding"} <= rendered.kinds()
    for o in rendered.objects:
        assert (o["apiVersion"], o["kind"]) in ALLOWED_KINDS, (o["apiVersion"], o["kind"])
        assert len(o["metadata"]["name"]) <= 63, o["metadata"]["name"]
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"]
        else:
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]["name"]
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "ua-sentinel"
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_container_is_restricted_and_bounded(render: Render, name: str) -> None:
    for pod, spec in pod_specs(render_variant(render, name).objects):
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, pod
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), pod
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, pod
            assert sc["privileged"] is False, pod
            assert sc["readOnlyRootFilesystem"] is True, pod
            assert sc["capabilities"] == {"drop": ["ALL"]}, pod
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, pod
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), pod
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), pod


@pytest.mark.parametrize("name", list(VARIANTS))
def test_nothing_cluster_wide_but_the_webhook_configuration(render: Render, name: str) -> None:
    kinds = render_variant(render, name).kinds()
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"}
    assert not kinds & {"PodSecurityPolicy", "MutatingWebhookConfiguration"}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_workload_selectors_match_their_pods_and_the_service(render: Render, name: str) -> None:
    rendered = render_variant(render, name)
    for o in rendered.all("Deployment") + rendered.all("DaemonSet"):
        selector = o["spec"]["selector"]["matchLabels"]
        assert selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
    deployment = rendered.one("Deployment", FULLNAME)  # serve's (the source's has no Service)
    service = rendered.one("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_chart_metadata_follows_pyproject() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


def test_image_defaults_to_app_version_and_digest_wins(render: Render) -> None:
    image = render().one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    digest = "sha256:" + "ab" * 32
    pinned = render({"image": {"digest": digest}}).one("Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@" + digest)


def test_long_names_stay_within_kubernetes_limits(render: Render) -> None:
    rendered = render({"fullnameOverride": "a-very-long-release-name-that-someone-might-choose-x" * 2})
    names = [o["metadata"]["name"] for o in rendered.objects]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    assert rendered.one("Deployment")["metadata"]["name"] == "a-very-long-release-name-that-someone-mi"


@pytest.mark.parametrize(("kind", "command"), [("Deployment", "serve"), ("DaemonSet", "tail")])
def test_workload_arguments_parse_with_the_real_cli(render: Render, kind: str, command: str) -> None:
    values = {
        "tailer": {"enabled": True},
        "exemptUsers": ["breakglass"],
        "webhook": {"clientCA": SERVING_CA.cert_pem.decode()},
    }
    (container,) = render(values).one(kind)["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])  # exits (SystemExit) on an unknown flag
    assert args.command == command
