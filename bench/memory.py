"""Item 5: memory under adversarial cardinality.

a) Replay: 5M generated lines where every line has a distinct agent and user (bench/generate.py
   ``--distinct``), 10% of them authorization refusals (500,000 distinct refusing principals,
   ~28,000 per 10-minute window: more than the 10,000 windows kept open), through the same
   Detector and replay code as ``ua-sentinel replay`` (one process, ``--workers 1``), sampling
   its RSS. Baseline: the same replay of item 1's realistic log (a cluster's few dozen
   principals). Goal: peak RSS flat and < 200 MB; window evictions counted (DetectorStats).
b) RequestIndex flood: ``ua-sentinel serve`` (defaults: 100,000 pending entries, 10 s TTL) gets
   EventLists of RequestReceived events, every one a distinct request and user, as fast as wrk
   sends them; its RSS is sampled. Baseline: its RSS when idle after start. Goal: flat, and the
   cap evictions counted (``ua_sentinel_join_evictions_total``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench import reviews
from bench.common import CPU_SERVER, OUT, PYTHON, Section, cpu_seconds, pinned, proc_status
from bench.generate import generate
from bench.servers import BATCH, start_sentinel
from bench.wrk import write_parts

LINES = 5_000_000
FORBIDDEN_SHARE = 0.10
RSS_GOAL_MB = 200.0
FLOOD_SECONDS = 20.0


def _replay_child(path: str) -> None:
    """Run in a child process: replay ``path``, sampling our own RSS; print one JSON line."""
    import os

    from webhook.core.allowlist import default_allowlist
    from webhook.core.findings import Finding
    from webhook.detect.detector import Detector
    from webhook.tools.replay import replay

    class CountingSink:
        findings = 0

        def deliver(self, finding: Finding) -> None:
            self.findings += 1

        def close(self) -> None:
            pass

    pid = os.getpid()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sampler() -> None:
        while not stop.wait(0.25):
            samples.append((time.monotonic() - start, proc_status(pid)["VmRSS"]))

    floor = proc_status(pid)["VmRSS"]
    detector = Detector(default_allowlist())
    sink = CountingSink()
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    report = replay([path], detector, sink, workers=1)
    stop.set()
    thread.join()
    stats = detector.stats
    print(
        json.dumps(
            {
                "lines": report.lines,
                "bytes": report.bytes,
                "seconds": time.monotonic() - start,
                "floor_kb": floor,
                "peak_kb": proc_status(pid)["VmHWM"],
                "samples": samples,
                "findings": sink.findings,
                "forbidden": stats.forbidden,
                "windows_evicted": stats.windows_evicted,
                "bursts_evicted": stats.bursts_evicted,
                "open_windows": detector.open_windows,
                "max_windows": detector.config.max_windows,
            }
        )
    )


def _replay(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        pinned(CPU_SERVER, [str(PYTHON), "-m", "bench.memory", "--replay-child", str(path)]),
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def _profile(samples: list[tuple[float, int]], parts: int = 5) -> str:
    """RSS (MB) at 1/parts, 2/parts, ... of the run."""
    if not samples:
        return "-"
    end = samples[-1][0]
    out = []
    for k in range(1, parts + 1):
        at = end * k / parts
        rss = next((r for t, r in samples if t >= at), samples[-1][1])
        out.append(f"{rss / 1024:.0f}")
    return " / ".join(out)


def replay_section(lines: int, baseline_log: Path) -> list[str]:
    log = OUT / f"audit-distinct-{lines}-{int(FORBIDDEN_SHARE * 100)}.log"
    if not log.exists():
        print(f"  generating {lines:,} distinct lines (cached in {log.name})", flush=True)
        generate(lines, 13, log, forbidden_share=FORBIDDEN_SHARE, distinct=True)
    ours = _replay(log)
    base = _replay(baseline_log)
    peak = ours["peak_kb"] / 1024
    base_peak = base["peak_kb"] / 1024
    verdict = "met" if peak < RSS_GOAL_MB else f"**missed** by {peak - RSS_GOAL_MB:.0f} MB"
    return [
        "a) Replay (`webhook.tools.replay.replay`, the code of `ua-sentinel replay`, one process):",
        "",
        "| log | lines | peak RSS | RSS at 20/40/60/80/100% of the run (MB) | time |",
        "|---|---|---|---|---|",
        f"| every line a distinct agent+user, {FORBIDDEN_SHARE:.0%} refusals | {ours['lines']:,} "
        f"| **{peak:.0f} MB** | {_profile(ours['samples'])} | {ours['seconds']:.0f} s |",
        f"| baseline: item 1's realistic log | {base['lines']:,} | {base_peak:.0f} MB "
        f"| {_profile(base['samples'])} | {base['seconds']:.0f} s |",
        "",
        f"Peak RSS {peak:.0f} MB = **{peak / base_peak:.2f}x the baseline's** (process floor after imports "
        f"{ours['floor_kb'] / 1024:.0f} MB); goal < {RSS_GOAL_MB:.0f} MB and flat: {verdict}. "
        f"Detector: {ours['forbidden']:,} refusals, {ours['findings']:,} findings, "
        f"**{ours['windows_evicted']:,} aggregation windows evicted** (cap {ours['max_windows']:,}; "
        f"{ours['open_windows']:,} open at the end), **{ours['bursts_evicted']:,} burst windows evicted**.",
    ]


def _flood_template() -> str:
    events = []
    for i in range(BATCH):
        event = reviews.request_received("configmap", 0)
        event["auditID"] = f"f100d{i:03x}-0000-4000-8000-{reviews.TOKEN}"
        event["user"]["username"] = f"flood-{i}-{reviews.TOKEN}"
        events.append(event)
    return reviews.event_list(events).decode()


def flood_section(seconds: float) -> list[str]:
    from bench.wrk import run_wrk

    parts = write_parts("flood", _flood_template(), reviews.TOKEN)
    with start_sentinel("serve-flood") as ours:
        time.sleep(1.0)
        idle = proc_status(ours.pid)["VmRSS"]
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        start = time.monotonic()

        def sampler() -> None:
            while not stop.wait(0.5):
                samples.append((time.monotonic() - start, proc_status(ours.pid)["VmRSS"]))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        cpu0 = cpu_seconds(ours.pid)
        result = run_wrk(ours.url, parts, path="/audit", start=1, seconds=seconds, connections=4)
        cpu = cpu_seconds(ours.pid) - cpu0
        stop.set()
        thread.join()
        ours.drain()
        metrics = ours.metrics()
        peak = proc_status(ours.pid)["VmHWM"]
    events = metrics.get("ua_sentinel_audit_events_total", 0.0)
    cap = metrics.get('ua_sentinel_join_evictions_total{reason="cap"}', 0.0)
    ttl = metrics.get('ua_sentinel_join_evictions_total{reason="ttl"}', 0.0)
    pending = metrics.get("ua_sentinel_join_pending", 0.0)
    dropped = metrics.get("ua_sentinel_audit_events_dropped_total", 0.0)
    return [
        "",
        f"b) RequestIndex flood (`ua-sentinel serve` defaults; wrk -c4 POST /audit, {BATCH} distinct "
        f"RequestReceived per EventList, {seconds:.0f} s):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events accepted | {events:,.0f} ({events / result.seconds:,.0f}/s; "
        f"server CPU {cpu / result.seconds:.0%}) |",
        f"| RSS at 20/40/60/80/100% of the flood (MB) | {_profile(samples)} |",
        f"| peak RSS | **{peak / 1024:.0f} MB** = {peak / idle:.1f}x the idle server's "
        f"{idle / 1024:.0f} MB |",
        f"| pending entries at the end | {pending:,.0f} (cap 100,000) |",
        f"| evictions counted | **cap {cap:,.0f}**, TTL {ttl:,.0f} |",
        f"| detector: events dropped (queue full, counted) | {dropped:,.0f} |",
    ]


def run(lines: int = LINES, flood: float = FLOOD_SECONDS) -> Section:
    section = Section("5. Memory under adversarial cardinality")
    baseline_log = OUT / "audit-1000000-7.log"
    if not baseline_log.exists():
        generate(1_000_000, 7, baseline_log)
    for line in replay_section(lines, baseline_log) + flood_section(flood):
        section.add(line)
    return section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replay-child", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, default=LINES)
    parser.add_argument("--flood-seconds", type=float, default=FLOOD_SECONDS)
    args = parser.parse_args()
    if args.replay_child:
        _replay_child(args.replay_child)
        return
    run(args.lines, args.flood_seconds)


if __name__ == "__main__":
    main()
