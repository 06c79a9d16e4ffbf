"""`apiserver-config --distro`: each snippet parses as the format it claims and carries every flag
and the mounts the flags' files need. Talos's is validated against Talos's own JSON schema; kubeadm
has no Debian package and kind's Go types cannot be loaded here, so those are checked structurally."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from webhook.tools import certs
from webhook.tools.apiserver_config import AUDIT_POLICY, apiserver_flags
from webhook.tools.audit_policy import parse_policy
from webhook.tools.distros import DISTROS, render

CONFIG_DIR = "/etc/kubernetes/ua-sentinel"
LOG = "/var/log/kubernetes/audit/audit.log"
TALOS_SCHEMA = Path(__file__).parents[1] / "data" / "schemas" / "talos-v1.12-config.schema.json"


def flags(audit_log_path: str | None = None) -> dict[str, str]:
    pairs = (
        f.removeprefix("--").partition("=")
        for f in apiserver_flags(config_dir=CONFIG_DIR, audit_log_path=audit_log_path)
    )
    return {name: value for name, _, value in pairs}


def docs(distro: str, **kw: Any) -> list[Any]:
    return list(yaml.safe_load_all(render(distro, config_dir=CONFIG_DIR, policy=AUDIT_POLICY, **kw)))  # type: ignore[arg-type]


def under(path: str, directories: list[str]) -> bool:
    return any(posixpath.commonpath([path, d]) == d for d in directories)


def file_flags_are_mounted(args: dict[str, str], mounted: list[str]) -> None:
    for name in ("audit-policy-file", "audit-webhook-config-file", "audit-log-path"):
        if name in args:
            assert under(args[name], mounted), (
                f"{name}={args[name]} is not under a mounted directory {mounted}"
            )


@pytest.mark.parametrize("distro", DISTROS)
def test_every_snippet_is_yaml_with_its_sources_cited(distro: str) -> None:
    text = render(distro, config_dir=CONFIG_DIR, policy=AUDIT_POLICY)  # type: ignore[arg-type]
    assert list(yaml.safe_load_all(text))
    assert re.search(r"^# https://", text, re.M), "cites the distribution's documentation"


def test_kubeadm_v1beta4_cluster_configuration_and_static_pod_additions() -> None:
    cluster, static_pod = docs("kubeadm", audit_log_path=LOG)
    assert cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4" and cluster["kind"] == "ClusterConfiguration"
    extra = cluster["apiServer"]["extraArgs"]
    assert all(set(a) == {"name", "value"} and isinstance(a["value"], str) for a in extra)  # v1beta4 Arg
    args = {a["name"]: a["value"] for a in extra}
    assert args == flags(LOG)
    volumes = cluster["apiServer"]["extraVolumes"]
    for v in volumes:
        assert set(v) == {"name", "hostPath", "mountPath", "readOnly", "pathType"}
    assert {v["mountPath"]: v["readOnly"] for v in volumes} == {
        CONFIG_DIR: True,
        posixpath.dirname(LOG): False,
    }
    file_flags_are_mounted(args, [v["mountPath"] for v in volumes])

    (container,) = static_pod["spec"]["containers"]
    assert container["name"] == "kube-apiserver"
    assert container["command"] == apiserver_flags(config_dir=CONFIG_DIR, audit_log_path=LOG)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pod_volumes = {v["name"]: v["hostPath"]["path"] for v in static_pod["spec"]["volumes"]}
    assert mounts == pod_volumes  # each mount has its volume, host and container path alike


def test_k3s_config_file_and_the_same_as_flags() -> None:
    text = render("k3s", config_dir=CONFIG_DIR, policy=AUDIT_POLICY, audit_log_path=LOG)
    (doc,) = yaml.safe_load_all(text)
    assert set(doc) == {"kube-apiserver-arg"}
    assert dict(a.partition("=")[::2] for a in doc["kube-apiserver-arg"]) == flags(LOG)
    (line,) = [line for line in text.splitlines() if line.startswith("# The same as flags: ")]
    argv = shlex.split(line.removeprefix("# The same as flags: "))
    assert argv[:2] == ["k3s", "server"]
    assert [a.removeprefix("--kube-apiserver-arg=") for a in argv[2:]] == doc["kube-apiserver-arg"]


def test_rke2_config_with_its_own_policy_key_and_a_read_only_mount() -> None:
    (doc,) = docs("rke2", audit_log_path=LOG)
    assert set(doc) == {"audit-policy-file", "kube-apiserver-arg", "kube-apiserver-extra-mount"}
    args = dict(a.partition("=")[::2] for a in doc["kube-apiserver-arg"])
    assert args == {k: v for k, v in flags().items() if k != "audit-policy-file"}  # RKE2 keeps its log
    mounts = doc["kube-apiserver-extra-mount"]
    assert all(re.fullmatch(r"/[^:]+:/[^:]+(:ro)?", m) for m in mounts)  # HOST:CONTAINER[:ro]
    file_flags_are_mounted(
        {**args, "audit-policy-file": doc["audit-policy-file"]}, [m.split(":")[1] for m in mounts]
    )


@pytest.fixture(scope="module")
def talos_config_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(TALOS_SCHEMA.read_text())
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/v1alpha1.Config"}


def test_talos_patch_validates_against_talos_schema(talos_config_schema: dict[str, Any]) -> None:
    merged_policy = Path(__file__).parents[1] / "data" / "policies" / "realistic.yaml"
    for policy, kubeconfig in (
        (AUDIT_POLICY, None),
        (merged_policy.read_text(), "apiVersion: v1\nkind: Config\n"),
    ):
        text = render("talos", config_dir=CONFIG_DIR, policy=policy, kubeconfig=kubeconfig)
        (doc,) = yaml.safe_load_all(text)
        jsonschema.validate(doc, talos_config_schema)
        api = doc["cluster"]["apiServer"]
        assert parse_policy(
            yaml.safe_dump(api["auditPolicy"])
        )  # the policy inline, as the apiserver reads it
        file_flags_are_mounted(api["extraArgs"], [v["mountPath"] for v in api["extraVolumes"]])
        (file,) = doc["machine"]["files"]
        assert file["path"].startswith("/var/") and file["permissions"] == 0o600
        assert posixpath.dirname(file["path"]) == api["extraVolumes"][0]["hostPath"]
    assert doc["machine"]["files"][0]["content"] == "apiVersion: v1\nkind: Config\n"


def test_the_talos_schema_catches_a_wrong_key(talos_config_schema: dict[str, Any]) -> None:
    (doc,) = docs("talos")
    doc["cluster"]["apiServer"]["extraVolumes"][0]["readOnly"] = True  # Talos spells it readonly
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, talos_config_schema)


def test_kind_cluster_mounts_the_files_into_the_node_and_the_apiserver() -> None:
    (cluster,) = docs("kind")
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = cluster["nodes"]
    assert node["role"] == "control-plane"
    (patch_text,) = node["kubeadmConfigPatches"]
    patch = yaml.safe_load(patch_text)
    assert patch["kind"] == "ClusterConfiguration"
    assert patch["apiServer"]["extraArgs"] == flags()
    node_dirs = [m["containerPath"] for m in node["extraMounts"]]
    volumes = patch["apiServer"]["extraVolumes"]
    assert all(under(v["hostPath"], node_dirs) for v in volumes if v["readOnly"])  # node has the files
    file_flags_are_mounted(patch["apiServer"]["extraArgs"], [v["mountPath"] for v in volumes])


def test_cli_talos_with_certificates_inlines_the_kubeconfig(tmp_path: Path) -> None:
    ca = certs.make_ca("local")
    certs.write_pair(ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    args = ["--distro", "talos", "--service-ip", "10.96.0.50", "--certs-dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "apiserver-config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (doc,) = yaml.safe_load_all(result.stdout)
    kubeconfig = yaml.safe_load(doc["machine"]["files"][0]["content"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.96.0.50:443/audit"
