"""Item 6: where the time goes (py-spy, sampling the real processes) and one fix, before/after.

- Profiles (py-spy ``record --format raw``, 200 Hz, the server's threads): ``/validate`` with the
  20 KB Pod and the 200 KB object at saturation, ``/audit`` at saturation, and the distinct-agent
  replay of item 5. Each table lists the functions with the most *own* time (native code is
  charged to the Python function that called it).
- Before/after of the change the profiles led to (webhook/serve/service.py ``_tune_gc``: start-up
  objects frozen, young-generation threshold 700 -> 10,000): ``/audit`` and ``/validate`` req/s with
  CPython's default GC (``bench.serve_main --gc-default``) and as shipped, in the same run.
"""

from __future__ import annotations

import collections
import re
import statistics
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import reviews
from bench.audit_ingest import templates
from bench.common import CPU_SERVER, OUT, PYTHON, VENV_BIN, Section, ensure_pip, pinned
from bench.servers import Server, start_sentinel
from bench.wrk import WrkResult, run_wrk, write_parts

TOP = 8
SECONDS = 5.0


def spy_during(pid: int, name: str, load: Callable[[], object], seconds: float = SECONDS) -> Path:
    """Sample ``pid`` with py-spy while ``load()`` runs; returns the raw (collapsed stacks) file."""
    ensure_pip("py-spy")
    out = OUT / f"profile-{name}.txt"
    argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200"]
    argv += ["-f", "raw", "-o", str(out), "--nonblocking", "--threads"]
    spy = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        load()
    finally:
        spy.wait(seconds + 30)
    return out


def own_time(raw: Path, top: int = TOP) -> list[tuple[float, str]]:
    """(share of samples, function) with the most own time, idle waits left out."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit() or not stack:
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1]).strip()
        if not leaf or leaf.startswith(("EpollSelector.select", "Condition.wait", "SimpleQueue.get")):
            continue
        counts[leaf] += int(number)
        total += int(number)
    return [(n / total, f) for f, n in counts.most_common(top)] if total else []


def _table(title: str, rows: list[tuple[float, str]]) -> list[str]:
    out = [f"{title}:", "", "| own time | function |", "|---|---|"]
    out += [f"| {share:.0%} | `{func}` |" for share, func in rows]
    return [*out, ""]


def _prefill(server: Server, kind: str, start: int, seconds: float) -> None:
    server.post_events(reviews.request_received(kind, n) for n in range(start, start + int(seconds * 6000)))
    server.drain()


def _validate_load(server: Server, kind: str, start: int, seconds: float, prefill: bool = True) -> WrkResult:
    parts = write_parts(kind, reviews.template(kind), reviews.TOKEN)
    if prefill:
        _prefill(server, kind, start, seconds)
    return run_wrk(server.url, parts, path="/validate", start=start, seconds=seconds)


def _audit_load(server: Server, start: int, seconds: float) -> WrkResult:
    parts = write_parts("audit-0", templates()[0], reviews.TOKEN)
    return run_wrk(server.url, parts, path="/audit", start=start, seconds=seconds, connections=4)


def profiles() -> list[str]:
    lines: list[str] = []
    with start_sentinel("serve-profile") as server:
        results: dict[str, WrkResult] = {}
        for k, name in enumerate(("pod20k", "object200k", "audit"), start=1):
            if name == "audit":
                load: Callable[[], WrkResult] = lambda: _audit_load(server, 10**7, SECONDS + 1)  # noqa: E731
            else:
                _prefill(server, name, k * 10**7, SECONDS + 1)  # before py-spy starts
                load = partial(_validate_load, server, name, k * 10**7, SECONDS + 1, prefill=False)
                name = f"validate-{name}"
            raw = spy_during(server.pid, name, lambda load=load, name=name: results.__setitem__(name, load()))
            rate = results[name].rate * (400 if name == "audit" else 1)
            unit = "events/s" if name == "audit" else "req/s"
            lines += _table(f"`{name}` at saturation ({rate:,.0f} {unit})", own_time(raw))
    log = OUT / "audit-distinct-5000000-10.log"
    if log.exists():
        head = OUT / "audit-distinct-head.log"
        if not head.exists():
            with log.open("rb") as src, head.open("wb") as dst:
                for _, line in zip(range(200_000), src, strict=False):
                    dst.write(line)
        raw = OUT / "profile-replay-distinct.txt"
        argv = [str(VENV_BIN / "py-spy"), "record", "-r", "200", "-f", "raw", "-o", str(raw), "--"]
        argv += [str(PYTHON), "-m", "bench.memory", "--replay-child", str(head)]
        subprocess.run(pinned(CPU_SERVER, argv), capture_output=True, check=True)
        lines += _table("replay of 200,000 distinct-agent lines (item 5)", own_time(raw))
    return lines


def before_after(seconds: float = SECONDS, rounds: int = 3) -> list[str]:
    """Both servers up at once (pinned to the same CPU), loads alternated, medians kept."""
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with (
        start_sentinel("serve-gc-default", launcher=["--gc-default"]) as before,
        start_sentinel("serve-gc-tuned") as after,
    ):
        n = 5 * 10**7
        for _ in range(rounds):
            for label, server in (("before", before), ("after", after)):
                got = samples[label]
                got.setdefault("audit", []).append(_audit_load(server, n, seconds).rate * 400)
                server.drain()
                got.setdefault("pod", []).append(_validate_load(server, "pod20k", n, seconds).rate)
                got.setdefault("small", []).append(_validate_load(server, "configmap", n, seconds).rate)
                n += 10**6
    b = {k: statistics.median(v) for k, v in samples["before"].items()}
    a = {k: statistics.median(v) for k, v in samples["after"].items()}
    return [
        f"Before/after the GC change (`ua-sentinel serve` with and without `_tune_gc`, both up at once; "
        f"{rounds} alternating runs of {seconds:.0f} s per load and server, medians):",
        "",
        "| load | before (default GC) | after | after / before |",
        "|---|---|---|---|",
        f"| /audit, 400-event EventLists | {b['audit']:,.0f} events/s | {a['audit']:,.0f} events/s "
        f"| **{a['audit'] / b['audit']:.2f}x** |",
        f"| /validate, 20 KB Pod | {b['pod']:,.0f} req/s | {a['pod']:,.0f} req/s "
        f"| {a['pod'] / b['pod']:.2f}x |",
        f"| /validate, small ConfigMap | {b['small']:,.0f} req/s | {a['small']:,.0f} req/s "
        f"| {a['small'] / b['small']:.2f}x |",
        "",
    ]


def run() -> Section:
    section = Section("6. Profiles (py-spy) and the fix they led to")
    for line in before_after() + profiles():
        section.add(line)
    return section


if __name__ == "__main__":
    run()
