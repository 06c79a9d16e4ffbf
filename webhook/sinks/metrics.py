"""The Prometheus metrics ``serve`` and ``tail`` both expose, defined once so both processes give
them the same names, types and labels: findings by rule, each sink's outbox, the live allowlist.

Every ua-sentinel metric is read from the component that keeps the number, at scrape time: a
process's collector calls these builders with the components' status (:class:`Outbox` counters,
:class:`AllowlistStatus`, a count per rule), so components never import metrics code and no
number is kept twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from webhook.core.cache import CacheStats
from webhook.core.findings import RULES
from webhook.core.live_allowlist import AllowlistStatus
from webhook.sinks.outbox import Outbox

__all__ = [
    "PREFIX",
    "allowlist_metrics",
    "cache_metrics",
    "counter",
    "findings_metrics",
    "gauge",
    "sink_metrics",
]

PREFIX: Final = "ua_sentinel"


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter ``ua_sentinel_<name>`` (exposed as ``..._total``)."""
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """An unlabelled gauge ``ua_sentinel_<name>``."""
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def findings_metrics(by_rule: Mapping[str, int]) -> Iterator[Metric]:
    """``ua_sentinel_findings_total{rule}``; every known rule has a series from the start, at 0."""
    family = CounterMetricFamily(
        f"{PREFIX}_findings", "Findings handed to the sinks, by rule.", labels=["rule"]
    )
    counts = dict(by_rule)  # a copy: the detecting thread may add a rule meanwhile
    for rule in {**dict.fromkeys(RULES), **dict.fromkeys(counts)}:
        family.add_metric([rule], counts.get(rule, 0))
    yield family


def sink_metrics(outboxes: Iterable[Outbox]) -> Iterator[Metric]:
    """Per sink (label ``sink``, its :attr:`SinkSpec.label`: no secret in it): what its outbox counted
    and holds."""
    delivered = CounterMetricFamily(f"{PREFIX}_sink_delivered", "Findings a sink accepted.", labels=["sink"])
    failures = CounterMetricFamily(
        f"{PREFIX}_sink_failures", "Failed delivery attempts (each retried with backoff).", labels=["sink"]
    )
    dropped = CounterMetricFamily(
        f"{PREFIX}_sink_dropped", "Findings dropped: the sink's backlog overflowed.", labels=["sink"]
    )
    backlog = GaugeMetricFamily(f"{PREFIX}_sink_backlog", "Findings waiting for a sink.", labels=["sink"])
    suppressed = CounterMetricFamily(
        f"{PREFIX}_sink_suppressed",
        "Findings a sink did not write to stay fair: their principal was over its share of the "
        "file (file sinks only).",
        labels=["sink"],
    )
    for outbox in outboxes:
        label = [outbox.spec.label]
        delivered.add_metric(label, outbox.delivered)
        failures.add_metric(label, outbox.failures)
        dropped.add_metric(label, outbox.dropped)
        backlog.add_metric(label, len(outbox))
        suppressed.add_metric(label, getattr(outbox.sink, "suppressed", 0))
    yield from (delivered, failures, dropped, backlog, suppressed)


def allowlist_metrics(allow: AllowlistStatus) -> Iterator[Metric]:
    """The live allowlist: loaded, version applied, changes refused, expired entries."""
    yield gauge("allowlist_loaded", "1 when an allowlist is loaded.", 1.0 if allow.loaded else 0.0)
    yield counter("allowlist_reloads", "Allowlist versions applied.", allow.reloads)
    yield counter("allowlist_reload_errors", "Allowlist changes refused (last good kept).", allow.errors)
    yield gauge(
        "allowlist_last_reload_failed",
        "1 when the latest change was refused.",
        1.0 if allow.last_error else 0.0,
    )
    info = GaugeMetricFamily(f"{PREFIX}_allowlist_info", "The allowlist in force.", labels=["hash", "source"])
    if allow.loaded:
        info.add_metric([allow.hash or "", allow.source or ""], 1.0)
    yield info
    yield gauge("allowlist_expired_entries", "Entries past their expires date.", len(allow.expired_entries))


def cache_metrics(caches: Mapping[str, CacheStats]) -> Iterator[Metric]:
    """``ua_sentinel_cache_{bytes,entries,evictions}{cache}``: the agent caches, which are bounded
    by bytes as well as entries (their keys are attacker text)."""
    held = GaugeMetricFamily(f"{PREFIX}_cache_bytes", "Bytes held by each agent cache.", labels=["cache"])
    entries = GaugeMetricFamily(f"{PREFIX}_cache_entries", "Entries in each agent cache.", labels=["cache"])
    evictions = CounterMetricFamily(
        f"{PREFIX}_cache_evictions", "Entries dropped to keep within the bounds.", labels=["cache"]
    )
    for name, stats in caches.items():
        held.add_metric([name], stats.bytes)
        entries.add_metric([name], stats.entries)
        evictions.add_metric([name], stats.evictions)
    yield from (held, entries, evictions)
