"""Helpers for the fault tests: an HTTP endpoint that hangs on demand, `ua-sentinel tail` as a
real child process, audit log lines that each make one finding, a size-limited tmpfs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.hardening.audit_events import ALLOWLIST, forbidden
from tests.integration.server import wait_for

ROOT = Path(__file__).resolve().parents[2]
RULE = "unusual-agent-forbidden"


class HangingEndpoint:
    """A findings endpoint on 127.0.0.1 that records every POST body on arrival, and answers
    only while not hanging (a hanging request is held until :meth:`release` or the close)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answering = threading.Event()
        self.answering.set()
        self._closing = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.received.append(json.loads(body))
                while not endpoint.answering.wait(0.1):
                    if endpoint._closing.is_set():
                        return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/findings"

    def hang(self) -> None:
        self.answering.clear()

    def release(self) -> None:
        self.answering.set()

    def users(self) -> set[str]:
        return {f["user"]["name"] for f in self.received if f["rule"]["name"] == RULE}

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def hanging_endpoint() -> Iterator[HangingEndpoint]:
    endpoint = HangingEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


def probe_lines(prefix: str, count: int) -> list[bytes]:
    """``count`` RBAC refusals by distinct users with an unlisted agent: one finding each."""
    return [
        json.dumps(forbidden("curl/8.5.0", user=f"{prefix}-{n}", audit_id=f"{prefix}-{n}")).encode() + b"\n"
        for n in range(count)
    ]


def append(log: Path, lines: list[bytes]) -> None:
    with open(log, "ab") as handle:
        handle.writelines(lines)


class TailRun:
    """`ua-sentinel tail` with a fast poll and checkpoint; each start logs to its own files."""

    def __init__(self, workdir: Path, log: Path, state: Path, sinks: list[str]) -> None:
        self.workdir, self.log, self.state, self.sinks = workdir, log, state, sinks
        self.allowlist = workdir / "allowlist.yaml"
        self.allowlist.write_text(ALLOWLIST)
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> TailRun:
        self.runs += 1
        argv = [sys.executable, "-m", "webhook", "tail", "--allowlist", str(self.allowlist)]
        argv += ["--state", str(self.state), "--poll-interval", "0.05", "--checkpoint-interval", "0.2"]
        argv += ["--from-start", *extra]
        for sink in self.sinks:
            argv += ["--sink", sink]
        with (
            open(self.workdir / f"stdout-{self.runs}.jsonl", "wb") as out,
            open(self.workdir / f"stderr-{self.runs}.log", "wb") as err,
        ):
            self.proc = subprocess.Popen(
                [*argv, str(self.log)], stdout=out, stderr=err, cwd=ROOT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self, run: int | None = None) -> str:
        runs = [run] if run else range(1, self.runs + 1)
        return "".join(
            (self.workdir / f"stderr-{n}.log").read_text(errors="replace")
            for n in runs
            if (self.workdir / f"stderr-{n}.log").exists()
        )

    def findings(self, run: int | None = None) -> list[dict[str, Any]]:
        out = []
        for n in [run] if run else range(1, self.runs + 1):
            path = self.workdir / f"stdout-{n}.jsonl"
            if path.exists():
                text = path.read_text()
                complete, _, _ = text.rpartition("\n")
                out += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return out

    def users(self, run: int | None = None) -> set[str]:
        return {f["user"]["name"] for f in self.findings(run) if f["rule"]["name"] == RULE}

    def checkpoint(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.state / "checkpoint.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return doc

    def at_end(self) -> bool:
        position = self.checkpoint().get("position") or {}
        return bool(position.get("offset") == self.log.stat().st_size)

    def wait_users(self, users: set[str], *, run: int | None = None, timeout: float = 30) -> None:
        wait_for(
            lambda: users <= self.users(run),
            timeout=timeout,
            what=f"findings for {sorted(users - self.users(run))[:5]}...",
        )

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (as root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs for the disk-full test (needs root): {done.stderr}")
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` until ENOSPC; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
