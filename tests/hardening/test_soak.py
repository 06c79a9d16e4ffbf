"""Load and soak: 300 admission reviews/s plus 2,000 audit events/s, each stream from its own
process, against a real `serve` over TLS. Asserted: zero 5xx, zero unanswered, flat memory.
Recorded (printed, never asserted): latency p50/p99/max and the server's RSS over time.

`make test` runs 60 s; `make soak` runs 10 minutes (UA_SENTINEL_SOAK_SECONDS=600).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.hardening.audit_events import ALLOWLIST
from tests.hardening.conftest import Launch
from tests.integration.server import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("UA_SENTINEL_SOAK_SECONDS", "60"))
ADMISSION_RATE = 300.0
AUDIT_RATE = 2000.0
MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _generator(
    stream: str, server: ServeProcess, rate: float, t0: float, out: Path, log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "tests.hardening.loadgen",
        stream,
        "--url",
        server.url,
        "--ca",
        str(server.ca),
        "--rate",
        str(rate),
        "--admission-rate",
        str(ADMISSION_RATE),
        "--seconds",
        str(SECONDS),
        "--t0",
        str(t0),
        "--out",
        str(out),
    ]
    with open(log, "wb") as err:
        return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def test_soak_admission_and_audit_load(launch: Launch, tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text(ALLOWLIST)
    server = launch("--allowlist", str(allowlist))
    assert server.process is not None
    pid = server.process.pid
    t0 = time.time() + 2.0
    outs = {stream: tmp_path / f"{stream}.json" for stream in ("admission", "audit")}
    generators = {
        "admission": _generator(
            "admission", server, ADMISSION_RATE, t0, outs["admission"], tmp_path / "a.err"
        ),
        "audit": _generator("audit", server, AUDIT_RATE, t0, outs["audit"], tmp_path / "b.err"),
    }
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            try:
                samples.append((time.time() - t0, rss_bytes(pid)))
            except (OSError, AssertionError):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for stream, proc in generators.items():
            code = proc.wait(timeout=SECONDS + 120)
            assert code == 0, f"{stream} generator exited {code}:\n{(tmp_path / 'a.err').read_text()}"
    finally:
        stop.set()
        sampler.join(5)
        for proc in generators.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    results: dict[str, dict[str, Any]] = {s: json.loads(p.read_bytes()) for s, p in outs.items()}
    admission, audit = results["admission"], results["audit"]

    warm_at = max(10.0, SECONDS / 4)
    warm = next(rss for at, rss in samples if at >= warm_at)
    end = samples[-1][1]
    peak = max(rss for _, rss in samples)
    findings = server.findings()
    metrics = {
        name: server.metric(name)
        for name in (
            "ua_sentinel_join_hits_total",
            "ua_sentinel_join_misses_total",
            "ua_sentinel_join_pending",
            "ua_sentinel_audit_events_total",
            "ua_sentinel_audit_events_dropped_total",
        )
    }
    report = {
        "seconds": SECONDS,
        "admission": admission,
        "audit": audit,
        "rss_mib": {
            "start": round(samples[0][1] / MiB, 1),
            f"warm_at_{warm_at:.0f}s": round(warm / MiB, 1),
            "end": round(end / MiB, 1),
            "peak": round(peak / MiB, 1),
        },
        "findings": len(findings),
        "metrics": metrics,
    }
    print("\nSOAK " + json.dumps(report, indent=1))
    (tmp_path / "soak-report.json").write_text(json.dumps(report, indent=1))

    planned_reviews = int(ADMISSION_RATE * SECONDS)
    assert admission["sent"] == planned_reviews
    assert admission["answered"] == planned_reviews and admission["unanswered"] == 0, admission
    assert admission["server_errors"] == 0 and admission["statuses"] == {"200": planned_reviews}
    assert audit["answered"] == audit["sent"] and audit["unanswered"] == 0, audit
    assert audit["server_errors"] == 0 and set(audit["statuses"]) == {"200"}
    assert audit["items"] >= AUDIT_RATE * SECONDS * 0.99
    assert metrics["ua_sentinel_audit_events_total"] == audit["items"]
    assert metrics["ua_sentinel_audit_events_dropped_total"] == 0
    assert admission["verdicts"].get("listed", 0) > 0 and admission["verdicts"].get("unlisted", 0) > 0
    assert findings, "the refusals of unlisted agents in the audit stream made no finding"
    # Flat memory: after warm-up (index and windows at steady state) RSS grows by less than a
    # quarter, or 32 MiB, whichever is larger.
    assert end <= warm + max(32 * MiB, warm // 4), report["rss_mib"]
    assert server.process.poll() is None
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
    errors = [line for line in server.logs() if line.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
