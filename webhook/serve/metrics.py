"""Prometheus metrics for ``serve`` (prometheus-client), on a registry of their own.

Per-request numbers (reviews by verdict, handler latency) are instruments updated by the
handlers; component state (join index, detector queue, allowlist, sinks, certificate) is read
from the components at scrape time by :class:`StateCollector`, so components stay free of
metrics code. What ``tail`` exposes too (findings, sinks, allowlist) comes from
:mod:`webhook.sinks.metrics`, so both processes name and label it alike. A registry per
:class:`Metrics` lets tests run several servers in one process.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, get_args

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.core.allowlist import AnnotatedVerdict, Mode
from webhook.core.cache import CacheStats
from webhook.core.live_allowlist import AllowlistStatus
from webhook.serve.feed import FeedStats
from webhook.serve.join import IndexStats
from webhook.serve.tls import CertificateState
from webhook.sinks.metrics import (
    PREFIX,
    allowlist_metrics,
    cache_metrics,
    counter,
    findings_metrics,
    gauge,
    sink_metrics,
)
from webhook.sinks.outbox import Outbox

__all__ = ["CONTENT_TYPE", "LoopHistogram", "Metrics", "StateCollector", "StateSources"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: Final = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5),
    *(5.0, 10.0, 20.0, 30.0),
)
"""Up to 30 s, the apiserver's longest webhook timeout, so a p99 near any timeoutSeconds can be
seen (the chart's UASentinelWebhookLatencyNearTimeout alert)."""
JOIN_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25)
"""Finer around the apiserver's 20 ms audit batch wait, which bounds most joins."""

# No *_created series: they double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class StateSources:
    """Where :class:`StateCollector` reads each component's status."""

    index: Callable[[], tuple[IndexStats, int]]
    feed: Callable[[], tuple[FeedStats, int]]
    allowlist: Callable[[], AllowlistStatus]
    certificate: Callable[[], CertificateState]
    outboxes: Sequence[Outbox]
    caches: Callable[[], Mapping[str, CacheStats]] = dict
    """The agent caches' stats by name (bounded by bytes and entries)."""


class StateCollector(Collector):
    """Reads component state at scrape time."""

    def __init__(self, sources: StateSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        stats, pending = self.sources.index()
        yield counter("join_hits", "Admission calls that found their request's audit event.", stats.hits)
        yield counter("join_misses", "Admission calls answered unknown: no audit event joined.", stats.misses)
        yield counter(
            "join_ambiguous",
            "Admission calls matching pending requests with different agents.",
            stats.ambiguous,
        )
        yield counter("join_waits", "Admission calls that awaited a late audit event.", stats.waited)
        evictions = CounterMetricFamily(
            f"{PREFIX}_join_evictions", "Pending requests dropped unanswered.", labels=["reason"]
        )
        evictions.add_metric(["ttl"], stats.evicted_ttl)
        evictions.add_metric(["cap"], stats.evicted_cap)
        yield evictions
        yield counter("join_consumed", "Pending requests consumed by their admission call.", stats.consumed)
        yield counter(
            "join_completed", "Pending requests removed by their ResponseComplete.", stats.completed
        )
        yield gauge("join_pending", "RequestReceived events waiting for an admission call.", pending)
        yield counter(
            "join_late_events",
            "RequestReceived events for requests already finished (kept stale: never matched alone).",
            stats.ignored_finished,
        )
        yield counter(
            "join_conflicting_events",
            "RequestReceived events repeating a pending audit ID with another agent or request.",
            stats.conflicting,
        )

        feed, queued = self.sources.feed()
        yield counter("detector_events", "Audit events processed by the detector.", feed.events)
        yield counter("audit_events_dropped", "Audit events dropped: detector queue full.", feed.dropped)
        yield counter(
            "detector_skipped", "Audit events the detector could not take (skipped).", feed.detector_errors
        )
        yield from findings_metrics(feed.by_rule)
        yield counter("sink_errors", "Findings a sink failed to deliver.", feed.sink_errors)
        yield gauge("detector_queue", "Audit events waiting for the detector.", queued)
        yield from allowlist_metrics(self.sources.allowlist())
        yield from sink_metrics(self.sources.outboxes)
        yield from cache_metrics(self.sources.caches())

        cert = self.sources.certificate()
        yield gauge(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use (Unix time).",
            cert.not_after or 0.0,
        )
        yield counter("certificate_reloads", "Serving certificate changes applied.", cert.reloads)
        yield counter("certificate_reload_errors", "Certificate changes refused (old kept).", cert.errors)


class LoopHistogram:
    """A histogram updated on the event loop thread only (the handlers' and ``/metrics``' thread).

    One observation is a bisect and two additions (~0.5 us); prometheus-client's Histogram takes
    ~1.4 us for it (a lock per value), and ``/validate`` makes two per review.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        """Per bucket (not cumulative); the last one is ``+Inf``."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        total = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        family.add_metric(list(labels), buckets, self.sum)


class _HandlerCollector(Collector):
    """The instruments the handlers update without a lock (see :class:`LoopHistogram`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        reviews = CounterMetricFamily(
            f"{PREFIX}_admission_reviews",
            "Admission reviews answered, by verdict, mode and whether the request was allowed.",
            labels=["verdict", "mode", "allowed"],
        )
        for (verdict, allowed), count in m.review_counts.items():
            reviews.add_metric([verdict, m.mode, "true" if allowed else "false"], count)
        yield reviews
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Handler latency, from the handler's start to its response handed to the server.",
            labels=["handler"],
        )
        m.validate_latency.add_to(latency, ["validate"])
        m.audit_latency.add_to(latency, ["audit"])
        yield latency
        join = HistogramMetricFamily(
            f"{PREFIX}_join_duration_seconds",
            "Time an admission call spent finding (or awaiting) its audit event.",
        )
        m.join_wait.add_to(join, [])
        yield join


class Metrics:
    """Instruments updated by the handlers, plus :class:`StateCollector` once sources are known.

    What every review updates (its count, the join wait, the handler latency) is plain numbers
    on the event loop thread, turned into metrics at scrape time (:class:`LoopHistogram`); the
    rare error counters are prometheus-client Counters. Every series exists from the start, at
    0: reviews for this process's ``mode``, latency per handler.
    """

    def __init__(self, mode: Mode) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.review_errors = Counter(
            f"{PREFIX}_admission_errors",
            "Admission calls not answered with a verdict (bad_request, too_large, client_cert, "
            "disconnected), "
            "or answered unknown after an internal error (internal).",
            ["reason"],
            registry=self.registry,
        )
        self.audit_requests = Counter(
            f"{PREFIX}_audit_requests",
            "POST /audit requests, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.audit_events = Counter(
            f"{PREFIX}_audit_events", "Audit events received on /audit.", registry=self.registry
        )
        self.audit_malformed = Counter(
            f"{PREFIX}_audit_events_malformed", "Audit events skipped as invalid.", registry=self.registry
        )
        self.mode = mode
        self.validate_latency = LoopHistogram(LATENCY_BUCKETS)
        self.audit_latency = LoopHistogram(LATENCY_BUCKETS)
        self.join_wait = LoopHistogram(JOIN_BUCKETS)
        self.review_counts: dict[tuple[AnnotatedVerdict, bool], int] = {
            (verdict, allowed): 0 for verdict in get_args(AnnotatedVerdict) for allowed in (True, False)
        }
        self.registry.register(_HandlerCollector(self))

    def reviewed(self, verdict: AnnotatedVerdict, allowed: bool) -> None:
        """Count one answered admission review (on the event loop thread)."""
        self.review_counts[verdict, allowed] += 1

    def watch(self, sources: StateSources) -> None:
        self.registry.register(StateCollector(sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)
