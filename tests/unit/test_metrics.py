"""The metrics of ``serve`` and ``tail``: read at scrape time, parsed by prometheus-client's own
parser, and what both processes expose (findings, sinks, allowlist) named, typed and labelled alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tests.tailer.conftest import ACCEPTANCE_ALLOWLIST, fixture_lines, wait_for
from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import RULES, Finding
from webhook.core.live_allowlist import LiveAllowlist
from webhook.detect.detector import Detector
from webhook.serve.feed import FeedStats
from webhook.serve.join import IndexStats
from webhook.serve.metrics import JOIN_BUCKETS, LoopHistogram, Metrics, StateSources
from webhook.serve.tls import CertificateState
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import SinkSpec, open_sink, parse_sink
from webhook.tail.checkpoint import CheckpointStore
from webhook.tail.metrics import TailMetrics
from webhook.tail.tailer import TailConfig, Tailer

SHARED = {
    "ua_sentinel_findings": ("counter", {"rule"}),
    "ua_sentinel_sink_delivered": ("counter", {"sink"}),
    "ua_sentinel_sink_failures": ("counter", {"sink"}),
    "ua_sentinel_sink_dropped": ("counter", {"sink"}),
    "ua_sentinel_sink_backlog": ("gauge", {"sink"}),
    "ua_sentinel_sink_suppressed": ("counter", {"sink"}),
    "ua_sentinel_allowlist_loaded": ("gauge", set()),
    "ua_sentinel_allowlist_reloads": ("counter", set()),
    "ua_sentinel_allowlist_reload_errors": ("counter", set()),
    "ua_sentinel_allowlist_last_reload_failed": ("gauge", set()),
    "ua_sentinel_allowlist_info": ("gauge", {"hash", "source"}),
    "ua_sentinel_allowlist_expired_entries": ("gauge", set()),
}


class Families(dict[str, Any]):
    """A scrape parsed by prometheus-client's parser: family name → Metric."""

    @classmethod
    def of(cls, text: bytes) -> Families:
        return cls({family.name: family for family in text_string_to_metric_families(text.decode())})

    def value(self, sample_name: str, **labels: str) -> float:
        (value,) = [
            sample.value
            for family in self.values()
            for sample in family.samples
            if sample.name == sample_name and sample.labels == labels
        ]
        return float(value)


class Refusing:
    """A sink whose every delivery fails (the outbox counts and retries)."""

    def deliver(self, finding: Finding) -> None:
        raise OSError("down")

    def close(self) -> None:
        pass


def _serve_scrape(outboxes: list[Outbox]) -> Families:
    metrics = Metrics("warn")
    stats = FeedStats(events=10, by_rule={"unusual-agent-forbidden": 3})
    live = LiveAllowlist(default_allowlist(), fallback=default_allowlist())
    metrics.watch(
        StateSources(
            index=lambda: (IndexStats(hits=2), 1),
            feed=lambda: (stats, 0),
            allowlist=live.status,
            certificate=lambda: CertificateState(loaded=True, not_after=1.0, reloads=0, errors=0),
            outboxes=outboxes,
        )
    )
    return Families.of(metrics.render())


def _tailer(tmp_path: Path, log: bytes) -> Tailer:
    (tmp_path / "audit.log").write_bytes(log)
    spec = parse_sink(f"file:{tmp_path / 'findings.jsonl'}")
    return Tailer(
        TailConfig(path=str(tmp_path / "audit.log"), state_dir=str(tmp_path / "state"), from_start=True),
        Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST)),
        [(spec, open_sink(spec))],
        store=CheckpointStore(tmp_path / "state"),
    )


def _read_all(tailer: Tailer) -> None:
    while (batch := tailer.follower.read()).lines or batch.consumed:
        tailer._deliver(tailer._detect(batch))


def _tail_scrape(tailer: Tailer, live: LiveAllowlist | None = None) -> Families:
    metrics = TailMetrics()
    metrics.watch(tailer, live.status if live is not None else None)
    return Families.of(generate_latest(metrics.registry))


def test_serve_and_tail_expose_the_shared_metrics_with_the_same_names_types_labels_and_help(
    tmp_path: Path,
) -> None:
    outbox = Outbox(SinkSpec("stdout"), open_sink(SinkSpec("stdout")))
    try:
        serve = _serve_scrape([outbox])
    finally:
        outbox.close()
    tailer = _tailer(tmp_path, b"".join(fixture_lines()))
    try:
        _read_all(tailer)
        tail = _tail_scrape(tailer, LiveAllowlist(default_allowlist()))
    finally:
        tailer.shutdown()
    for name, (kind, labels) in SHARED.items():
        assert serve[name].type == tail[name].type == kind, name
        assert serve[name].documentation == tail[name].documentation, name
        for family in (serve[name], tail[name]):
            assert family.samples, name
            assert all(set(sample.labels) == labels for sample in family.samples), name
    # Every known rule has a series from the start, in both processes.
    for families in (serve, tail):
        assert {s.labels["rule"] for s in families["ua_sentinel_findings"].samples} == set(RULES)
    assert serve.value("ua_sentinel_findings_total", rule="unusual-agent-forbidden") == 3
    assert serve.value("ua_sentinel_findings_total", rule="forbidden-burst") == 0
    assert tail.value("ua_sentinel_findings_total", rule="unusual-agent-forbidden") > 0
    sink = f"file:{tmp_path / 'findings.jsonl'}"
    assert tail.value("ua_sentinel_sink_backlog", sink=sink) >= 0
    assert serve.value("ua_sentinel_sink_delivered_total", sink="stdout") == 0


def test_the_outbox_counts_are_read_at_scrape_time() -> None:
    outbox = Outbox(SinkSpec("http", "https://hooks.example/secret"), Refusing(), max_backlog=1)
    try:
        outbox.put([_a_finding()] * 3)  # once failing, past max_backlog the oldest are dropped
        wait_for(lambda: outbox.failures >= 1 and outbox.dropped == 2, timeout=10, what="a failure")
        scrape = _serve_scrape([outbox])
    finally:
        outbox.close()
    label = "http:https://hooks.example/..."
    assert scrape.value("ua_sentinel_sink_failures_total", sink=label) >= 1
    assert scrape.value("ua_sentinel_sink_dropped_total", sink=label) == 2
    assert scrape.value("ua_sentinel_sink_backlog", sink=label) == 1


def _a_finding() -> Finding:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    for line in fixture_lines():
        for finding in detector.process(parse_event(line)):
            return finding
    raise AssertionError("the fixture has no finding")


def test_tail_counts_since_the_process_started_while_the_checkpoint_keeps_running_totals(
    tmp_path: Path,
) -> None:
    lines = fixture_lines()
    first = _tailer(tmp_path, b"".join(lines))
    _read_all(first)
    status = first.status()
    assert status.lines == len(lines) and status.bytes == sum(map(len, lines))
    assert sum(status.findings.values()) > 0
    first.shutdown()

    again = _tailer(tmp_path, b"".join(lines))  # resumes at the end: nothing new to read
    try:
        _read_all(again)
        assert again.totals.values["lines"] == len(lines)  # the checkpoint's running total
        scrape = _tail_scrape(again)
    finally:
        again.shutdown()
    assert scrape.value("ua_sentinel_tail_lines_total") == 0
    assert scrape.value("ua_sentinel_findings_total", rule="unusual-agent-forbidden") == 0
    assert "ua_sentinel_allowlist_loaded" not in scrape  # no live allowlist given


def test_the_handlers_lock_free_histogram_exposes_what_prometheus_clients_would() -> None:
    """LoopHistogram replaced prometheus-client's Histogram on the /validate path: same samples."""
    values = [0.0, 0.0004, 0.0005, 0.00051, 0.02, 0.025, 0.3, 7.0]
    reference = CollectorRegistry()
    theirs = Histogram("h_seconds", "help", buckets=JOIN_BUCKETS, registry=reference)
    ours = LoopHistogram(JOIN_BUCKETS)
    for value in values:
        theirs.observe(value)
        ours.observe(value)

    class Ours(Collector):
        def collect(self) -> Any:
            family = HistogramMetricFamily("h_seconds", "help")
            ours.add_to(family, [])
            yield family

    mine = CollectorRegistry()
    mine.register(Ours())
    assert generate_latest(mine) == generate_latest(reference)
