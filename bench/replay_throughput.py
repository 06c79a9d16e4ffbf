"""Replay throughput: `ua-sentinel replay` against jq (what users reach for) and grep (raw scan).

Goal (issue 6): >= 10x jq's line rate and >= 25% of grep's, with the same findings as the
unoptimised path (tests/unit/test_replay_fast_path.py asserts that equality).
"""

from __future__ import annotations

import argparse

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

    ours, out = time_command([str(VENV_BIN / "ua-sentinel"), "replay", str(log)], repeat=repeat)
    grep, _ = time_command(["grep", "-c", '"code":403', str(log)], repeat=repeat)
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
        f"\nFindings: {len(out.splitlines())} lines from {len(jq_out.splitlines())} forbidden events "
        "(aggregated per user+agent+source; default allowlist)."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    run(args.lines, args.seed)


if __name__ == "__main__":
    main()
