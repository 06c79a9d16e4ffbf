"""Prometheus metrics of ``ua-sentinel tail`` (``--metrics-port``), on their own registry.

Counters are cumulative over the process; the tailer also keeps its own running totals in the
checkpoint (they survive restarts), so the two can differ after a restart.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ["TailMetrics"]


class TailMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines = Counter("ua_sentinel_tail_lines", "Audit log lines read.", registry=r)
        self.bytes = Counter("ua_sentinel_tail_bytes", "Audit log bytes read.", registry=r)
        self.malformed = Counter(
            "ua_sentinel_tail_malformed", "Lines or records that are not usable audit events.", registry=r
        )
        self.rotations = Counter(
            "ua_sentinel_tail_rotations", "Rotations followed (rename or copy-truncate).", registry=r
        )
        self.unreadable = Counter(
            "ua_sentinel_tail_unreadable_files", "Rotated files that could not be read.", registry=r
        )
        self.lost = Counter(
            "ua_sentinel_tail_lost_files", "Files gone (or truncated without a copy) before read.", registry=r
        )
        self.findings = Counter("ua_sentinel_findings", "Findings emitted, by rule.", ["rule"], registry=r)
        self.checkpoint_errors = Counter(
            "ua_sentinel_tail_checkpoint_errors",
            "Checkpoints that could not be written (full or failing disk under --state).",
            registry=r,
        )
        self.sink_failures = Counter(
            "ua_sentinel_sink_failures", "Failed delivery attempts, by sink.", ["sink"], registry=r
        )
        self.sink_dropped = Counter(
            "ua_sentinel_sink_dropped",
            "Findings dropped because a sink's backlog was full.",
            ["sink"],
            registry=r,
        )
        self.sink_backlog = Gauge(
            "ua_sentinel_sink_backlog", "Findings waiting for a sink.", ["sink"], registry=r
        )
        self.lag_bytes = Gauge(
            "ua_sentinel_tail_checkpoint_lag_bytes",
            "Bytes of the current file after the last checkpoint (re-read after a crash, or unread).",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "ua_sentinel_tail_checkpoint_lag_seconds",
            "Seconds since the last checkpoint was written.",
            registry=r,
        )
        self.event_lag = Gauge(
            "ua_sentinel_tail_event_lag_seconds",
            "Wall clock minus the newest event time read (how far behind the log the tailer is).",
            registry=r,
        )
        self.open_windows = Gauge("ua_sentinel_open_windows", "Open aggregation windows.", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Start the HTTP exposition server (a daemon thread); returns what prometheus-client does."""
        return start_http_server(port, addr=addr, registry=self.registry)
