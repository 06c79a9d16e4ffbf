"""Fixtures for the hardening suite: a test PKI and real `ua-sentinel serve` processes on 127.0.0.1.

Everything started here is stopped at test end (servers by SIGTERM then SIGKILL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.server import PKI, ServeProcess, make_pki

Launch = Callable[..., ServeProcess]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _launcher(base: Path, pki: PKI, started: list[ServeProcess]) -> Launch:
    def launch(*args: str, cert: Path | None = None, key: Path | None = None, **env: str) -> ServeProcess:
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
    """``launch("--mode", "enforce", ...)`` starts `ua-sentinel serve`; all are stopped afterwards."""
    started: list[ServeProcess] = []
    yield _launcher(tmp_path, pki, started)
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def launch_shared(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Launch]:
    """Like ``launch`` but the servers live for the whole module."""
    started: list[ServeProcess] = []
    yield _launcher(tmp_path_factory.mktemp("serve"), pki, started)
    for server in started:
        server.stop()
