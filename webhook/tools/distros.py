"""The kube-apiserver flags and mounts in each distribution's own format (``--distro``).

Every distribution starts the apiserver its own way, so the same six flags (and the directory
holding the policy and the webhook kubeconfig) are written where that distribution reads them.
Each key comes from the distribution's documentation, cited in the output:

- kubeadm: ``ClusterConfiguration`` ``apiServer.extraArgs`` + ``extraVolumes`` in
  ``kubeadm.k8s.io/v1beta4`` (current since Kubernetes 1.31; extraArgs became a list of
  name/value, v1beta3 had a map), and the lines to add to the running static pod
  (``/etc/kubernetes/manifests/kube-apiserver.yaml``).
- k3s: the apiserver runs inside the k3s process, so no mount: ``kube-apiserver-arg`` in
  ``/etc/rancher/k3s/config.yaml`` (or ``--kube-apiserver-arg`` flags).
- RKE2: ``audit-policy-file``, ``kube-apiserver-arg`` and ``kube-apiserver-extra-mount``
  (``HOST:CONTAINER:ro``) in ``/etc/rancher/rke2/config.yaml``; RKE2 writes the audit log itself.
- Talos: ``cluster.apiServer.auditPolicy`` (Talos writes the policy file and the log itself),
  ``extraArgs`` (a map), ``extraVolumes``, and ``machine.files`` for the kubeconfig (only /var
  is writable).
- kind: a ``kind.x-k8s.io/v1alpha4`` Cluster with ``kubeadmConfigPatches`` (extraArgs as a map,
  as kind's auditing guide writes it) and the node's ``extraMounts``.
"""

from __future__ import annotations

import posixpath
from typing import Any, Final, Literal, get_args

import yaml

from webhook.tools.apiserver_config import KUBECONFIG_FILE, POLICY_FILE, apiserver_flags

__all__ = ["DISTROS", "Distro", "render"]

Distro = Literal["kubeadm", "k3s", "rke2", "talos", "kind"]
DISTROS: Final[tuple[Distro, ...]] = get_args(Distro)
TALOS_HOST_DIR = "/var/etc/ua-sentinel"  # Talos: machine.files may only write under /var
KIND_HOST_DIR = "./ua-sentinel"  # kind: where `apiserver-config --out-dir` wrote the two files


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a kubeconfig, a kubeadm patch) as ``|`` blocks, as people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1 << 16)


def _args(flags: list[str]) -> list[tuple[str, str]]:
    return [(f.removeprefix("--").partition("=")[0], f.partition("=")[2]) for f in flags]


def _volumes(config_dir: str, audit_log_path: str | None) -> list[tuple[str, str, bool]]:
    """(name, directory, read-only) the apiserver container needs from the host."""
    volumes = [("ua-sentinel", config_dir, True)]
    if audit_log_path:
        volumes.append(("ua-sentinel-audit-log", posixpath.dirname(audit_log_path) or "/", False))
    return volumes


def _kubeadm(config_dir: str, audit_log_path: str | None) -> str:
    args = _args(apiserver_flags(config_dir=config_dir, audit_log_path=audit_log_path))
    volumes = _volumes(config_dir, audit_log_path)
    cluster = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "apiServer": {
            "extraArgs": [{"name": n, "value": v} for n, v in args],
            "extraVolumes": [
                {
                    "name": name,
                    "hostPath": path,
                    "mountPath": path,
                    "readOnly": ro,
                    "pathType": "DirectoryOrCreate",
                }
                for name, path, ro in volumes
            ],
        },
    }
    static_pod = {
        "spec": {
            "containers": [
                {
                    "name": "kube-apiserver",
                    "command": [f"--{n}={v}" for n, v in args],
                    "volumeMounts": [{"name": n, "mountPath": p, "readOnly": ro} for n, p, ro in volumes],
                }
            ],
            "volumes": [
                {"name": n, "hostPath": {"path": p, "type": "DirectoryOrCreate"}} for n, p, ro in volumes
            ],
        }
    }
    return (
        "# kubeadm: merge into your ClusterConfiguration (kubeadm init/upgrade --config, or\n"
        "# `kubectl -n kube-system edit configmap kubeadm-config` so upgrades keep it).\n"
        "# kubeadm.k8s.io/v1beta4 (current since Kubernetes 1.31): extraArgs is a list of name/value;\n"
        "# with v1beta3 write it as a map (NAME: VALUE).\n"
        "# https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/\n"
        "# https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/control-plane-flags/\n"
        + _yaml(cluster)
        + "---\n"
        "# A running cluster: APPEND these to the lists of /etc/kubernetes/manifests/kube-apiserver.yaml\n"
        "# on every control-plane node (the kubelet restarts the static pod when the file changes).\n"
        + _yaml(static_pod)
    )


def _k3s(config_dir: str, audit_log_path: str | None) -> str:
    flags = apiserver_flags(config_dir=config_dir, audit_log_path=audit_log_path)
    args = [f"{n}={v}" for n, v in _args(flags)]
    cli = " ".join(f"--kube-apiserver-arg={a}" for a in args)
    return (
        "# k3s: /etc/rancher/k3s/config.yaml on every server node, then `systemctl restart k3s`.\n"
        "# The apiserver runs inside the k3s process: no mount needed.\n"
        "# https://docs.k3s.io/cli/server#customized-flags-for-kubernetes-processes\n"
        "# https://docs.k3s.io/installation/configuration#configuration-file\n"
        f"# The same as flags: k3s server {cli}\n" + _yaml({"kube-apiserver-arg": args})
    )


def _rke2(config_dir: str, audit_log_path: str | None) -> str:
    flags = apiserver_flags(config_dir=config_dir)
    args = [f"{n}={v}" for n, v in _args(flags) if n != "audit-policy-file"]
    doc = {
        "audit-policy-file": f"{config_dir}/{POLICY_FILE}",
        "kube-apiserver-arg": args,
        "kube-apiserver-extra-mount": [f"{config_dir}:{config_dir}:ro"],
    }
    note = (
        "# RKE2 already writes the audit log (/var/lib/rancher/rke2/server/logs/audit.log): point the\n"
        "# tailer there; --audit-log-path is not changed.\n"
        if audit_log_path
        else ""
    )
    return (
        "# RKE2: /etc/rancher/rke2/config.yaml on every server node, then `systemctl restart rke2-server`.\n"
        "# RKE2 has an audit policy of its own (/etc/rancher/rke2/audit-policy.yaml): merge it first,\n"
        "# `ua-sentinel apiserver-config --policy /etc/rancher/rke2/audit-policy.yaml`.\n"
        "# https://docs.rke2.io/reference/server_config (audit-policy-file, kube-apiserver-arg)\n"
        "# https://docs.rke2.io/advanced#extra-control-plane-component-volume-mounts (HOST:CONTAINER:ro)\n"
        + note
        + _yaml(doc)
    )


def _talos(config_dir: str, policy: str, kubeconfig: str | None) -> str:
    flags = apiserver_flags(config_dir=config_dir)
    args = {n: v for n, v in _args(flags) if n != "audit-policy-file"}
    content = (
        kubeconfig or "CONTENTS OF audit-webhook.kubeconfig (ua-sentinel apiserver-config --service-ip ...)"
    )
    doc = {
        "machine": {
            "files": [
                {
                    "content": content,
                    "permissions": 0o600,
                    "path": f"{TALOS_HOST_DIR}/{KUBECONFIG_FILE}",
                    "op": "create",
                }
            ]
        },
        "cluster": {
            "apiServer": {
                "extraArgs": args,
                "extraVolumes": [{"hostPath": TALOS_HOST_DIR, "mountPath": config_dir, "readonly": True}],
                "auditPolicy": yaml.safe_load(policy),
            }
        },
    }
    return (
        "# Talos: a machine config patch for the control-plane nodes\n"
        "# (talosctl patch machineconfig --nodes CP1,CP2,CP3 --patch @ua-sentinel.yaml).\n"
        "# Talos writes the audit policy (cluster.apiServer.auditPolicy) and the audit log\n"
        "# (/var/log/audit/kube/kube-apiserver.log) itself. permissions 384 = 0o600.\n"
        "# https://www.talos.dev/v1.12/reference/configuration/v1alpha1/config/ (apiServer, files)\n"
        + _yaml(doc)
    )


def _kind(config_dir: str, audit_log_path: str | None) -> str:
    args = dict(_args(apiserver_flags(config_dir=config_dir, audit_log_path=audit_log_path)))
    volumes = _volumes(config_dir, audit_log_path)
    patch = {
        "kind": "ClusterConfiguration",
        "apiServer": {
            "extraArgs": args,
            "extraVolumes": [
                {
                    "name": name,
                    "hostPath": path,
                    "mountPath": path,
                    "readOnly": ro,
                    "pathType": "DirectoryOrCreate",
                }
                for name, path, ro in volumes
            ],
        },
    }
    mounts = [{"hostPath": KIND_HOST_DIR, "containerPath": config_dir, "readOnly": True}]
    cluster = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [
            {
                "role": "control-plane",
                "extraMounts": mounts,
                "kubeadmConfigPatches": [_yaml(patch)],
            }
        ],
    }
    return (
        "# kind: `kind create cluster --config kind-ua-sentinel.yaml`, run where `ua-sentinel\n"
        f"# apiserver-config --out-dir {KIND_HOST_DIR}` wrote the two files (extraMounts puts them in\n"
        "# the node, extraVolumes in the apiserver pod). The apiserver needs the kubeconfig at start,\n"
        "# before the chart exists: give --service-ip a free address of the service range (kind:\n"
        "# 10.96.0.0/16) and install the chart with --set service.clusterIP=THAT; batch mode drops the\n"
        "# events until the Service answers, and the cluster keeps working.\n"
        "# https://kind.sigs.k8s.io/docs/user/auditing/  https://kind.sigs.k8s.io/docs/user/configuration/\n"
        + _yaml(cluster)
    )


def render(
    distro: Distro,
    *,
    config_dir: str,
    audit_log_path: str | None = None,
    policy: str,
    kubeconfig: str | None = None,
) -> str:
    """What ``distro`` needs, as text in its own format (YAML, with the sources in comments).

    ``policy`` is inlined where the distribution takes it inline (Talos); ``kubeconfig`` too,
    when known (Talos writes files only from its machine config)."""
    config_dir = config_dir.rstrip("/") or "/"
    if distro == "kubeadm":
        return _kubeadm(config_dir, audit_log_path)
    if distro == "k3s":
        return _k3s(config_dir, audit_log_path)
    if distro == "rke2":
        return _rke2(config_dir, audit_log_path)
    if distro == "talos":
        return _talos(config_dir, policy, kubeconfig)
    return _kind(config_dir, audit_log_path)
