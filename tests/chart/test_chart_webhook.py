"""The webhook Deployment, its Service, PodDisruptionBudget and ValidatingWebhookConfiguration:
the safety defaults of the chart, read from the rendered objects."""

from __future__ import annotations

from typing import Any

from .conftest import FULLNAME, NAMESPACE, Render, arg, webhook

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def pod_spec(render: Render, values: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = render(values).one("Deployment")["spec"]["template"]["spec"]
    return spec


def container(render: Render, values: dict[str, Any] | None = None) -> dict[str, Any]:
    (c,) = pod_spec(render, values)["containers"]
    return c  # type: ignore[no-any-return]


# --- Deployment ------------------------------------------------------------------------------


def test_two_replicas_spread_by_preferred_anti_affinity(render: Render) -> None:
    deployment = render().one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector


def test_restricted_security_context_uid_65532(render: Render) -> None:
    spec = pod_spec(render)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    sc = container(render)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # read-only root: /tmp is the only writable place
    mounts = {m["mountPath"]: m for m in container(render)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/certs"]["readOnly"] is True


def test_probes_are_readyz_and_healthz_over_https_on_8443(render: Render) -> None:
    c = container(render)
    (port,) = c["ports"]
    assert port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert live == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}


def test_serve_arguments_follow_the_cli_contract(render: Render) -> None:
    rendered = render()
    c = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[0] == "serve"
    assert arg(args, "--tls-cert") == "/certs/tls.crt"
    assert arg(args, "--tls-key") == "/certs/tls.key"
    assert arg(args, "--audit-client-ca") == "/certs/audit-client-ca.crt"
    assert "--audit-insecure" not in args
    assert "--client-ca" not in args  # only when the admin gives webhook.clientCA
    allowlist = rendered.one("ConfigMap", f"{FULLNAME}-allowlist")
    assert arg(args, "--allowlist-configmap") == f"{NAMESPACE}/{allowlist['metadata']['name']}"
    assert arg(args, "--host") == "0.0.0.0" and arg(args, "--port") == "8443"
    assert arg(args, "--mode") == "warn"
    assert arg(args, "--join-wait") == "0.05"
    assert "--exempt-group" not in args and "--exempt-user" not in args  # serve's own break-glass list
    assert arg(args, "--webhook-name") == webhook(render)["name"]
    assert arg(args, "--log-level") == "info"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_every_certificate_file_serve_reads_is_projected(render: Render) -> None:
    spec = pod_spec(render, {"webhook": {"clientCA": PEM}})
    args = spec["containers"][0]["args"]
    (certs_volume,) = [v for v in spec["volumes"] if v["name"] == "certs"]
    projected = {
        item["path"]: (kind, source[kind]["name"], item["key"])
        for source in certs_volume["projected"]["sources"]
        for kind in source
        for item in source[kind]["items"]
    }
    for flag in ("--tls-cert", "--tls-key", "--audit-client-ca", "--client-ca"):
        path = arg(args, flag)
        assert path.startswith("/certs/") and path.removeprefix("/certs/") in projected, flag
    assert projected["client-ca.crt"] == ("configMap", f"{FULLNAME}-client-ca", "ca.crt")
    # the apiserver's client key lives in the same Secret as its CA: only ca.crt is mounted
    assert projected["audit-client-ca.crt"] == ("secret", f"{FULLNAME}-audit-client", "ca.crt")
    assert [p for p in projected.values() if p[1] == f"{FULLNAME}-audit-client"] == [
        ("secret", f"{FULLNAME}-audit-client", "ca.crt")
    ]


def test_mode_exemptions_and_priority_class_are_passed(render: Render) -> None:
    values = {
        "mode": "enforce",
        "exemptUsers": ["breakglass"],
        "exemptGroups": ["ops", "system:masters"],
        "priorityClassName": "system-cluster-critical",
    }
    spec = pod_spec(render, values)
    args = spec["containers"][0]["args"]
    assert arg(args, "--mode") == "enforce"
    assert arg(args, "--exempt-user") == "breakglass"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--exempt-group"] == ["ops", "system:masters"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert "priorityClassName" not in pod_spec(render)


def test_audit_client_certificate_can_be_turned_off(render: Render) -> None:
    rendered = render({"audit": {"requireClientCert": False}})
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--audit-client-ca" not in args
    assert "--audit-insecure" in args  # serve refuses every /audit without a guard or this flag
    assert f"{FULLNAME}-audit-client" not in {o["metadata"]["name"] for o in rendered.objects}


# --- Service and PodDisruptionBudget ---------------------------------------------------------


def test_service_keeps_one_apiserver_on_one_pod(render: Render) -> None:
    service = render().one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443 and port["targetPort"] == "https"  # the container's 8443
    assert "clusterIP" not in service["spec"]
    pinned = render({"service": {"clusterIP": "10.96.0.200"}}).one("Service")
    assert pinned["spec"]["clusterIP"] == "10.96.0.200"


def test_pdb_policy_v1_from_1_21_and_v1beta1_on_1_20(render: Render) -> None:
    pdb = render().one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    deployment = render().one("Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert render(kube_version="1.21.0").one("PodDisruptionBudget")["apiVersion"] == "policy/v1"
    assert render(kube_version="1.20.2").one("PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"


def test_no_pdb_with_a_single_replica(render: Render) -> None:
    rendered = render({"replicas": 1})
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert not rendered.all("PodDisruptionBudget")


# --- ValidatingWebhookConfiguration ----------------------------------------------------------


def test_webhook_safety_defaults(render: Render) -> None:
    hook = webhook(render)
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 3
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["clientConfig"]["service"] == {
        "name": FULLNAME,
        "namespace": NAMESPACE,
        "path": "/validate",
        "port": 443,
    }
    assert render().one("Service")["metadata"]["name"] == FULLNAME


def test_failure_policy_and_timeout_are_configurable(render: Render) -> None:
    hook = webhook(render, {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 30}})
    assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 30
    assert webhook(render, {"webhook": {"timeoutSeconds": 1}})["timeoutSeconds"] == 1


def test_namespace_selector_excludes_system_and_own_namespace_and_opt_out(render: Render) -> None:
    expressions = webhook(render, {"webhook": {"excludedNamespaces": ["monitoring"]}})["namespaceSelector"][
        "matchExpressions"
    ]
    by_key = {e["key"]: e for e in expressions}
    names = by_key["kubernetes.io/metadata.name"]
    assert names["operator"] == "NotIn"
    assert names["values"] == ["kube-system", "kube-node-lease", NAMESPACE, "monitoring"]
    assert by_key["ua-sentinel.io/ignore"] == {"key": "ua-sentinel.io/ignore", "operator": "DoesNotExist"}


def test_default_rules_cover_writes_and_connect_except_events_leases_and_status(render: Render) -> None:
    rules = webhook(render)["rules"]
    core = [r for r in rules if r["apiGroups"] == [""]]
    others = [r for r in rules if r["apiGroups"] != [""]]
    assert len(core) == 1 and len(others) == 1
    for rule in rules:
        assert rule["operations"] == ["CREATE", "UPDATE", "DELETE", "CONNECT"]
        assert rule["apiVersions"] == ["*"] and rule["scope"] == "*"
        assert "*" not in rule["apiGroups"]  # "*" would bring core events back
        for resource in rule["resources"]:
            assert not resource.endswith("/status") and resource != "*/*", resource
            assert resource.split("/")[0] not in {"events", "leases"}, resource
    assert {"pods", "secrets", "configmaps", "serviceaccounts", "*/exec", "*/attach", "*/portforward"} <= set(
        core[0]["resources"]
    )
    assert "events" not in core[0]["resources"]
    groups = set(others[0]["apiGroups"])
    assert {"apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io"} <= groups
    assert "admissionregistration.k8s.io" in groups
    assert not groups & {"events.k8s.io", "coordination.k8s.io", ""}
    assert others[0]["resources"][0] == "*" and "*/scale" in others[0]["resources"]


def test_default_rules_include_groups_the_cluster_serves(render: Render) -> None:
    rules = webhook(render, api_versions=("example.com/v1", "example.com/v1/Widget"))["rules"]
    assert "example.com" in rules[1]["apiGroups"]


def test_rules_and_excluded_groups_are_configurable(render: Render) -> None:
    custom = [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods/exec"],
            "scope": "Namespaced",
        }
    ]
    assert webhook(render, {"webhook": {"rules": custom}})["rules"] == custom
    excluded = {"webhook": {"excludedGroups": ["events.k8s.io", "coordination.k8s.io", "apps"]}}
    assert "apps" not in webhook(render, excluded)["rules"][1]["apiGroups"]


def test_webhook_configuration_can_be_left_out(render: Render) -> None:
    assert not render({"webhook": {"enabled": False}}).all("ValidatingWebhookConfiguration")


def test_validate_client_ca_is_passed_when_configured(render: Render) -> None:
    rendered = render({"webhook": {"clientCA": PEM}})
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arg(args, "--client-ca") == "/certs/client-ca.crt"
    ca = rendered.one("ConfigMap", f"{FULLNAME}-client-ca")
    assert ca["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
