"""Start-up of `ua-sentinel check` and `replay` of a one-line log: a "before" tree against "after".

Issue 15's goal: each finishes in under half the time of main at 2d29900. Both trees run by the
same interpreter, `PYTHONPATH` pointing at each, from a scratch directory (so `-m` does not pick
up a working directory's package), in alternating pairs (before, after, before, ...) after three
warm-ups; every pair gives a ratio, and the medians are the claim. Process CPU (user + system,
from the children's rusage) is reported beside wall time: on a shared machine it moves less.

    git worktree add --detach /tmp/before-2d29900 2d29900
    python -m bench.startup --before /tmp/before-2d29900 --after . --pairs 30
    python -m bench.startup --before /tmp/before-2d29900 --after . --importtime 5
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT

COMMANDS = {
    "check (built-in list as a file)": ["check", "--allowlist", "{allow}", "kubectl/v1.30.0"],
    "check (built-in list)": ["check", "kubectl/v1.30.0"],
    "check (own list: a glob and a product entry)": ["check", "--allowlist", "{own}", "kubectl/v1.30.0"],
    "replay (one refusal)": ["replay", "{one}"],
}
OWN_LIST = 'agents:\n  - "kubectl/*"\n  - product: helm\n    minVersion: v3.0.0\n'


def _files(scratch: Path) -> dict[str, str]:
    allow = scratch / "allow.yaml"
    allow.write_bytes((ROOT / "webhook" / "data" / "default-allowlist.yaml").read_bytes())
    own = scratch / "own.yaml"
    own.write_text(OWN_LIST)
    one = scratch / "one.log"
    one.write_bytes((ROOT / "tests" / "data" / "audit" / "audit.log").read_bytes().splitlines(True)[1])
    return {"allow": str(allow), "own": str(own), "one": str(one)}


def _run(tree: Path, argv: list[str], scratch: Path, *, importtime: bool = False) -> tuple[float, float, str]:
    """(wall s, CPU s, stderr) of one run of ``python -m webhook ARGV`` on ``tree``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    flags = ["-X", "importtime"] if importtime else []
    result = subprocess.run(
        [sys.executable, *flags, "-m", "webhook", *argv],
        cwd=scratch,
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(argv)} failed: {result.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, result.stderr


def _spread(values: list[float], unit: float = 1.0, fmt: str = "{:.3f}") -> str:
    return " / ".join(fmt.format(v * unit) for v in (min(values), statistics.median(values), max(values)))


def pairs(before: Path, after: Path, count: int, scratch: Path, files: dict[str, str]) -> None:
    print(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "| command | before wall: min / median / max (s) | after wall | after/before per pair: "
        "min / **median** / max | CPU before / after (median ms) | CPU ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name, template in COMMANDS.items():
        argv = [part.format(**files) for part in template]
        for _ in range(3):
            _run(before, argv, scratch)
            _run(after, argv, scratch)
        runs: dict[Path, list[tuple[float, float]]] = {before: [], after: []}
        for _ in range(count):
            for tree in (before, after):
                wall, cpu, _ = _run(tree, argv, scratch)
                runs[tree].append((wall, cpu))
        walls_b, walls_a = [w for w, _ in runs[before]], [w for w, _ in runs[after]]
        cpu_b = statistics.median(c for _, c in runs[before])
        cpu_a = statistics.median(c for _, c in runs[after])
        ratios = [a / b for a, b in zip(walls_a, walls_b, strict=True)]
        low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
        print(
            f"| {name} | {_spread(walls_b)} | {_spread(walls_a)} | {low:.2f} / **{mid:.2f}** / {high:.2f} "
            f"| {cpu_b * 1e3:.0f} / {cpu_a * 1e3:.0f} | {cpu_a / cpu_b:.2f} |"
        )
    print(f"load average at end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


def importtime(tree: Path, runs: int, scratch: Path, files: dict[str, str], top: int = 12) -> None:
    """Medians over ``runs`` of ``python -X importtime``: the modules with the largest cumulative time."""
    for name, template in COMMANDS.items():
        argv = [part.format(**files) for part in template]
        cumulative: dict[str, list[float]] = collections.defaultdict(list)
        own: dict[str, list[float]] = collections.defaultdict(list)
        counts = []
        for _ in range(runs):
            modules = 0
            for line in _run(tree, argv, scratch, importtime=True)[2].splitlines():
                if not line.startswith("import time:") or "cumulative" in line:
                    continue
                self_us, cumulative_us, module = line.removeprefix("import time:").split("|")
                cumulative[module.strip()].append(int(cumulative_us) / 1000)
                own[module.strip()].append(int(self_us) / 1000)
                modules += 1
            counts.append(modules)
        print(f"\n{name}, {tree} ({statistics.median(counts):.0f} modules):\n")
        print("| module | cumulative | self |\n|---|---|---|")
        for module in sorted(cumulative, key=lambda m: -statistics.median(cumulative[m]))[:top]:
            total, alone = statistics.median(cumulative[module]), statistics.median(own[module])
            print(f"| {module} | {total:.1f} | {alone:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="checkout of the base (2d29900)")
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--importtime", type=int, default=0, metavar="RUNS", help="print importtime tables")
    args = parser.parse_args()
    for tree in (args.before, args.after):
        # Without its package the tree's PYTHONPATH adds nothing and the venv's editable install
        # runs instead: both sides would be the same code, every ratio 1.0.
        if not (tree / "webhook" / "__init__.py").is_file():
            parser.error(f"{tree}: no webhook/ package there (make it with git worktree add)")
    with tempfile.TemporaryDirectory() as scratch:
        files = _files(Path(scratch))
        if args.importtime:
            for tree in (args.before.resolve(), args.after.resolve()):
                importtime(tree, args.importtime, Path(scratch), files)
        else:
            pairs(args.before.resolve(), args.after.resolve(), args.pairs, Path(scratch), files)


if __name__ == "__main__":
    main()
