"""Helpers for the tailer tests: real files, `ua-sentinel tail` as a real child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT_LOGS

ROOT = Path(__file__).resolve().parents[2]
ACCEPTANCE_ALLOWLIST = 'agents:\n  - "kubectl/*"\n  - "kube-*"\n'


def fixture_lines() -> list[bytes]:
    """The recorded apiserver lines, rotated file first, each with its newline."""
    return [line + b"\n" for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]


def findings_in(*paths: Path) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        if path.exists():
            out += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return out


def keys(findings: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["event"]["id"], f["event"]["sequence"]) for f in findings]


def cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def replay_findings(log: Path, allowlist: Path, *extra: str) -> list[dict[str, Any]]:
    result = cli("replay", "--allowlist", str(allowlist), "--workers", "1", *extra, str(log))
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Tail:
    """One `ua-sentinel tail` child; stdout (findings) and stderr (logs) go to files per run.

    ``log`` is the file it tails; a subclass that reads ``--source`` instead passes None."""

    start_timeout = 30.0
    """Seconds for the first checkpoint (the sign it started)."""

    def __init__(
        self, workdir: Path, log: Path | None, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.log = log
        self.state = workdir / "state"
        self.args = args
        self.env = env or {}
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stdout_files(self) -> list[Path]:
        return sorted(self.workdir.glob("stdout-*.jsonl"))

    def start(self) -> Tail:
        self.runs += 1
        out = open(self.workdir / f"stdout-{self.runs:03d}.jsonl", "wb")  # noqa: SIM115 - child owns it
        err = open(self.workdir / f"stderr-{self.runs:03d}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook",
                "tail",
                "--state",
                str(self.state),
                "--poll-interval",
                "0.05",
                "--checkpoint-interval",
                "0.2",
                *self.args,
                *([str(self.log)] if self.log is not None else []),
            ],
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, **self.env},
        )
        out.close()
        err.close()
        started = time.time()
        proc = self.proc
        wait_for(
            lambda: self.checkpoint().get("written_at", 0) >= started or proc.poll() is not None,
            self.start_timeout,
            "start",
        )
        assert proc.poll() is None, self.stderr()
        return self

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("stderr-*.log")))

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)  # drain (5 s) + closes; generous for a starved CI machine
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def checkpoint(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "checkpoint.json").read_bytes())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def caught_up(self) -> bool:
        """The checkpoint is at the end of the live file and no backlog is left."""
        cp = self.checkpoint()
        position = cp.get("position") or {}
        if self.log is None:
            return False
        try:
            st = os.stat(self.log)
        except FileNotFoundError:
            return False
        at_end = position.get("ino") == st.st_ino and position.get("offset") == st.st_size
        return at_end and not any(cp.get("backlog", {}).values())

    def stats(self) -> dict[str, int]:
        return dict(self.checkpoint().get("stats", {}))


@pytest.fixture
def tail_factory(tmp_path: Path) -> Iterator[Callable[..., Tail]]:
    started: list[Tail] = []

    def make(log: Path, *args: str, env: dict[str, str] | None = None, name: str = "tail") -> Tail:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        tail = Tail(workdir, log, list(args), env)
        started.append(tail)
        return tail

    yield make
    for tail in started:
        if tail.proc is not None and tail.proc.poll() is None:
            tail.proc.kill()
            tail.proc.wait(10)


@pytest.fixture
def allowlist_file(tmp_path: Path) -> Path:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ACCEPTANCE_ALLOWLIST)
    return path


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
