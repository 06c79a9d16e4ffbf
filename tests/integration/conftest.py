"""Fixtures for integration tests: a test PKI, and real `serve` processes stopped at test end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.server import PKI, ServeProcess, make_pki

Launch = Callable[..., ServeProcess]

AUDIT_GUARDS = ("--audit-client-ca", "--client-ca", "--audit-insecure")
"""The flags that say who may POST /audit; without one, serve answers every /audit with 403."""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _launcher(base: Path, pki: PKI, started: list[ServeProcess]) -> Launch:
    def launch(
        *args: str, cert: Path | None = None, key: Path | None = None, open_audit: bool = True, **env: str
    ) -> ServeProcess:
        # Most tests post audit events anonymously: they get an explicitly open /audit unless they
        # choose a guard themselves, or ask for serve's own default (open_audit=False).
        if open_audit and not any(flag in args for flag in AUDIT_GUARDS):
            args = (*args, "--audit-insecure")
        server = ServeProcess(
            base / f"serve-{len(started)}",
            cert=cert or pki.serving.cert,
            key=key or pki.serving.key,
            ca=pki.ca,
            args=args,
            env=env or None,
        )
        started.append(server)
        return server.start()

    return launch


@pytest.fixture
def launch(tmp_path: Path, pki: PKI) -> Iterator[Launch]:
    """``launch("--mode", "enforce", ...)`` starts `ua-sentinel serve`; all are stopped afterwards.

    ``/audit`` is open (``--audit-insecure``) unless the arguments name a guard (:data:`AUDIT_GUARDS`)
    or ``open_audit=False`` keeps serve's secure default."""
    started: list[ServeProcess] = []
    yield _launcher(tmp_path, pki, started)
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def launch_shared(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Launch]:
    """Like ``launch`` but the servers live for the whole module (tests must not change them)."""
    started: list[ServeProcess] = []
    yield _launcher(tmp_path_factory.mktemp("serve"), pki, started)
    for server in started:
        server.stop()
