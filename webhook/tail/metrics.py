"""Prometheus metrics of ``ua-sentinel tail`` (``--metrics-port``), on their own registry.

Read from the tailer at scrape time (:meth:`Tailer.status`, its outboxes), as ``serve`` reads its
components; findings, sinks and the allowlist come from :mod:`webhook.sinks.metrics`, so both
processes name and label them alike. Counters count since the process started; the tailer's
running totals in the checkpoint survive restarts, so the two can differ after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from webhook.core.live_allowlist import AllowlistStatus
from webhook.sinks.metrics import allowlist_metrics, counter, findings_metrics, gauge, sink_metrics
from webhook.tail.tailer import Tailer

__all__ = ["TailCollector", "TailMetrics"]


class TailCollector(Collector):
    """Reads the tailer's status (and the live allowlist's, when there is one) at scrape time."""

    def __init__(self, tailer: Tailer, allowlist: Callable[[], AllowlistStatus] | None = None) -> None:
        self.tailer = tailer
        self.allowlist = allowlist

    def collect(self) -> Iterator[Metric]:
        status = self.tailer.status()
        yield counter("tail_lines", "Audit log lines read.", status.lines)
        yield counter("tail_bytes", "Audit log bytes read.", status.bytes)
        yield counter(
            "tail_malformed", "Lines or records that are not usable audit events.", status.malformed
        )
        yield counter("tail_rotations", "Rotations followed (rename or copy-truncate).", status.rotations)
        yield counter("tail_unreadable_files", "Rotated files that could not be read.", status.unreadable)
        yield counter("tail_lost_files", "Files gone (or truncated without a copy) before read.", status.lost)
        yield counter(
            "tail_checkpoint_errors",
            "Checkpoints that could not be written (full or failing disk under --state).",
            status.checkpoint_errors,
        )
        yield from findings_metrics(status.findings)
        yield from sink_metrics(self.tailer.outboxes)
        if self.allowlist is not None:
            yield from allowlist_metrics(self.allowlist())
        yield gauge(
            "tail_checkpoint_lag_bytes",
            "Bytes of the current file after the last checkpoint (re-read after a crash, or unread).",
            status.checkpoint_lag_bytes,
        )
        yield gauge(
            "tail_checkpoint_lag_seconds",
            "Seconds since the last checkpoint was written.",
            status.checkpoint_lag_seconds,
        )
        yield gauge(
            "tail_event_lag_seconds",
            "Wall clock minus the newest event time read (how far behind the log the tailer is).",
            status.event_lag_seconds,
        )
        yield gauge("open_windows", "Open aggregation windows.", status.open_windows)


class TailMetrics:
    """The registry; :meth:`serve` may start before the tailer exists, :meth:`watch` adds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def watch(self, tailer: Tailer, allowlist: Callable[[], AllowlistStatus] | None = None) -> None:
        self.registry.register(TailCollector(tailer, allowlist))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Start the HTTP exposition server (a daemon thread); returns what prometheus-client does."""
        return start_http_server(port, addr=addr, registry=self.registry)
