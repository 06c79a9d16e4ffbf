"""Run Debian's ``wrk`` (one thread, pinned to the client CPU) with bench/post.lua; parse its result."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import CPU_CLIENT, OUT, ensure_apt, pinned

LUA = Path(__file__).with_name("post.lua")


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    """Latencies in seconds."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_parts(name: str, text: str, token: str) -> tuple[Path, int]:
    """Split ``text`` on ``token`` into DIR/part1..N for post.lua; returns (DIR, N)."""
    directory = OUT / "wrk" / name
    directory.mkdir(parents=True, exist_ok=True)
    parts = text.split(token)
    for i, part in enumerate(parts, start=1):
        (directory / f"part{i}").write_text(part, encoding="utf-8")
    for stale in directory.glob("part*"):
        if int(stale.name[4:]) > len(parts):
            stale.unlink()
    return directory, len(parts)


def run_wrk(
    url: str,
    parts: tuple[Path, int],
    *,
    path: str,
    start: int,
    seconds: float,
    connections: int = 8,
    rate: int = 0,
) -> WrkResult:
    ensure_apt("wrk")
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(parts[0]),
        str(parts[1]),
        str(start),
        path,
    ]
    env = {**os.environ, "BENCH_RATE": str(rate)}
    done = subprocess.run(
        pinned(CPU_CLIENT, argv), capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50=data["p50"] / 1e6,
        p90=data["p90"] / 1e6,
        p99=data["p99"] / 1e6,
        p999=data["p999"] / 1e6,
        max=data["max"] / 1e6,
    )
