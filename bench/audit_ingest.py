"""Item 3: audit ingestion. ``POST /audit`` with 400-event EventLists (kube-apiserver's batch size).

Bodies: generated audit traffic (bench/generate.py: recorded events, a busy cluster's clients,
2% refusals), 400 events per EventList, every event of every request with its own auditID (so the
RequestIndex really indexes each RequestReceived). Load: ``wrk -t1 -c4`` on CPU 1; ``ua-sentinel
serve`` (defaults) on CPU 0. Its detector runs on a thread of the same process: events it had no
time for are dropped and counted (reported).

Baseline: ``orjson.loads`` of the same bodies in a loop, in a process pinned to the same CPU.
Goal (issue 6): /audit events/s >= 50% of that parse floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bench import reviews
from bench.common import CPU_SERVER, OUT, PYTHON, Section, pinned
from bench.generate import generate
from bench.servers import BATCH, orjson_floor, start_sentinel
from bench.wrk import run_wrk, write_parts

BODIES = 8
SECONDS = 8.0
GOAL = 0.50


def templates() -> list[str]:
    """:data:`BODIES` EventList texts with :data:`~bench.reviews.TOKEN` in every auditID."""
    source = OUT / f"audit-ingest-{BODIES * BATCH}.log"
    if not source.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        generate(BODIES * BATCH, 11, source)
    events = [json.loads(line) for line in source.read_text().splitlines()]
    texts: list[str] = []
    for b in range(BODIES):
        batch = events[b * BATCH : (b + 1) * BATCH]
        for i, event in enumerate(batch):
            event["auditID"] = f"{b:04x}{i:04x}-0000-4000-8000-{reviews.TOKEN}"
        texts.append(reviews.event_list(batch).decode())
    return texts


def parse_floor(seconds: float) -> tuple[float, float, float]:
    """Events/s of ``orjson.loads`` over the bodies, of serve's own EventList parser (context), and
    of ``orjson.loads`` per CPU second, each in a process pinned like the server."""
    done = subprocess.run(
        pinned(CPU_SERVER, [str(PYTHON), "-m", "bench.audit_ingest", "--floor", str(seconds)]),
        capture_output=True,
        text=True,
        check=True,
    )
    orjson_rate, parser_rate, orjson_cpu_rate = done.stdout.strip().splitlines()[-1].split()
    return float(orjson_rate), float(parser_rate), float(orjson_cpu_rate)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _floor_main(seconds: float) -> None:
    import gc

    from webhook.inputs.eventlist import parse_event_list

    bodies = [t.replace(reviews.TOKEN, str(n)).encode() for n, t in enumerate(templates())]
    events = sum(len(orjson.loads(b)["items"]) for b in bodies) / len(bodies)
    orjson_floor(bodies, 0.5)  # warm up
    cpu = time.process_time()
    parsed, elapsed = orjson_floor(bodies, seconds)
    cpu = time.process_time() - cpu
    gc.freeze()  # as serve does
    gc.set_threshold(10_000, 10, 10)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        for body in bodies:
            parse_event_list(body)
        done += len(bodies)
    print(parsed * events / elapsed, done * events / (time.perf_counter() - start), parsed * events / cpu)


def run(seconds: float = SECONDS) -> Section:
    texts = templates()
    size = sum(len(t) for t in texts) / len(texts)
    section = Section(f"3. Audit ingestion (POST /audit, {BATCH}-event EventLists, {size / 1e3:.0f} KB each)")
    floor, validated, floor_cpu = parse_floor(seconds / 2)
    with start_sentinel("serve-audit") as ours:
        # One template per run keeps post.lua simple; rotate the templates over short runs.
        warm = write_parts("audit-0", texts[0], reviews.TOKEN)
        run_wrk(ours.url, warm, path="/audit", start=10**6, seconds=1, connections=4)
        ours.drain()
        before = ours.metrics()
        cpu = _cpu_seconds(ours.proc.pid)
        requests = 0
        elapsed = 0.0
        errors = 0
        per = max(1.0, seconds / 4)
        for k in range(4):
            parts = write_parts(f"audit-{k}", texts[k % len(texts)], reviews.TOKEN)
            result = run_wrk(
                ours.url, parts, path="/audit", start=(k + 2) * 10**6, seconds=per, connections=4
            )
            requests += result.requests
            elapsed += result.seconds
            errors += result.errors
        ours.drain()
        cpu = _cpu_seconds(ours.proc.pid) - cpu
        after = ours.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    accepted = delta("ua_sentinel_audit_events_total")
    rate = accepted / elapsed
    processed = delta("ua_sentinel_detector_events_total")
    dropped = delta("ua_sentinel_audit_events_dropped_total")
    ratio = rate / floor
    verdict = "met" if ratio >= GOAL else f"**missed** by {GOAL - ratio:.0%} points"
    add = section.add
    add("| what | events/s | ratio |")
    add("|---|---|---|")
    add(
        f"| ours: /audit accepted ({requests:,} EventLists, wrk -c4) | {rate:,.0f} "
        f"| **{ratio:.0%} of the floor** (goal >= 50%: {verdict}) |"
    )
    add(f"| floor: orjson.loads of the same bodies, one core | {floor:,.0f} | - |")
    cpu_rate = processed / cpu if cpu else 0.0
    add(
        f"| per CPU second (load-proof): ours, events taken in and detected per second of serve's CPU "
        f"| {cpu_rate:,.0f} | **{cpu_rate / floor_cpu:.0%} of orjson.loads per CPU second** "
        f"({floor_cpu:,.0f}) |"
    )
    add(
        f"| context: serve's parser alone (`parse_event_list`) | "
        f"{validated:,.0f} | {validated / floor:.0%} of the floor: the ceiling before indexing "
        "and detection |"
    )
    add("")
    add(
        f"Of the {accepted:,.0f} events accepted, the detector thread processed {processed:,.0f} and dropped "
        f"{dropped:,.0f} (queue full); the RequestIndex saw every RequestReceived. wrk errors: {errors}."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--floor", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args()
    if args.floor:
        _floor_main(args.floor)
        return
    run(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
