"""Audit volume of ua-sentinel's lean policy against "Metadata for everything", on a real kube-apiserver.

The same read-heavy mix runs on a fresh control plane (tests/e2e harness: etcd + kube-apiserver
1.20, log backend) under each policy: 1,000 requests, 85% get/list of configmaps, 10% lists of
pods, 5% writes (creates of configmaps, a fifth of them refused: mallory has no rights). Counted:
the audit events and bytes the apiserver wrote for those requests (its own loopback traffic
excluded), per 1,000 API requests. Then detection and the join are shown to lose nothing: the two
logs replayed through `ua-sentinel replay` give the same findings, and every write still has
its RequestReceived (what the admission join looks up).

    python -m bench.audit_volume            # prints a Markdown section; --append adds it to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.common import OUT

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 1000
FULL_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
PROBE_AGENT = "python-requests/2.31.0"
USERS = {"admin", "dev-alice", "mallory"}


def _mix(cp: Any) -> None:
    """The 1,000 requests, in a fixed order (the same in both runs)."""
    base = "/api/v1/namespaces/team"
    with (
        cp.client("dev-alice", user_agent="kubectl/v1.20.2 (linux/amd64) kubernetes/faecb19") as alice,
        cp.client("mallory", user_agent=PROBE_AGENT) as mallory,
    ):
        alice.post(f"{base}/configmaps", json={"metadata": {"name": "seed"}, "data": {"k": "v"}})
        for i in range(REQUESTS - 1):
            slot = i % 100
            if slot < 85:
                alice.get(f"{base}/configmaps/seed" if slot % 2 else f"{base}/configmaps")
            elif slot < 95:
                alice.get(f"{base}/pods")
            elif slot < 99:
                name = f"w-{uuid.uuid4().hex[:8]}"
                alice.post(f"{base}/configmaps", json={"metadata": {"name": name}, "data": {"k": "v"}})
            else:
                mallory.post(f"{base}/configmaps", json={"metadata": {"name": "nope"}, "data": {"k": "v"}})


def _run(policy: str, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.e2e.harness import ControlPlane
    from tests.e2e.tools import ensure_binaries

    bins = ensure_binaries(progress=sys.stderr)
    cp = ControlPlane(bins, workdir, audit_policy=policy, audit_log_maxsize_mb=200)
    try:
        cp.start()
        offset = cp.audit_log.stat().st_size
        _mix(cp)
    finally:
        cp.stop()
    raw = cp.audit_log.read_bytes()[offset:]
    lines = [line for line in raw.splitlines() if line.strip()]
    ours = [(line, json.loads(line)) for line in lines]
    ours = [(line, e) for line, e in ours if e["user"]["username"] in USERS]
    mix_log = workdir / "mix.log"
    mix_log.write_bytes(b"".join(line + b"\n" for line, _ in ours))
    writes = {e["auditID"] for _, e in ours if e["verb"] == "create"}
    received = {e["auditID"] for _, e in ours if e["verb"] == "create" and e["stage"] == "RequestReceived"}
    return {
        "events": len(ours),
        "bytes": sum(len(line) + 1 for line, _ in ours),
        "writes": len(writes),
        "writes_with_received": len(received & writes),
        "log": mix_log,
    }


def _findings(log: Path, allowlist: Path) -> list[tuple[str, str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "replay", "--allowlist", str(allowlist), str(log)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    found = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return sorted((f["rule"]["name"], f["user"]["name"], f["user_agent"]["original"]) for f in found)


def measure() -> str:
    workdir = OUT / "audit-volume"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    from tests.e2e.sentinel import write_allowlist
    from webhook.tools.apiserver_config import AUDIT_POLICY

    lean = _run(AUDIT_POLICY, workdir / "lean")
    full = _run(FULL_POLICY, workdir / "full")
    allowlist = write_allowlist(workdir / "allowlist.yaml", ["kubectl/*"])
    lean_findings, full_findings = _findings(lean["log"], allowlist), _findings(full["log"], allowlist)
    per = 1000 / REQUESTS
    rows = [
        f"| {name} | {r['events'] * per:,.0f} | {r['bytes'] * per / 1024:,.0f} KiB | "
        f"{r['writes_with_received']}/{r['writes']} |"
        for name, r in (
            ("Metadata for everything", full),
            ("ua-sentinel lean (reads omit RequestReceived)", lean),
        )
    ]
    return "\n".join(
        [
            "### Audit volume: lean policy vs Metadata for everything (`python -m bench.audit_volume`)",
            "",
            f"{REQUESTS:,} requests on the real kube-apiserver 1.20 (85% get/list configmaps, 10% list pods,",
            "5% creates, a fifth of them refused); events and bytes the apiserver logged for them.",
            "",
            "| policy | events / 1,000 requests | bytes / 1,000 requests | writes with RequestReceived |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Lean / full: events **{lean['events'] / full['events']:.2f}x**, "
            f"bytes **{lean['bytes'] / full['bytes']:.2f}x**. Findings from `ua-sentinel replay` of each "
            f"log: {len(full_findings)} (full) and {len(lean_findings)} (lean), "
            f"{'identical' if lean_findings == full_findings else 'DIFFERENT'}: {full_findings[:3]}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the section to bench/RESULTS.md")
    args = parser.parse_args()
    text = measure()
    print(text)
    if args.append:
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
