"""The otlp sink against a real local OTLP/HTTP endpoint that decodes every body with the official
``opentelemetry-proto`` classes (``ExportLogsServiceRequest``), through the outbox that retries
it after the endpoint failed; and OTLP's rule that a partial success is never retried."""

from __future__ import annotations

import datetime as dt

import pytest

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import DATASET, Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import ClusterSink
from webhook.sinks.otlp import SEVERITY_NUMBER, OtlpSink, logs_url
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import parse_sink

from .conftest import ACCEPTANCE_ALLOWLIST, fixture_lines
from .endpoints import endpoint, otlp_collector, otlp_records


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    out = [f for line in fixture_lines() for f in detector.process(parse_event(line))]
    return out + detector.flush()


def _nanos(timestamp: str) -> int:
    when = dt.datetime.fromisoformat(timestamp)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def test_every_finding_reaches_the_collector_after_it_failed(findings: list[Finding]) -> None:
    with endpoint(otlp_collector(), fail_first=3) as collector:
        spec = parse_sink(f"otlp:{collector.url}")
        outbox = Outbox(spec, ClusterSink(OtlpSink(spec.target), "prod-eu-1"))
        outbox.put(findings)
        assert outbox.drain(timeout=60)
        outbox.close()

    assert outbox.failures == 3 and [r.status for r in collector.received[:3]] == [503, 503, 503]
    assert all(r.status == 200 for r in collector.received[3:])
    assert {(r.path, r.content_type) for r in collector.received} == {("/v1/logs", "application/x-protobuf")}
    assert all(len(r.request.resource_logs) == 1 for r in collector.received)  # one finding per request
    records = otlp_records(collector.received)
    seen = [(attributes["event.id"], attributes["event.sequence"]) for _, _, attributes in records]
    assert seen == [(f.id, f.event.sequence) for f in findings]  # in order, none lost, none twice
    for (resource, record, attributes), finding in zip(records, findings, strict=True):
        assert resource["service.name"] == "ua-sentinel" and resource["k8s.cluster.name"] == "prod-eu-1"
        assert attributes["orchestrator.cluster.name"] == "prod-eu-1"
        assert attributes["data_stream.dataset"] == attributes["event.dataset"] == DATASET
        assert attributes["user_agent.display"] == finding.user_agent.display
        assert attributes["kubernetes.audit.verb"] == finding.kubernetes["audit"]["verb"]
        assert attributes["threat"][0]["tactic"]["id"] == "TA0002"
        assert record.severity_text == finding.ua_sentinel["severity"]
        assert record.severity_number == SEVERITY_NUMBER[finding.ua_sentinel["severity"]]
        assert record.time_unix_nano == _nanos(finding.timestamp)
        assert record.body.string_value.startswith("ua-sentinel cluster prod-eu-1: ")


def test_a_rejected_record_is_logged_not_retried(
    findings: list[Finding], caplog: pytest.LogCaptureFixture
) -> None:
    """OTLP/HTTP: a partial success must not be retried (it would be rejected forever)."""
    with endpoint(otlp_collector(reject=True)) as collector:
        outbox = Outbox(parse_sink(f"otlp:{collector.url}"), OtlpSink(collector.url))
        with caplog.at_level("ERROR", logger="webhook.sinks.otlp"):
            outbox.put(findings[:2])
            assert outbox.drain(timeout=30)
        outbox.close()
    assert len(collector.received) == 2 and outbox.failures == 0
    rejected = [r for r in caplog.records if r.name == "webhook.sinks.otlp"]
    assert len(rejected) == 2 and "rejected" in rejected[0].getMessage()
    fields = rejected[0].fields  # type: ignore[attr-defined]
    assert fields == {"findingId": findings[0].id, "reason": "attribute limit exceeded"}


def test_the_logs_path_is_added_only_to_a_bare_endpoint() -> None:
    assert logs_url("http://collector:4318") == "http://collector:4318/v1/logs"
    assert logs_url("https://collector:4318/") == "https://collector:4318/v1/logs"
    assert logs_url("https://gw.example/otlp/v1/logs") == "https://gw.example/otlp/v1/logs"
