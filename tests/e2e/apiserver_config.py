"""What the e2e apiserver is configured with: users, RBAC objects, kubeconfigs, admission config.

The audit policy, audit webhook kubeconfig and audit flags are the product's own
(`webhook.tools.apiserver_config`, i.e. `ua-sentinel apiserver-config`), so e2e runs check them too.

Pure data and builders (no processes); `harness.ControlPlane` writes them to files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .pki import KeyPair

__all__ = [
    "RBAC_MANIFESTS",
    "TEAM_NAMESPACE",
    "USERS",
    "User",
    "admission_configuration",
    "client_cert_credentials",
    "kubeconfig",
    "token_file",
    "webhook_client_kubeconfig",
    "write_yaml",
]

TEAM_NAMESPACE = "team"


@dataclass(frozen=True)
class User:
    name: str
    uid: str
    groups: tuple[str, ...]


USERS: Mapping[str, User] = {
    u.name: u
    for u in (
        User("admin", "1001", ("system:masters",)),
        User("dev-alice", "1003", ("devs",)),
        User("mallory", "1002", ("devs",)),  # same identities as the recorded fixtures
    )
}

RBAC_MANIFESTS: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEAM_NAMESPACE}},
    {  # no controller-manager runs, so nothing would create it; no token controller either
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": TEAM_NAMESPACE},
        "automountServiceAccountToken": False,
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "cm-editor", "namespace": TEAM_NAMESPACE},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "list", "watch", "create", "update", "delete"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "alice-cm", "namespace": TEAM_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-editor"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev-alice"}],
    },
]


def token_file(tokens: Mapping[str, str]) -> str:
    """--token-auth-file contents: `token,user,uid,"group1,group2"` for each of USERS."""
    lines = [f'{tokens[u.name]},{u.name},{u.uid},"{",".join(u.groups)}"' for u in USERS.values()]
    return "\n".join(lines) + "\n"


def client_cert_credentials(pair: KeyPair | None) -> dict[str, str]:
    return {} if pair is None else {"client-certificate": str(pair.cert), "client-key": str(pair.key)}


def kubeconfig(server: str, ca: Path | None, user: str, credentials: Mapping[str, str]) -> dict[str, Any]:
    """A one-cluster, one-user kubeconfig."""
    cluster: dict[str, str] = {"server": server}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": dict(credentials)}],
        "contexts": [{"name": "default", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "default",
    }


def webhook_client_kubeconfig(client_cert: KeyPair) -> dict[str, Any]:
    """Credentials the apiserver presents to admission webhooks; user `*` matches every host."""
    users = [{"name": "*", "user": client_cert_credentials(client_cert)}]
    return {"apiVersion": "v1", "kind": "Config", "users": users}


def admission_configuration(webhook_kubeconfig: Path) -> dict[str, Any]:
    """--admission-control-config-file giving both webhook plugins `webhook_kubeconfig`."""
    plugin_config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "WebhookAdmissionConfiguration",
        "kubeConfigFile": str(webhook_kubeconfig),
    }
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [
            {"name": name, "configuration": plugin_config}
            for name in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")
        ],
    }


def write_yaml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path
