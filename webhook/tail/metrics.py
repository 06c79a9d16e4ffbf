"""Prometheus metrics of ``ua-sentinel tail`` (``--metrics-port``), on their own registry.

Read from the tailer at scrape time (:meth:`Tailer.status`, its outboxes), as ``serve`` reads its
components; findings, sinks and the allowlist come from :mod:`webhook.sinks.metrics`, so both
processes name and label them alike. Counters count since the process started; the tailer's
running totals in the checkpoint survive restarts, so the two can differ after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from webhook.core.live_allowlist import AllowlistStatus
from webhook.sinks.metrics import PREFIX, allowlist_metrics, counter, findings_metrics, gauge, sink_metrics
from webhook.tail.queues import QueueFollower
from webhook.tail.streams import SourceStats
from webhook.tail.tailer import Tailer

__all__ = ["TailCollector", "TailMetrics", "source_metrics"]


def source_metrics(stats: Mapping[str, SourceStats], now: float) -> Iterator[Metric]:
    """Per cloud source (label ``source``, e.g. ``cloudwatch:/aws/eks/prod/cluster``)."""
    events = CounterMetricFamily(
        f"{PREFIX}_source_events", "Audit events read from a source.", labels=["source"]
    )
    requests = CounterMetricFamily(
        f"{PREFIX}_source_requests", "Calls made to a source's API (failed ones too).", labels=["source"]
    )
    errors = CounterMetricFamily(
        f"{PREFIX}_source_errors",
        "Failed calls to a source, by kind (throttled, unavailable, denied, not-found, error).",
        labels=["source", "kind"],
    )
    lag = GaugeMetricFamily(
        f"{PREFIX}_source_lag_seconds",
        "Wall clock minus the newest event time read from a source (0 before the first).",
        labels=["source"],
    )
    success = GaugeMetricFamily(
        f"{PREFIX}_source_last_success_timestamp_seconds",
        "When a call to a source last succeeded (Unix time; 0 before the first).",
        labels=["source"],
    )
    for label, item in dict(stats).items():
        events.add_metric([label], item.events)
        requests.add_metric([label], item.requests)
        counts = dict(item.errors)  # a copy: the reading thread may add a kind meanwhile
        for kind in dict.fromkeys(("throttled", "unavailable", "denied", "not-found", "error", *counts)):
            errors.add_metric([label, kind], counts.get(kind, 0))
        newest = item.newest_event
        lag.add_metric([label], max(0.0, now - newest) if newest is not None else 0.0)
        success.add_metric([label], item.last_success)
    yield from (events, requests, errors, lag, success)


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
        if self.tailer.streams is not None:
            yield from source_metrics(self.tailer.streams.stats, time.time())
        if isinstance(self.tailer.streams, QueueFollower):
            redelivered = CounterMetricFamily(
                f"{PREFIX}_source_redelivered",
                "Messages delivered again after they were read (skipped and acknowledged).",
                labels=["source"],
            )
            for label, count in dict(self.tailer.streams.redelivered).items():
                redelivered.add_metric([label], count)
            yield redelivered


class TailMetrics:
    """The registry; :meth:`serve` may start before the tailer exists, :meth:`watch` adds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def watch(self, tailer: Tailer, allowlist: Callable[[], AllowlistStatus] | None = None) -> None:
        self.registry.register(TailCollector(tailer, allowlist))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Start the HTTP exposition server (a daemon thread); returns what prometheus-client does."""
        return start_http_server(port, addr=addr, registry=self.registry)
