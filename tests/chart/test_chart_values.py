"""values.schema.json, the allowlist ConfigMap, and NOTES.txt (which must say exactly what
`ua-sentinel apiserver-config` would write)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from webhook.tools import apiserver_config as apiserverconfig

from .conftest import CHART, FULLNAME, NAMESPACE, ROOT, Render

PACKAGE_ALLOWLIST = ROOT / "webhook" / "data" / "default-allowlist.yaml"
Notes = Callable[..., str]


# --- values.schema.json ----------------------------------------------------------------------


def schema_properties(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for key, sub in node.get("properties", {}).items():
        found.append((path + key, sub))
        found += schema_properties(sub, path + key + ".")
    return found


def test_every_value_is_typed_and_described() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for path, prop in schema_properties(schema):
        assert prop.get("description"), f"{path} has no description"
        assert "type" in prop or "anyOf" in prop, f"{path} has no type"
        if prop.get("type") == "object" and "properties" in prop:
            assert prop["additionalProperties"] is False, f"{path} accepts unknown keys"


def test_every_value_in_values_yaml_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = {path for path, _ in schema_properties(schema)}

    def walk(values: dict[str, Any], prefix: str = "") -> list[str]:
        paths = []
        for key, value in values.items():
            paths.append(prefix + key)
            if isinstance(value, dict) and prefix + key + "." in {k[: len(prefix + key) + 1] for k in known}:
                paths += walk(value, prefix + key + ".")
        return paths

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(walk(values)) <= known


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "/replicas': got string, want integer"),
        ({"replicas": 0}, "/replicas"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"timeoutSeconds": 0}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"failurePolicy": "Fial"}}, "/webhook/failurePolicy"),
        ({"mode": "block"}, "/mode"),
        ({"certs": {"mode": "vault"}}, "/certs/mode"),
        ({"webhook": {"timeout": 5}}, "'timeout' not allowed"),
        ({"tailer": {"enabled": "yes"}}, "/tailer/enabled"),
        ({"tailer": {"auditLogPath": "audit.log"}}, "/tailer/auditLogPath"),
        ({"service": {"clusterIP": "my-service"}}, "/service/clusterIP"),
        ({"networkPolicy": {"controlPlaneCIDRs": ["10.0.0.1"]}}, "/networkPolicy/controlPlaneCIDRs"),
        ({"webhook": {"name": "ua-sentinel"}}, "/webhook/name"),
        ({"joinWait": "50ms"}, "/joinWait"),
        ({"tailer": {"sinks": ["k8s-events:kube-system"]}}, "/tailer/sinks"),
        ({"tailer": {"sinks": []}}, "/tailer/sinks"),
        ({"tailer": {"sinks": ["falcosidekick:sidekick:2801"]}}, "/tailer/sinks"),
        ({"sinks": ["file:/tmp/findings.jsonl"]}, "/sinks"),
        ({"sinks": ["otlp:grpc://otel:4317"]}, "/sinks"),
        ({"clusterName": 7}, "/clusterName"),
        ({"logLevel": "trace"}, "/logLevel"),
    ],
)
def test_wrong_values_fail_with_a_message_naming_them(
    render_error: Callable[..., str], values: dict[str, Any], message: str
) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


# --- allowlist -------------------------------------------------------------------------------


def test_chart_allowlist_is_the_package_default() -> None:
    # The chart ships a copy (Helm cannot read files outside the chart): it must not drift.
    assert (CHART / "files" / "allowlist.yaml").read_bytes() == PACKAGE_ALLOWLIST.read_bytes()


def test_allowlist_configmap_defaults_to_the_built_in_list(render: Render) -> None:
    cm = render().one("ConfigMap", f"{FULLNAME}-allowlist")
    assert cm["data"]["allowlist.yaml"] == PACKAGE_ALLOWLIST.read_text()


def test_allowlist_from_values_as_text_or_map(render: Render) -> None:
    text = "agents:\n  - kubectl/*\n  - my-operator/*\n"
    cm = render({"allowlist": text}).one("ConfigMap", f"{FULLNAME}-allowlist")
    assert cm["data"]["allowlist.yaml"] == text
    as_map = {"agents": ["kubectl/*"], "denied": [{"reason": "no curl", "glob": "curl*"}]}
    cm = render({"allowlist": as_map}).one("ConfigMap", f"{FULLNAME}-allowlist")
    assert yaml.safe_load(cm["data"]["allowlist.yaml"]) == as_map


# --- NOTES.txt -------------------------------------------------------------------------------


def heredoc(notes: str, path: str) -> str:
    match = re.search(rf"cat > {re.escape(path)} <<EOF\n(.*?)\nEOF\n", notes, re.S)
    assert match, f"no heredoc for {path}"
    return match.group(1)


@pytest.mark.parametrize("values", [{}, {"tailer": {"enabled": True}, "replicas": 1}])
def test_notes_equal_what_helm_install_prints(
    notes: Notes, installed_notes: Notes, values: dict[str, Any]
) -> None:
    assert notes(values).strip() == installed_notes(values).strip()


def test_notes_give_batch_mode_flags_that_match_the_cli(notes: Notes) -> None:
    text = notes()
    flags = [line.strip() for line in text.splitlines() if line.strip().startswith("--audit-")]
    assert flags == apiserverconfig.apiserver_flags()
    assert "--audit-webhook-batch-max-wait=20ms" in flags
    assert "--audit-webhook-batch-throttle-enable=false" in flags
    assert "--audit-webhook-mode=blocking" not in text


def test_notes_policy_is_the_cli_policy(notes: Notes) -> None:
    text = notes()
    match = re.search(r"\n(apiVersion: audit\.k8s\.io/v1\n.*?)\n\n", text, re.S)
    assert match
    assert yaml.safe_load(match.group(1)) == yaml.safe_load(apiserverconfig.AUDIT_POLICY)


def test_notes_kubeconfig_is_the_cli_kubeconfig(notes: Notes) -> None:
    text = notes()
    dns = f"{FULLNAME}.{NAMESPACE}.svc"
    assert f"get service {FULLNAME} -o jsonpath='{{.spec.clusterIP}}'" in text
    assert f"get secret {FULLNAME}-tls -o jsonpath='{{.data.ca\\.crt}}'" in text
    assert f"get secret {FULLNAME}-audit-client -o jsonpath='{{.data.tls\\.key}}'" in text
    from webhook.tools import certs

    ca = certs.make_ca("ca")
    client = apiserverconfig.issue_audit_client(ca.cert_pem, ca.key_pem)
    expected = yaml.safe_load(
        apiserverconfig.audit_webhook_kubeconfig(
            service_ip="10.96.0.9",
            tls_server_name=dns,
            ca_pem=ca.cert_pem,
            client_cert_pem=client.cert_pem,
            client_key_pem=client.key_pem,
        )
    )
    user_data = expected["users"][0]["user"]
    shell = {
        "${SERVICE_IP}": "10.96.0.9",
        "${CA_DATA}": expected["clusters"][0]["cluster"]["certificate-authority-data"],
        "${CLIENT_CERT_DATA}": user_data["client-certificate-data"],
        "${CLIENT_KEY_DATA}": user_data["client-key-data"],
    }
    kubeconfig = heredoc(text, "/etc/kubernetes/ua-sentinel/audit-webhook.kubeconfig")
    for variable, value in shell.items():
        kubeconfig = kubeconfig.replace(variable, value)
    assert yaml.safe_load(kubeconfig) == expected


def test_notes_warn_about_unsafe_choices_only_when_made(notes: Notes) -> None:
    quiet = notes()
    assert "WARNING" not in quiet
    single = notes({"replicas": 1})
    assert "WARNING: replicas is 1" in single
    failing = notes({"webhook": {"failurePolicy": "Fail"}})
    assert "WARNING: webhook.failurePolicy is Fail" in failing
    open_audit = notes({"audit": {"requireClientCert": False}})
    assert "WARNING: audit.requireClientCert is false" in open_audit


def test_notes_explain_the_argo_cd_caveat_in_helm_mode(notes: Notes) -> None:
    text = notes()
    assert "Argo CD" in text and "certs.mode=cert-manager or certs.mode=secret" in text


def test_notes_for_the_tailer_give_the_log_flags(notes: Notes) -> None:
    text = notes({"tailer": {"enabled": True, "auditLogPath": "/var/log/kube/audit.log"}})
    flags = [line.strip() for line in text.splitlines() if line.strip().startswith("--audit-")]
    assert flags == apiserverconfig.apiserver_flags(audit_log_path="/var/log/kube/audit.log")
    assert "pod-security.kubernetes.io/enforce=privileged" in text


def test_notes_on_1_20_say_how_to_label_excluded_namespaces(notes: Notes) -> None:
    text = notes(kube_version="1.20.2")
    for namespace in ("kube-system", "kube-node-lease", NAMESPACE):
        assert f"kubectl label namespace {namespace} kubernetes.io/metadata.name={namespace}" in text
    assert "kubectl label namespace" not in notes()
