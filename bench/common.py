"""Shared pieces of the benchmarks: timing commands, machine facts, the RESULTS.md section.

Every figure is reported next to a baseline measured in the same run, and as a ratio; the
machines are shared and noisy, so absolute numbers are context, not claims.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
VENV_BIN = ROOT / ".venv" / "bin"


def ensure_apt(*packages: str) -> None:
    """Install Debian packages the benchmark compares against (jq, wrk) when missing."""
    missing = [p for p in packages if shutil.which(p) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def time_command(argv: Sequence[str], *, stdin: Path | None = None, repeat: int = 3) -> tuple[float, bytes]:
    """Median wall time of ``argv`` over ``repeat`` runs (stdout captured), and the last stdout."""
    times: list[float] = []
    out = b""
    for _ in range(repeat):
        handle = stdin.open("rb") if stdin else None
        try:
            start = time.perf_counter()
            result = subprocess.run(argv, stdin=handle, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
            out = result.stdout
        finally:
            if handle:
                handle.close()
    return statistics.median(times), out


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def append_results(sections: Sequence[Section], *, note: str = "") -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"\n## {stamp}\n", f"Machine: {machine()}\n"]
    if note:
        parts.append(f"{note}\n")
    for section in sections:
        parts.append(f"\n### {section.title}\n")
        parts.extend(f"{line}\n" for line in section.lines)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\n"
            "Appended by `make bench`; every figure has its baseline from the same run.\n"
        )
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.writelines(parts)


# ---- processes, ports, TLS and metrics (items 2-6) ----------------------------------------------

PYTHON = VENV_BIN / "python"
SENTINEL = VENV_BIN / "ua-sentinel"
CPU_SERVER = "0"
"""The server under test runs on this CPU, the load generator on :data:`CPU_CLIENT` (2-core box)."""
CPU_CLIENT = "1"


def ensure_pip(package: str, executable: str | None = None) -> None:
    """Install a PyPI package into the project's .venv when missing (py-spy for the profiles)."""
    if (VENV_BIN / (executable or package)).exists():
        return
    subprocess.run([str(VENV_BIN / "pip"), "install", "-q", package], check=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (when taskset exists and more than one CPU is online)."""
    if cpus is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return list(argv)
    return ["taskset", "-c", cpus, *argv]


class Proc:
    """A child process in its own process group, logs to files; stopped (group) on exit."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        stdout: Path | None = None,
    ) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.stderr_path = OUT / f"{name}.stderr.log"
        out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
        with self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                pinned(cpus, argv),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        if stdout is not None and not isinstance(out, int):
            out.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = self.stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> int | None:
        import signal

        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak) / ... of a process, in kB (Linux /proc)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm"):
            values[key] = int(rest.split()[0])
    return values


def wait_for(probe: Callable[[], bool], *, timeout: float, what: str, alive: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive.check()
        try:
            if probe():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_certs(directory: Path) -> Path:
    """Serving certificate for 127.0.0.1 with the real ``ua-sentinel certs``; returns the CA file."""
    if not (directory / "tls.crt").exists():
        subprocess.run(
            [str(SENTINEL), "certs", "--out", str(directory), "--ip", "127.0.0.1"],
            check=True,
            capture_output=True,
        )
    return directory / "ca.crt"


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for the lines of a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs (linear within a bucket)."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
