"""Replay throughput: `ua-sentinel replay` against jq (what users reach for) and grep (raw scan).

Goal (issue 6): >= 10x jq's line rate and >= 25% of grep's, with the same findings as the
unoptimised path (tests/unit/test_replay.py asserts that equality).
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import OUT, VENV_BIN, Section, ensure_apt, time_command
from bench.generate import generate

JQ_FILTER = 'select(.responseStatus.code==403 and .annotations["authorization.k8s.io/decision"]=="forbid")'


def run(lines: int = 1_000_000, seed: int = 7, repeat: int = 3) -> Section:
    ensure_apt("jq")
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"audit-{lines}-{seed}.log"
    if not log.exists():
        generate(lines, seed, log)
    size = log.stat().st_size
    section = Section(f"1. Replay throughput ({lines:,} generated lines, {size / 1e6:.0f} MB, seed {seed})")

    ours_runs: list[float] = []
    grep_runs: list[float] = []
    for _ in range(repeat):  # alternating, so a burst of load on the shared machine hits both
        seconds, out = time_command([str(VENV_BIN / "ua-sentinel"), "replay", str(log)], repeat=1)
        ours_runs.append(seconds)
        grep_runs.append(time_command(["grep", "-c", '"code":403', str(log)], repeat=1)[0])
    ours, grep = statistics.median(ours_runs), statistics.median(grep_runs)
    jq, jq_out = time_command(["jq", "-c", JQ_FILTER, str(log)], repeat=1)

    def rate(seconds: float) -> str:
        return f"{lines / seconds / 1e3:,.0f}k lines/s, {size / seconds / 1e6:,.0f} MB/s ({seconds:.2f} s)"

    section.add("| tool | rate | ratio |")
    section.add("|---|---|---|")
    section.add(f"| ua-sentinel replay | {rate(ours)} | - |")
    section.add(f"| jq select 403+forbid | {rate(jq)} | ours = **{jq / ours:.1f}x jq** (goal >= 10x) |")
    section.add(
        f"| grep -c '\"code\":403' | {rate(grep)} | ours = **{grep / ours:.0%} of grep** (goal >= 25%) |"
    )
    section.add(
        f"\nMedians of {repeat} alternating runs; ours "
        + " / ".join(f"{t:.2f}" for t in ours_runs)
        + " s, grep "
        + " / ".join(f"{t:.2f}" for t in grep_runs)
        + " s."
    )
    section.add(
        f"Findings: {len(out.splitlines())} lines from {len(jq_out.splitlines())} forbidden events "
        "(aggregated per user+agent+source; default allowlist)."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of ours and grep")
    args = parser.parse_args()
    run(args.lines, args.seed, args.repeat)


if __name__ == "__main__":
    main()
