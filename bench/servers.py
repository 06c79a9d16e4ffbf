"""The servers the serve benchmarks talk to: ``ua-sentinel serve`` and the framework floor.

Both run pinned to :data:`~bench.common.CPU_SERVER`; the load generator gets the other CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import reviews
from bench.common import (
    CPU_SERVER,
    OUT,
    PYTHON,
    SENTINEL,
    Proc,
    free_port,
    make_certs,
    parse_prometheus,
    wait_for,
)

BATCH = 400
"""Events per EventList: kube-apiserver's default --audit-webhook-batch-max-size."""


class Server:
    def __init__(self, name: str, argv: Sequence[str], port: int, ca: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.proc = Proc(name, argv, cpus=CPU_SERVER)
        self.client = httpx.Client(base_url=self.url, verify=str(ca), timeout=60.0)
        try:
            wait_for(
                lambda: self.client.get("/healthz").status_code == 200,
                timeout=60,
                what=f"{name} to answer /healthz",
                alive=self.proc,
            )
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- ua-sentinel serve only --------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        return parse_prometheus(self.client.get("/metrics").text)

    def readyz(self) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get("/readyz").json()
        return data

    def post_events(self, events: Iterable[dict[str, Any]]) -> int:
        """POST ``events`` to /audit in EventLists of :data:`BATCH`; returns how many were accepted."""
        accepted = 0
        batch: list[dict[str, Any]] = []

        def send() -> None:
            nonlocal accepted
            response = self.client.post("/audit", content=reviews.event_list(batch))
            response.raise_for_status()
            accepted += int(response.json()["accepted"])
            batch.clear()

        for event in events:
            batch.append(event)
            if len(batch) == BATCH:
                send()
        if batch:
            send()
        return accepted

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until the detector queue is empty (so a run does not share the CPU with it)."""
        wait_for(lambda: self.readyz()["detector"]["queued"] == 0, timeout=timeout, what="detector queue")


def certificates() -> tuple[Path, Path, Path]:
    """(ca, cert, key) for 127.0.0.1, made once by ``ua-sentinel certs``."""
    directory = OUT / "certs"
    ca = make_certs(directory)
    return ca, directory / "tls.crt", directory / "tls.key"


def start_sentinel(
    name: str = "serve", *, launcher: Sequence[str] = (), extra: Sequence[str] = (), log: str = "info"
) -> Server:
    """``ua-sentinel serve`` (warn mode, built-in allowlist, findings to a file, ``/audit`` open).

    With ``launcher`` options the process is ``bench.serve_main`` (the same CLI with one thing
    changed: ``--join-ttl S`` or ``--gc-default``); without, the plain ``ua-sentinel`` executable.
    """
    ca, cert, key = certificates()
    port = free_port()
    args = ["serve", "--tls-cert", str(cert), "--tls-key", str(key), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--sink", f"file:{OUT / (name + '-findings.jsonl')}", "--log-level", log]
    args += ["--audit-insecure"]  # the load generators post audit events without a certificate
    args += list(extra)
    if launcher:
        argv = [str(PYTHON), "-m", "bench.serve_main", *launcher, "--", *args]
    else:
        argv = [str(SENTINEL), *args]
    return Server(name, argv, port, ca)


def start_floor() -> Server:
    ca, cert, key = certificates()
    port = free_port()
    argv = [str(PYTHON), "-m", "bench.floor_app", "--cert", str(cert), "--key", str(key), "--port", str(port)]
    return Server("floor", argv, port, ca)


def orjson_floor(bodies: Sequence[bytes], seconds: float) -> tuple[int, float]:
    """``orjson.loads`` of ``bodies`` round-robin for ~``seconds``: (bodies parsed, elapsed)."""
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for body in bodies:
            orjson.loads(body)
        done += len(bodies)
    return done, time.perf_counter() - start
