"""Enforce mode on the real apiserver 1.20 against the walk-arounds of issue 12 (items 1, 2, 4):
a create that arrives as server-side apply or as a PUT, a write under `kubectl --as`, and an
object nested deeper than the parsers recurse. Each is judged like a plain POST by the same agent.

The real `ua-sentinel serve` is wired as in test_serve.py (audit webhook in batch mode plus a
ValidatingWebhookConfiguration, failurePolicy Ignore: an unjudged write would go through).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from .harness import ControlPlane
from .procs import wait_until
from .test_serve import LISTED, Wired, wired  # noqa: F401  (the fixture, shared)

PYTHON = "python-requests/2.31.0"
KUBECTL_AGENT = "kubectl/v1.20.2 (linux/amd64) kubernetes/faecb19"
DENIED = "denied the request"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _grant(
    cp: ControlPlane, name: str, subject: str, rules: list[dict[str, Any]], *, cluster: bool = False
) -> None:
    """A Role (or ClusterRole) with `rules`, bound to user `subject`; waits until RBAC sees it."""
    kind, scope = ("ClusterRole", {}) if cluster else ("Role", {"namespace": "team"})
    cp.apply_yaml(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": name, **scope},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": f"{kind}Binding",
                "metadata": {"name": name, **scope},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}],
            },
        ]
    )


def _may(cp: ControlPlane, user: str, verb: str, resource: str, *extra: str) -> bool:
    result = cp.kubectl(user, "auth", "can-i", verb, resource, "-n", "team", *extra, check=False)
    return result.stdout.strip() == "yes"


def _exists(cp: ControlPlane, resource: str, name: str) -> bool:
    return cp.kubectl("admin", "get", resource, name, "-n", "team", check=False).returncode == 0


def _configmap(name: str) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "team"}}
    )


def test_server_side_apply_and_put_creates_are_judged_like_a_post(wired: Wired) -> None:  # noqa: F811
    _, cp = wired(mode="enforce")
    _grant(
        cp,
        "apply",
        "dev-alice",
        [
            {
                "apiGroups": [""],
                "resources": ["configmaps", "endpoints"],
                "verbs": ["patch", "update", "create"],
            }
        ],
    )
    wait_until(lambda: _may(cp, "dev-alice", "update", "endpoints"), timeout=30, what="the Role to apply")

    # kubectl's own server-side apply, under a renamed (unlisted) binary: audit verb `patch`.
    name = _unique("ssa")
    applied = cp.kubectl(
        "dev-alice",
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=_configmap(name),
        user_agent="kc-renamed",
        check=False,
    )
    assert applied.returncode != 0 and DENIED in applied.stderr and "kc-renamed" in applied.stderr
    assert not _exists(cp, "configmap", name)

    # A raw apply PATCH by a script.
    name = _unique("raw")
    raw = cp.request(
        "dev-alice",
        "PATCH",
        f"/api/v1/namespaces/team/configmaps/{name}?fieldManager=x",
        user_agent=PYTHON,
        content=yaml.safe_dump(json.loads(_configmap(name))),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert raw.status_code == 403 and PYTHON in raw.json()["message"], raw.text
    assert not _exists(cp, "configmap", name)

    # An update that creates (Endpoints allow create on PUT): audit verb `update`.
    name = _unique("put")
    put = cp.request(
        "dev-alice",
        "PUT",
        f"/api/v1/namespaces/team/endpoints/{name}",
        user_agent=PYTHON,
        json={"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "team"}},
    )
    assert put.status_code == 403 and PYTHON in put.json()["message"], put.text
    assert not _exists(cp, "endpoints", name)

    # The listed kubectl applies the same way and is let through.
    name = _unique("ssa-ok")
    cp.kubectl("dev-alice", "apply", "--server-side", "-f", "-", stdin=_configmap(name))
    assert _exists(cp, "configmap", name)


def test_impersonated_writes_are_judged_and_scopes_match_the_authenticated_user(
    wired: Wired,  # noqa: F811
    tmp_path: Path,
) -> None:
    allowlist = tmp_path / "scoped.yaml"
    allowlist.write_text(
        yaml.safe_dump({"agents": [*LISTED, {"glob": "kc-scoped/*", "users": ["dev-alice"]}]})
    )
    _, cp = wired(mode="enforce", allowlist=allowlist)
    _grant(
        cp,
        "impersonate-alice",
        "mallory",
        [
            {
                "apiGroups": [""],
                "resources": ["users"],
                "verbs": ["impersonate"],
                "resourceNames": ["dev-alice"],
            }
        ],
        cluster=True,
    )
    wait_until(
        lambda: _may(cp, "mallory", "impersonate", "users/dev-alice"),
        timeout=30,
        what="mallory's impersonate right",
    )

    def as_alice(name: str, agent: str | None) -> Any:
        return cp.kubectl(
            "mallory",
            "--as",
            "dev-alice",
            "create",
            "configmap",
            name,
            "-n",
            "team",
            user_agent=agent,
            check=False,
        )

    unlisted = _unique("imp-unlisted")
    refused = as_alice(unlisted, "kc-renamed")
    assert refused.returncode != 0 and DENIED in refused.stderr and "kc-renamed" in refused.stderr
    assert not _exists(cp, "configmap", unlisted)

    listed = _unique("imp-listed")
    assert as_alice(listed, None).returncode == 0
    assert _exists(cp, "configmap", listed)

    # kc-scoped is listed for dev-alice only: dev-alice herself may use it, mallory as dev-alice may not.
    cp.kubectl(
        "dev-alice", "create", "configmap", _unique("scoped-own"), "-n", "team", user_agent="kc-scoped"
    )
    scoped = _unique("imp-scoped")
    borrowed = as_alice(scoped, "kc-scoped")
    assert borrowed.returncode != 0 and DENIED in borrowed.stderr
    assert not _exists(cp, "configmap", scoped)


def _revision(name: str, depth: int) -> bytes:
    """A ControllerRevision whose ``data`` (free-form JSON: a RawExtension) nests ``depth`` deep."""
    head = {"apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": 1}
    head["metadata"] = {"name": name, "namespace": "team"}
    nested = b"[" * depth + b"]" * depth
    return json.dumps(head).encode()[:-1] + b', "data": {"nested": ' + nested + b"}}"


def test_an_object_nested_thousands_of_levels_deep_is_judged(wired: Wired) -> None:  # noqa: F811
    """The apiserver itself accepts JSON up to Go's 10,000 levels (20,000 is refused: measured)."""
    server, cp = wired(mode="enforce")
    _grant(
        cp,
        "revisions",
        "dev-alice",
        [{"apiGroups": ["apps"], "resources": ["controllerrevisions"], "verbs": ["create"]}],
    )
    wait_until(
        lambda: _may(cp, "dev-alice", "create", "controllerrevisions.apps"), timeout=30, what="the Role"
    )
    path = "/apis/apps/v1/namespaces/team/controllerrevisions"
    headers = {"Content-Type": "application/json"}

    for depth in (300, 5_000):
        name = _unique(f"deep{depth}")
        refused = cp.request(
            "dev-alice", "POST", path, user_agent=PYTHON, content=_revision(name, depth), headers=headers
        )
        assert refused.status_code == 403 and PYTHON in refused.json()["message"], refused.text[:500]
        assert not _exists(cp, "controllerrevision", name)

        name = _unique(f"deep{depth}-ok")
        created = cp.request(
            "dev-alice",
            "POST",
            path,
            user_agent=KUBECTL_AGENT,
            content=_revision(name, depth),
            headers=headers,
        )
        assert created.status_code == 201, created.text[:500]
    # No review was refused as unreadable along the way.
    with server.client() as client:
        metrics = client.get("/metrics").text
    refused = [line for line in metrics.splitlines() if line.startswith("ua_sentinel_admission_errors_total")]
    assert all(line.endswith(" 0.0") for line in refused if "bad_request" in line), refused
