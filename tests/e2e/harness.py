"""A real control plane for end-to-end tests: etcd + kube-apiserver on 127.0.0.1, RBAC, audit.

    with ControlPlane(binaries, workdir) as cp:
        cp.kubectl("admin", "create", "configmap", "x", "-n", "team")
        r = cp.request("mallory", "GET", "/api/v1/secrets", user_agent="python-requests/2.34.2")
        event = cp.wait_for_audit(lambda e: e["stage"] == "ResponseComplete" and ...)

Users (static bearer tokens), the identities of the recorded fixtures in tests/data: `admin`
(uid 1001, system:masters), `dev-alice` (uid 1003, group `devs`; may edit configmaps and pods in
namespace `team` through Role `cm-editor` / RoleBinding `alice-cm`, but has no `patch` verb) and
`mallory` (uid 1002, group `devs` too, which is bound to nothing: no rights).

Audit: the product's own policy, webhook kubeconfig and flags (`webhook.tools.apiserver_config`, what
`ua-sentinel apiserver-config` prints), so every run checks them on a real apiserver. The file
backend is always on (JSON, small `--audit-log-maxsize` so rotation happens); the webhook backend
(batch mode, never blocking) and a client certificate the apiserver presents to webhooks are
optional, and `restart(**changes)` swaps flags while etcd and its data stay.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from webhook.tools import apiserver_config as apiserverconfig

from .apiserver_config import (
    RBAC_MANIFESTS,
    TEAM_NAMESPACE,
    USERS,
    admission_configuration,
    kubeconfig,
    token_file,
    webhook_client_kubeconfig,
    write_yaml,
)
from .auditlog import AuditEvent, audit_log_files, read_audit_events
from .pki import KeyPair, issue, make_ca, write_keypair, write_service_account_keys
from .procs import ManagedProcess, ProcessDied, free_port, wait_until
from .tools import Binaries

__all__ = ["USERS", "ControlPlane", "ControlPlaneFactory", "ControlPlaneOptions", "KubectlError"]

READY_TIMEOUT_S = 90.0
# The apiserver drains long-running requests (watches) on SIGTERM; tests need no graceful exit.
APISERVER_STOP_TIMEOUT_S = 5.0


class KubectlError(RuntimeError):
    """kubectl exited non-zero (message holds the command, exit status, stdout and stderr)."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        self.result = result


@dataclass(frozen=True)
class ControlPlaneOptions:
    """The knobs of one kube-apiserver start; `ControlPlane.restart(**changes)` replaces some."""

    audit_webhook_url: str | None = None  # https://127.0.0.1:PORT/audit (needs webhook_ca, client_cert)
    audit_webhook_kubeconfig: Path | None = None  # or a ready file (`ua-sentinel apiserver-config`)
    webhook_ca: Path | None = None  # CA that signed the audit webhook's serving certificate
    client_cert: KeyPair | None = None  # presented to the audit webhook and admission webhooks
    admission_control_config_file: Path | None = None  # default: generated when client_cert is set
    audit_log_maxsize_mb: int = 1
    audit_log_maxbackup: int = 10
    audit_policy: str | None = None  # policy text instead of the product's own (e.g. a merged one)
    extra_args: tuple[str, ...] = ()


class ControlPlane:
    """etcd + kube-apiserver processes with their PKI, users and helpers (a context manager)."""

    def __init__(self, binaries: Binaries, workdir: Path, **options: Any) -> None:
        self.bins = binaries
        self.workdir = workdir
        self.options = ControlPlaneOptions(**options)
        self.tokens = {name: secrets.token_hex(16) for name in USERS}
        self.port = 0
        self.start_seconds: float | None = None  # wall time of the last apiserver start, until ready
        self._etcd: ManagedProcess | None = None
        self._etcd_data: Path | None = None
        self._apiserver: ManagedProcess | None = None
        self._bootstrapped = False
        self._ssl: ssl.SSLContext | None = None
        for sub in ("pki", "config", "logs", "audit", "home"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self._make_pki()

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Starts etcd (once) and the apiserver; waits for /readyz; creates the RBAC fixtures."""
        try:
            if self._etcd is None or not self._etcd.running():
                self._start_etcd()
            self._start_apiserver()
            if not self._bootstrapped:
                self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the apiserver then etcd (by process group) and removes etcd's data."""
        if self._apiserver is not None:
            self._apiserver.stop(APISERVER_STOP_TIMEOUT_S)
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None
        if self._etcd_data is not None:
            shutil.rmtree(self._etcd_data, ignore_errors=True)
            self._etcd_data = None
        self._bootstrapped = False

    def restart(self, **changes: Any) -> ControlPlane:
        """Restarts only the apiserver, same port and data, with some options replaced."""
        self.options = dataclasses.replace(self.options, **changes)
        if self._apiserver is not None:
            self._apiserver.stop(APISERVER_STOP_TIMEOUT_S)
        try:
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def apiserver(self) -> ManagedProcess:
        if self._apiserver is None:
            raise RuntimeError("the control plane was never started")
        return self._apiserver

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the apiserver's serving certificate."""
        return self.workdir / "pki" / "cluster-ca.crt"

    # ---- clients ---------------------------------------------------------------------------
    def kubeconfig(self, user: str) -> Path:
        """A kubeconfig file that authenticates as `user` (one of USERS) with its bearer token."""
        return self.workdir / "config" / f"kubeconfig-{USERS[user].name}"

    def kubectl(
        self,
        user: str,
        *args: str,
        user_agent: str | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the real kubectl 1.20 as `user`.

        kubectl names itself after argv[0] in its User-Agent, so `user_agent="kc-renamed"` sends
        `kc-renamed/v1.20.2 (linux/amd64) kubernetes/faecb19` (the binary runs under that name).
        """
        name = user_agent or "kubectl"
        if not name or "/" in name:
            raise ValueError(f"user_agent for kubectl is a program name without '/': {name!r}")
        result = subprocess.run(
            [name, f"--kubeconfig={self.kubeconfig(user)}", *args],
            executable=self.bins.kubectl,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir / "home")},
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def apply_yaml(
        self,
        docs: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        user: str = "admin",
        check: bool = True,
        user_agent: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` with YAML text, one object or a list of objects."""
        if isinstance(docs, Mapping):
            docs = [docs]
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(list(docs), sort_keys=False)
        return self.kubectl(user, "apply", "-f", "-", stdin=text, check=check, user_agent=user_agent)

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 7200
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` (which must exist).

        Its token comes from the real TokenRequest API (as admin): what a pod's projected token
        is, so the holder has exactly the RBAC bound to that ServiceAccount.
        """
        response = self.request(
            "admin",
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"TokenRequest for {namespace}/{name}: HTTP {response.status_code} {response.text}"
            )
        token: str = response.json()["status"]["token"]
        user = f"system:serviceaccount:{namespace}:{name}"
        path = self.workdir / "config" / f"kubeconfig-sa-{namespace}-{name}"
        return write_yaml(path, kubeconfig(self.url, self.ca_cert, user, {"token": token}))

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_cert))
        return self._ssl

    def client(
        self, user: str | None, *, user_agent: str | None = None, token: str | None = None
    ) -> httpx.Client:
        """An httpx client for the apiserver as `user` (None: no credentials, i.e. anonymous).

        `user_agent=""` sends an empty User-Agent header; `token` overrides the user's token.
        """
        headers: dict[str, str] = {}
        bearer = token if token is not None else (self.tokens[user] if user is not None else None)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        if user_agent is not None:
            headers["User-Agent"] = user_agent
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), headers=headers, timeout=30.0)

    def request(
        self, user: str | None, method: str, path: str, *, user_agent: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One HTTP request to the apiserver, e.g. as a python-requests script would send it."""
        with self.client(user, user_agent=user_agent) as c:
            return c.request(method, path, **kwargs)

    # ---- audit log -------------------------------------------------------------------------
    @property
    def audit_log(self) -> Path:
        """The live audit log file; rotated ones sit next to it as audit-<timestamp>.log."""
        return self.workdir / "audit" / "audit.log"

    def audit_log_files(self) -> list[Path]:
        return audit_log_files(self.audit_log)

    def audit_events(self) -> list[AuditEvent]:
        """All audit events so far, oldest first, from the rotated files then the live one."""
        return read_audit_events(self.audit_log_files())

    def wait_for_audit(
        self, predicate: Callable[[AuditEvent], bool], *, timeout: float = 15.0, what: str = "an audit event"
    ) -> AuditEvent:
        """Polls the audit log until an event matches `predicate`; returns the first match."""

        def probe() -> AuditEvent | None:
            return next((e for e in self.audit_events() if predicate(e)), None)

        return wait_until(probe, timeout=timeout, what=what, interval=0.1, alive=self.apiserver.check_alive)

    # ---- internals -------------------------------------------------------------------------
    def _make_pki(self) -> None:
        pki, cfg = self.workdir / "pki", self.workdir / "config"
        cluster_ca = make_ca("e2e cluster CA", days=2)
        write_keypair(cluster_ca, pki, "cluster-ca")
        serving = issue(
            cluster_ca,
            "kube-apiserver",
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1", "10.0.0.1"),
            days=2,
        )
        self._serving = write_keypair(serving, pki, "apiserver")
        self.client_ca_cert = write_keypair(make_ca("e2e client CA", days=2), pki, "client-ca").cert
        self._sa = write_service_account_keys(pki)
        (cfg / "tokens.csv").write_text(token_file(self.tokens))
        (cfg / apiserverconfig.POLICY_FILE).write_text(apiserverconfig.AUDIT_POLICY)

    def _write_kubeconfigs(self) -> None:
        for user in USERS:
            write_yaml(
                self.kubeconfig(user), kubeconfig(self.url, self.ca_cert, user, {"token": self.tokens[user]})
            )

    def _start_etcd(self) -> None:
        base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else self.workdir  # fast fsync
        for attempt in range(3):
            client_port, peer_port = free_port(), free_port()
            self._etcd_data = Path(tempfile.mkdtemp(prefix="ua-e2e-etcd-", dir=base))
            self.etcd_url = f"http://127.0.0.1:{client_port}"
            peer = f"http://127.0.0.1:{peer_port}"
            self._etcd = ManagedProcess(
                "etcd",
                [
                    str(self.bins.etcd),
                    "--name=e2e",
                    f"--data-dir={self._etcd_data}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=e2e={peer}",
                    "--log-level=warn",
                ],
                stdout_path=self.workdir / "logs" / "etcd.log",
            ).start()
            try:
                wait_until(self._etcd_healthy, timeout=30, what="etcd /health", alive=self._etcd.check_alive)
                return
            except ProcessDied:
                if attempt == 2 or "address already in use" not in self._etcd.log_tail():
                    raise
                shutil.rmtree(self._etcd_data, ignore_errors=True)

    def _etcd_healthy(self) -> bool:
        try:
            health: object = httpx.get(f"{self.etcd_url}/health", timeout=2).json().get("health")
            return health == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def _apiserver_argv(self) -> list[str]:
        cfg, o = self.workdir / "config", self.options
        argv = [
            str(self.bins.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={self._serving.cert}",
            f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={self.client_ca_cert}",
            f"--token-auth-file={cfg / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self._sa.cert}",
            f"--service-account-signing-key-file={self._sa.key}",
            "--endpoint-reconciler-type=none",  # a loopback address is not a valid endpoint
        ]
        return argv + self._audit_flags() + self._admission_flags() + list(o.extra_args)

    def _audit_flags(self) -> list[str]:
        """The product's own audit setup (`ua-sentinel apiserver-config`: policy, webhook kubeconfig,
        batch-mode flags) with a small log size so rotation really happens."""
        o = self.options
        overrides = {
            "--audit-log-maxsize": str(o.audit_log_maxsize_mb),
            "--audit-log-maxbackup": str(o.audit_log_maxbackup),
        }
        if o.audit_policy is not None:
            given = self.workdir / "config" / "audit-policy-given.yaml"
            given.write_text(o.audit_policy)
            overrides["--audit-policy-file"] = str(given)
        if o.audit_webhook_kubeconfig is not None:
            if o.audit_webhook_url is not None:
                raise ValueError("give audit_webhook_url or audit_webhook_kubeconfig, not both")
            overrides["--audit-webhook-config-file"] = str(o.audit_webhook_kubeconfig)
        elif o.audit_webhook_url is not None:
            overrides["--audit-webhook-config-file"] = str(
                self._write_audit_webhook_kubeconfig(o.audit_webhook_url)
            )
        flags = apiserverconfig.apiserver_flags(
            config_dir=str(self.workdir / "config"), audit_log_path=str(self.audit_log)
        )
        names = [f.partition("=")[0] for f in flags]
        flags = [f"{n}={overrides[n]}" if n in overrides else f for f, n in zip(flags, names, strict=True)]
        if "--audit-webhook-config-file" not in overrides:
            flags = [f for f in flags if not f.startswith("--audit-webhook-")]
        return flags

    def _write_audit_webhook_kubeconfig(self, url: str) -> Path:
        o = self.options
        if o.webhook_ca is None or o.client_cert is None:
            raise ValueError("audit_webhook_url needs webhook_ca and client_cert (/audit requires one)")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or parts.path != "/audit" or parts.hostname is None or parts.port is None:
            raise ValueError(f"audit_webhook_url must be https://IP:PORT/audit, not {url}")
        path = self.workdir / "config" / apiserverconfig.KUBECONFIG_FILE
        text = apiserverconfig.audit_webhook_kubeconfig(
            service_ip=parts.hostname,
            port=parts.port,
            ca_pem=o.webhook_ca.read_bytes(),
            client_cert_pem=o.client_cert.cert.read_bytes(),
            client_key_pem=o.client_cert.key.read_bytes(),
        )
        path.write_text(text)
        return path

    def _admission_flags(self) -> list[str]:
        cfg, o = self.workdir / "config", self.options
        admission = o.admission_control_config_file
        if admission is None and o.client_cert is not None:  # present it to every admission webhook
            clients = write_yaml(
                cfg / "admission-webhooks.kubeconfig", webhook_client_kubeconfig(o.client_cert)
            )
            admission = write_yaml(cfg / "admission-config.yaml", admission_configuration(clients))
        return [] if admission is None else [f"--admission-control-config-file={admission}"]

    def _start_apiserver(self) -> None:
        keep_port = self.port != 0
        for attempt in range(3):
            if not keep_port:
                self.port = free_port()
            self._write_kubeconfigs()
            argv = self._apiserver_argv()
            (self.workdir / "logs" / "kube-apiserver.argv").write_text("\n".join(argv) + "\n")
            began = time.monotonic()
            self._apiserver = ManagedProcess(
                "kube-apiserver",
                argv,
                stdout_path=self.workdir / "logs" / "kube-apiserver.log",
            ).start()
            try:
                wait_until(
                    self._ready,
                    timeout=READY_TIMEOUT_S,
                    what="kube-apiserver /readyz",
                    alive=self._apiserver.check_alive,
                )
                self.start_seconds = time.monotonic() - began
                return
            except ProcessDied:
                if attempt == 2 or "address already in use" not in self._apiserver.log_tail():
                    raise
                keep_port = False
            except TimeoutError as exc:
                self._apiserver.stop(APISERVER_STOP_TIMEOUT_S)
                raise TimeoutError(f"{exc}\n{self._apiserver.log_tail()}") from exc

    def _ready(self) -> bool:
        try:
            with self.client("admin") as c:
                return c.get("/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _bootstrap(self) -> None:
        self.apply_yaml(RBAC_MANIFESTS)
        # The RBAC authorizer reads through an informer; wait until dev-alice's binding is seen.
        path = f"/api/v1/namespaces/{TEAM_NAMESPACE}/configmaps"
        wait_until(
            lambda: self.request("dev-alice", "GET", path).status_code == 200,
            timeout=30,
            what="dev-alice's RoleBinding to take effect",
            interval=0.1,
        )
        self._bootstrapped = True


ControlPlaneFactory = Callable[..., ControlPlane]
"""What the `control_plane_factory` fixture yields: `make(**ControlPlaneOptions fields)`, started."""
