"""``make bench``: every benchmark of issue 6 in one run, a dated section appended to RESULTS.md.

python -m bench.run              # all six, ~12 minutes on the 2-core dev machine
python -m bench.run --only 2,3   # some of them (still appended)
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from collections.abc import Callable

from bench import admission_latency, audit_ingest, join_latency, memory, profiles, replay_throughput
from bench.common import Section, append_results

STEPS: dict[str, Callable[[], Section]] = {
    "1": replay_throughput.run,
    "2": admission_latency.run,
    "3": audit_ingest.run,
    "4": join_latency.run,
    "5": memory.run,
    "6": profiles.run,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated item numbers (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(STEPS)
    started = time.monotonic()
    load = os.getloadavg()
    sections: list[Section] = []
    for key in chosen:
        print(f"\n== item {key}", flush=True)
        began = time.monotonic()
        try:
            section = STEPS[key]()
        except Exception as exc:
            traceback.print_exc()
            section = Section(f"{key}. failed")
            section.add(f"The benchmark failed: `{exc!r}`"[:500])
        section.add("")
        section.add(f"_(item {key}: {time.monotonic() - began:.0f} s)_")
        sections.append(section)
    total = time.monotonic() - started
    note = (
        f"`make bench` wall time: **{total / 60:.1f} min** (items {', '.join(chosen)}). "
        f"Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min). "
        "Servers run pinned to CPU 0 and load generators (wrk) to CPU 1 with taskset; other "
        "processes on this shared machine are not excluded, so every figure has its baseline from "
        "the same run and minutes, and ratios are the claim."
    )
    print(f"\n{note}")
    if not args.dry_run:
        append_results(sections, note=note)


if __name__ == "__main__":
    main()
