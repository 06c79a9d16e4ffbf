"""Shared test helpers: paths to the recorded kube-apiserver traffic in tests/data/, and the
JSON log records of a process's stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis' per-example deadline and its too_slow / large_base_example health checks are
# wall-clock thresholds: on a starved CI machine (the e2e build or a busy loop on the other core)
# they fail tests whose behaviour is fine. Examples still run; only the timing verdicts go.
settings.register_profile(
    "suite",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large],
)
settings.load_profile("suite")

DATA = Path(__file__).parent / "data"
AUDIT_LOGS = [DATA / "audit" / "audit-2026-11-27T18-10-45.450.log", DATA / "audit" / "audit.log"]
"""The apiserver's rotated file first, then the live file: arrival order."""


def log_records(stderr: str) -> list[dict[str, Any]]:
    """Every complete line of ``stderr`` as the JSON record a log pipeline sees, fields included
    (a line that is not JSON fails the test: logs are structured)."""
    complete, _, _ = stderr.rpartition("\n")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


@pytest.fixture
def audit_lines() -> list[bytes]:
    return [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
