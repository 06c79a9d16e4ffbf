"""Shared pieces of the benchmarks: timing commands, machine facts, the RESULTS.md section.

Every figure is reported next to a baseline measured in the same run, and as a ratio; the
machines are shared and noisy, so absolute numbers are context, not claims.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
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
