"""The Detector's tuning: windows, caps and rule thresholds (no I/O, nothing heavy imported).

Kept apart from :mod:`webhook.detect.detector` so that the command line can show these defaults
in its help without importing the Detector and the audit and finding models behind it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["CLOCK_SAMPLES", "DEFAULT_CONFIG", "DetectorConfig"]

CLOCK_SAMPLES = 5
"""Event times the clock's median is taken over: two outliers in any five are outvoted."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DetectorConfig:
    window: dt.timedelta = dt.timedelta(minutes=10)
    """How long refusals (or denied-agent successes) of one user+agent+source fold together."""
    max_windows: int = 10_000
    """Open windows kept; past this the oldest is closed early and counted as evicted."""
    max_audit_ids: int = 20
    max_distinct: int = 32
    """Distinct verbs / resources listed per finding (more are counted, not listed)."""
    burst_threshold: int = 10
    """forbidden-burst: distinct refused URIs of one user+agent that make an enumeration."""
    burst_window: dt.timedelta = dt.timedelta(seconds=60)
    max_bursts: int = 10_000
    related_ttl: dt.timedelta = dt.timedelta(hours=1)
    max_related: int = 4096
    """Principals whose webhook-flagged requests are remembered (correlation)."""
    clock_lead: dt.timedelta = dt.timedelta(minutes=10)
    """How far one event may move the clock ahead of the median of the last
    :data:`CLOCK_SAMPLES` event times (an outlier cannot close every window at once)."""
    known_bad: bool = True
    """known-bad-agent on. It needs every line whose agent may be denied, which costs the
    replay fast path one RE2 pass over each block (about 1.3 GB/s per core)."""


DEFAULT_CONFIG = DetectorConfig()
