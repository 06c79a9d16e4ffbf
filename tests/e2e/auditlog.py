"""Reading the apiserver's audit log files: the live `audit.log` plus its rotated siblings.

The apiserver (lumberjack) rotates `audit.log` to `audit-<UTC timestamp>.log` once it passes
`--audit-log-maxsize`; the timestamp format sorts chronologically by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["AuditEvent", "audit_log_files", "read_audit_events", "rotated_audit_logs"]

AuditEvent = dict[str, Any]


def rotated_audit_logs(live: Path) -> list[Path]:
    """Rotated files of `live` (e.g. audit-2026-11-27T18-10-45.450.log), oldest first."""
    return sorted(live.parent.glob(f"{live.stem}-*{live.suffix}"))


def audit_log_files(live: Path) -> list[Path]:
    """Rotated files oldest first, then the live file if it exists."""
    return rotated_audit_logs(live) + ([live] if live.exists() else [])


def read_audit_events(files: Iterable[Path]) -> list[AuditEvent]:
    """Parses JSON lines; a last line still being written (no newline yet) is left for later.

    A rotated file can vanish (maxbackup) between listing and reading; it is skipped.
    """
    events: list[AuditEvent] = []
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        complete, _, _partial = data.rpartition(b"\n")
        events.extend(json.loads(line) for line in complete.splitlines() if line.strip())
    return events
