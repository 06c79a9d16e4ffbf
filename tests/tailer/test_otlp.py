"""The otlp sink against a real local OTLP/HTTP endpoint that decodes every body with the official
``opentelemetry-proto`` classes (``ExportLogsServiceRequest``), through the outbox that retries
it after the endpoint failed; and OTLP's rule that a partial success is never retried."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import DATASET, Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import ClusterSink
from webhook.sinks.otlp import SEVERITY_NUMBER, OtlpSink, logs_url
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import parse_sink

from .conftest import ACCEPTANCE_ALLOWLIST, fixture_lines


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    out = [f for line in fixture_lines() for f in detector.process(parse_event(line))]
    return out + detector.flush()


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP logs receiver: decodes the protobuf body (400 if it does not decode), answers
    an ``ExportLogsServiceResponse``; scripted statuses first (503s: the collector is down)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        with server.lock:
            scripted = server.script.pop(0) if server.script else None
            try:
                request = ExportLogsServiceRequest.FromString(body)
                status = scripted or 200
            except Exception:
                request, status = None, 400
            server.requests.append((self.path, self.headers.get("Content-Type"), request, status))
        reply = ExportLogsServiceResponse()
        if server.reject:
            reply.partial_success.rejected_log_records = 1
            reply.partial_success.error_message = "attribute limit exceeded"
        data = reply.SerializeToString() if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    httpd.lock = threading.Lock()
    httpd.script = []
    httpd.requests = []
    httpd.reject = False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _nanos(timestamp: str) -> int:
    when = dt.datetime.fromisoformat(timestamp)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def test_every_finding_reaches_the_collector_after_it_failed(collector: Any, findings: list[Finding]) -> None:
    collector.script = [503, 502, 503]
    spec = parse_sink(f"otlp:{collector.url}")
    outbox = Outbox(spec, ClusterSink(OtlpSink(spec.target), "prod-eu-1"))
    outbox.put(findings)
    assert outbox.drain(timeout=60)
    outbox.close()

    assert outbox.failures == 3
    assert {(r[0], r[1]) for r in collector.requests} == {("/v1/logs", "application/x-protobuf")}
    accepted = [r[2] for r in collector.requests if r[3] == 200]
    assert len(accepted) == len(findings) and all(r[3] in (200, 502, 503) for r in collector.requests)
    seen = []
    for request, finding in zip(accepted, findings, strict=True):
        (resource_logs,) = request.resource_logs
        resource = {kv.key: _plain(kv.value) for kv in resource_logs.resource.attributes}
        assert resource["service.name"] == "ua-sentinel" and resource["k8s.cluster.name"] == "prod-eu-1"
        (scope_logs,) = resource_logs.scope_logs
        assert scope_logs.scope.name == "ua-sentinel"
        (record,) = scope_logs.log_records
        attributes = {kv.key: _plain(kv.value) for kv in record.attributes}
        seen.append((attributes["event.id"], attributes["event.sequence"]))
        assert attributes["orchestrator.cluster.name"] == "prod-eu-1"
        assert attributes["data_stream.dataset"] == attributes["event.dataset"] == DATASET
        assert attributes["user_agent.display"] == finding.user_agent.display
        assert attributes["kubernetes.audit.verb"] == finding.kubernetes["audit"]["verb"]
        assert attributes["threat"][0]["tactic"]["id"] == "TA0002"
        assert record.severity_text == finding.ua_sentinel["severity"]
        assert record.severity_number == SEVERITY_NUMBER[finding.ua_sentinel["severity"]]
        assert record.time_unix_nano == _nanos(finding.timestamp)
        assert record.body.string_value.startswith("ua-sentinel cluster prod-eu-1: ")
    assert seen == [(f.id, f.event.sequence) for f in findings]  # in order, none lost, none twice


def test_a_rejected_record_is_logged_not_retried(
    collector: Any, findings: list[Finding], caplog: pytest.LogCaptureFixture
) -> None:
    """OTLP/HTTP: a partial success must not be retried (it would be rejected forever)."""
    collector.reject = True
    outbox = Outbox(parse_sink(f"otlp:{collector.url}"), OtlpSink(collector.url))
    with caplog.at_level("ERROR", logger="webhook.sinks.otlp"):
        outbox.put(findings[:2])
        assert outbox.drain(timeout=30)
    outbox.close()
    assert len(collector.requests) == 2 and outbox.failures == 0
    rejected = [r for r in caplog.records if r.name == "webhook.sinks.otlp"]
    assert len(rejected) == 2 and "rejected" in rejected[0].getMessage()
    assert rejected[0].fields == {"findingId": findings[0].id, "reason": "attribute limit exceeded"}  # type: ignore[attr-defined]


def test_the_logs_path_is_added_only_to_a_bare_endpoint() -> None:
    assert logs_url("http://collector:4318") == "http://collector:4318/v1/logs"
    assert logs_url("https://collector:4318/") == "https://collector:4318/v1/logs"
    assert logs_url("https://gw.example/otlp/v1/logs") == "https://gw.example/otlp/v1/logs"
