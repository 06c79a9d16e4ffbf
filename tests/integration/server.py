"""`ua-sentinel serve` as a real process on 127.0.0.1 (port 0: the kernel picks a free one).

The server logs `{"msg": "listening", "port": N}` on stderr once its socket listens; that is how
the port is learnt, without racing another process for a pre-picked port.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from webhook.tools import certs

__all__ = ["PKI", "KeyPair", "ServeProcess", "make_pki", "wait_for"]

START_TIMEOUT = 30.0


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    """Serving chain, the apiserver's client chain, and a stranger's client chain."""

    ca: Path
    serving: KeyPair
    client_ca: Path
    apiserver: KeyPair
    audit_ca: Path
    audit: KeyPair
    stranger: KeyPair
    directory: Path


def _pair(pair: certs.CertPair, directory: Path, name: str) -> KeyPair:
    out = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    certs.write_pair(pair, out.cert, out.key)
    return out


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.make_ca("test serving CA")
    client_ca = certs.make_ca("test apiserver client CA")
    audit_ca = certs.make_ca("test audit client CA")
    stranger_ca = certs.make_ca("someone else's CA")
    for name, pair in (("ca", ca), ("client-ca", client_ca), ("audit-ca", audit_ca)):
        certs.write_pair(pair, directory / f"{name}.crt", directory / f"{name}.key")
    return PKI(
        ca=directory / "ca.crt",
        serving=_pair(certs.issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1"]), directory, "tls"),
        client_ca=directory / "client-ca.crt",
        apiserver=_pair(certs.issue(client_ca, "kube-apiserver", client=True), directory, "apiserver"),
        audit_ca=directory / "audit-ca.crt",
        audit=_pair(certs.issue(audit_ca, "kube-apiserver-audit", client=True), directory, "audit"),
        stranger=_pair(certs.issue(stranger_ca, "stranger", client=True), directory, "stranger"),
        directory=directory,
    )


def wait_for(probe: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ServeProcess:
    """One `python -m webhook serve` process; stdout (findings) and stderr (logs) go to files."""

    def __init__(
        self,
        workdir: Path,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.ca = ca
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / "stdout.jsonl"
        self.stderr_path = workdir / "stderr.log"
        self.argv = [
            sys.executable,
            "-m",
            "webhook",
            "serve",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ServeProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

        def listening() -> int | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}:\n{self.stderr}")
            for line in self.logs():
                if line.get("msg") == "listening":
                    return int(line["port"])
            return None

        try:
            self.port = wait_for(listening, timeout=START_TIMEOUT, what="serve to listen")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self) -> list[dict[str, Any]]:
        """Complete JSON log lines so far (each must parse: logs are structured)."""
        text = self.stderr
        complete, _, _ = text.rpartition("\n")
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def findings(self) -> list[dict[str, Any]]:
        text = self.stdout_path.read_text() if self.stdout_path.exists() else ""
        complete, _, _ = text.rpartition("\n")
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def ssl_context(self, client: KeyPair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context

    def client(self, client: KeyPair | None = None, **options: Any) -> httpx.Client:
        """An HTTPS client trusting the serving CA, presenting ``client`` when given (keep-alive)."""
        options.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, verify=self.ssl_context(client), **options)

    def metric(self, name: str, **labels: str) -> float | None:
        """The samples of GET /metrics with ``name`` (as exposed, e.g. ``..._total``) and ``labels``,
        summed over the labels not given (as PromQL's ``sum``), or None when there is none."""
        with self.client() as client:
            text = client.get("/metrics").text
        values = [
            float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``; returns the exit status."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)
