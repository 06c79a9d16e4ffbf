"""Shared test helpers: paths to the recorded kube-apiserver traffic in tests/data/."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
AUDIT_LOGS = [DATA / "audit" / "audit-2026-11-27T18-10-45.450.log", DATA / "audit" / "audit.log"]
"""The apiserver's rotated file first, then the live file: arrival order."""


@pytest.fixture
def audit_lines() -> list[bytes]:
    return [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
