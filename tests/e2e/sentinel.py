"""ua-sentinel as a real subprocess (serve, tail, replay) for scenario tests.

Findings are JSON lines on the process's stdout (`rule.name`, `user.name`, `user_agent.original`);
its logs go to stderr. Both land in files under the process's work directory.

    server = SentinelServer(workdir, tls, allowlist=write_allowlist(path, ["kubectl/*"]))
    cp = control_plane_factory(audit_webhook_url=server.audit_url, webhook_ca=tls.ca,
                               client_cert=tls.apiserver_client)   # the port is picked up front
    server.start()
    server.wait_for_finding(lambda f: f["user"]["name"] == "mallory")
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from .procs import ManagedProcess, free_port, wait_until
from .webhooks import SENTINEL, WebhookTLS

__all__ = [
    "Finding",
    "Sentinel",
    "SentinelLauncher",
    "SentinelServer",
    "parse_findings",
    "run_replay",
    "write_allowlist",
]

Finding = dict[str, Any]
Mode = Literal["observe", "warn", "enforce"]
START_TIMEOUT_S = 30.0


def write_allowlist(path: Path, agents: Sequence[str], denied: Sequence[str] = ()) -> Path:
    """An allowlist file (`agents:` globs, optional `denied:` globs)."""
    doc: dict[str, list[str]] = {"agents": list(agents)}
    if denied:
        doc["denied"] = list(denied)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def parse_findings(text: str) -> list[Finding]:
    """Complete JSON lines of `text`; a trailing partial line is ignored, anything else must parse."""
    complete, _, _partial = text.rpartition("\n")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def run_replay(allowlist: Path, logs: Sequence[Path], timeout: float = 120.0) -> list[Finding]:
    """`ua-sentinel replay --allowlist FILE LOG...`; raises with stderr when it fails."""
    done = subprocess.run(
        [SENTINEL, "replay", "--allowlist", str(allowlist), *map(str, logs)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ua-sentinel replay exited {done.returncode}:\n{done.stderr}")
    return parse_findings(done.stdout)


class Sentinel:
    """`ua-sentinel <args>` in its own process group; a context manager."""

    def __init__(self, workdir: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            f"ua-sentinel {args[0]}",
            [str(SENTINEL), *args],
            stdout_path=workdir / "stdout.jsonl",
            stderr_path=workdir / "stderr.log",
            env=env,
        )

    def __enter__(self) -> Sentinel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sentinel:
        self.process.start()
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    @property
    def stderr(self) -> str:
        path = self.process.stderr_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """Its JSON log lines on stderr (complete ones; anything else, e.g. a traceback, skipped)."""
        records = []
        for line in self.stderr.rpartition("\n")[0].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 15.0, what: str = "a log line"
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            return next((r for r in self.log_records() if predicate(r)), None)

        return wait_until(probe, timeout=timeout, what=what, interval=0.1, alive=self.process.check_alive)

    def findings(self) -> list[Finding]:
        path = self.process.stdout_path
        return parse_findings(path.read_text()) if path.exists() else []

    def wait_for_finding(
        self, predicate: Callable[[Finding], bool], *, timeout: float = 15.0, what: str = "a finding"
    ) -> Finding:
        def probe() -> Finding | None:
            return next((f for f in self.findings() if predicate(f)), None)

        return wait_until(probe, timeout=timeout, what=what, interval=0.1, alive=self.process.check_alive)


class SentinelServer(Sentinel):
    """`ua-sentinel serve` on 127.0.0.1 with TLS; its port is chosen when it is constructed
    (or given, when the apiserver must be configured before the server can be).

    With `client_auth`, /validate and /audit require the apiserver's client certificate
    (`--client-ca` and `--audit-client-ca` = tls.client_ca); without it /audit is open
    (`--audit-insecure`) unless `extra_args` name `--audit-client-ca`.
    """

    def __init__(
        self,
        workdir: Path,
        tls: WebhookTLS,
        *,
        allowlist: Path | None = None,
        allowlist_configmap: str | None = None,  # NS/NAME; then pass `kubeconfig`
        mode: Mode | None = None,
        client_auth: bool = True,
        join_wait: float | None = None,
        kubeconfig: Path | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if (allowlist is None) == (allowlist_configmap is None):
            raise ValueError("give exactly one of allowlist= and allowlist_configmap=")
        self.tls = tls
        self.port = port if port is not None else free_port()
        args = ["serve", "--tls-cert", str(tls.serving.cert), "--tls-key", str(tls.serving.key)]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        if allowlist is not None:
            args += ["--allowlist", str(allowlist)]
        else:
            args += ["--allowlist-configmap", str(allowlist_configmap)]
        if client_auth:
            args += ["--client-ca", str(tls.client_ca), "--audit-client-ca", str(tls.client_ca)]
        elif "--audit-client-ca" not in extra_args:
            args += ["--audit-insecure"]  # no guard asked for: /audit open on purpose
        if mode is not None:
            args += ["--mode", mode]
        if join_wait is not None:
            args += ["--join-wait", str(join_wait)]
        env = None if kubeconfig is None else {**os.environ, "KUBECONFIG": str(kubeconfig)}
        super().__init__(workdir, [*args, *extra_args], env=env)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def validate_url(self) -> str:
        return f"{self.url}/validate"

    @property
    def audit_url(self) -> str:
        return f"{self.url}/audit"

    def client(self, *, check_hostname: bool = True) -> httpx.Client:
        """An HTTPS client that trusts the server's CA and presents the apiserver's client certificate.

        `check_hostname=False` for a serving certificate made for a Service name, not 127.0.0.1.
        """
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.check_hostname = check_hostname
        context.load_cert_chain(self.tls.apiserver_client.cert, self.tls.apiserver_client.key)
        return httpx.Client(base_url=self.url, verify=context, timeout=10.0)

    def start(self) -> SentinelServer:
        """Starts the process and waits until it answers HTTPS (any status) on its port."""
        super().start()

        def answers() -> bool:
            try:
                with self.client(check_hostname=False) as c:  # up is all we ask here
                    c.get("/")
                return True
            except httpx.HTTPError:
                return False

        try:
            wait_until(
                answers, timeout=START_TIMEOUT_S, what="ua-sentinel serve", alive=self.process.check_alive
            )
        except BaseException:
            self.stop()
            raise
        return self


class SentinelLauncher:
    """Starts ua-sentinel processes in numbered work directories and stops them all at the end."""

    def __init__(self, base: Path, tls: WebhookTLS) -> None:
        self.base = base
        self.tls = tls
        self._started: list[Sentinel] = []

    def _workdir(self, kind: str) -> Path:
        return self.base / f"{kind}-{len(self._started)}"

    def server(self, *, start: bool = True, **options: Any) -> SentinelServer:
        """A SentinelServer (see its options); `start=False` to wire the apiserver to it first."""
        server = SentinelServer(self._workdir("serve"), self.tls, **options)
        self._started.append(server)
        return server.start() if start else server

    def tail(
        self,
        allowlist: Path | None,
        audit_log: Path,
        *,
        state: Path | None = None,
        from_start: bool = True,
        extra_args: Sequence[str] = (),
        allowlist_configmap: str | None = None,  # NS/NAME instead of a file; then pass `kubeconfig`
        kubeconfig: Path | None = None,
        env: Mapping[str, str] | None = None,  # added to the environment (e.g. POD_NAMESPACE)
    ) -> Sentinel:
        """`ua-sentinel tail --allowlist F --state DIR AUDIT_LOG --sink stdout [--from-start]`, started.

        Pass the `state` of an earlier tail to resume from its checkpoint. With
        `allowlist_configmap` (and `allowlist=None`) it watches that ConfigMap through the API as
        the `kubeconfig`'s user (also what the `k8s-events` sink uses).
        """
        if (allowlist is None) == (allowlist_configmap is None):
            raise ValueError("give exactly one of allowlist and allowlist_configmap")
        workdir = self._workdir("tail")
        state = state if state is not None else workdir / "state"
        source = ["--allowlist", str(allowlist)] if allowlist is not None else []
        source += ["--allowlist-configmap", allowlist_configmap] if allowlist_configmap is not None else []
        args = ["tail", *source, "--state", str(state), str(audit_log)]
        args += ["--sink", "stdout", *(["--from-start"] if from_start else []), *extra_args]
        environment = None
        if kubeconfig is not None or env is not None:
            environment = {**os.environ, **(env or {})}
            if kubeconfig is not None:
                environment["KUBECONFIG"] = str(kubeconfig)
        tail = Sentinel(workdir, args, env=environment)
        self._started.append(tail)
        return tail.start()

    def stop_all(self) -> None:
        for proc in self._started:
            proc.stop()
