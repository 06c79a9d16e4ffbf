"""The falcosidekick sink against a real local HTTP server that judges each body as falcosidekick
does (``falco_payload.py``: 400 for what its decoder and ``Check()`` refuse), through the outbox
that retries it after the endpoint failed."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import ClusterSink
from webhook.sinks.falcosidekick import PRIORITY, FalcosidekickSink, falco_payload
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import parse_sink

from .conftest import ACCEPTANCE_ALLOWLIST, fixture_lines
from .falco_payload import falco_payload_errors


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    out = [f for line in fixture_lines() for f in detector.process(parse_event(line))]
    return out + detector.flush()


class Falcosidekick(http.server.BaseHTTPRequestHandler):
    """falcosidekick's ``/``: 400 for a payload it would refuse, 200 otherwise; the first
    statuses can be scripted (503s) to play an endpoint that is down."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        with server.lock:
            scripted = server.script.pop(0) if server.script else None
            errors = falco_payload_errors(body)
            status = scripted or (400 if errors else 200)
            server.requests.append((self.path, self.headers.get("Content-Type"), body, status, errors))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def sidekick() -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Falcosidekick)
    httpd.lock = threading.Lock()
    httpd.script = []
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_the_checker_refuses_what_falcosidekick_refuses() -> None:
    good = {
        "output": "x",
        "priority": "Warning",
        "rule": "r",
        "time": "2026-11-29T21:30:44.123456789Z",
        "output_fields": {"ka.verb": "get"},
        "source": "k8saudit",
        "tags": ["a"],
    }
    assert falco_payload_errors(json.dumps(good).encode()) == []
    for change in (
        {"priority": "high"},
        {"priority": 3},
        {"time": "2026-11-29 21:30:44"},
        {"time": "2026-13-29T21:30:44Z"},
        {"output_fields": {}},
        {"output_fields": {"k8s.ns.name": 5}},
        {"rule": ""},
        {"tags": "a"},
        {"hostname": 1},
    ):
        assert falco_payload_errors(json.dumps({**good, **change}).encode()), change


def test_every_finding_reaches_falcosidekick_after_it_failed(sidekick: Any, findings: list[Finding]) -> None:
    sidekick.script = [503, 503, 503]
    spec = parse_sink(f"falcosidekick:{sidekick.url}")
    outbox = Outbox(spec, ClusterSink(FalcosidekickSink(spec.target), "prod-eu-1"))
    outbox.put(findings)
    assert outbox.drain(timeout=60)
    outbox.close()

    assert outbox.failures == 3
    assert [r[3] for r in sidekick.requests[:3]] == [503, 503, 503]
    accepted = [r for r in sidekick.requests if r[3] == 200]
    refused = [r for r in sidekick.requests if r[3] == 400]
    assert refused == [], refused[0][4] if refused else None
    assert {r[0] for r in sidekick.requests} == {"/"}
    assert {r[1] for r in sidekick.requests} == {"application/json"}
    payloads = [json.loads(r[2]) for r in accepted]
    got = [(p["output_fields"]["event.id"], p["output_fields"]["event.sequence"]) for p in payloads]
    assert got == [(f.id, f.event.sequence) for f in findings]  # in order, none lost, none twice
    for payload, finding in zip(payloads, findings, strict=True):
        assert payload["priority"] == PRIORITY[finding.ua_sentinel["severity"]]
        assert payload["rule"] == finding.rule.name and payload["source"] == "k8saudit"
        assert "ua-sentinel" in payload["tags"] and "T1613" in payload["tags"]
        fields = payload["output_fields"]
        assert fields["orchestrator.cluster.name"] == "prod-eu-1"
        assert fields["ka.useragent"] == finding.user_agent.display
        assert fields["ka.user.name"] == finding.user.name
        assert fields["ka.verb"] == finding.kubernetes["audit"]["verb"]
        assert payload["output"].startswith("ua-sentinel cluster prod-eu-1: ")


def test_policy_report_subjects_come_from_k8saudit_fields(findings: list[Finding]) -> None:
    """falcosidekick's PolicyReport output names the subject from ka.target.{resource,name,namespace}."""
    finding = next(f for f in findings if f.kubernetes["audit"].get("objectRef"))
    ref = {"resource": "secrets", "namespace": "kube-system", "name": "admin-token"}
    audit = {**finding.kubernetes["audit"], "objectRef": ref}
    named = finding.model_copy(update={"kubernetes": {"audit": audit}})
    fields = falco_payload(named)["output_fields"]
    assert fields["ka.target.resource"] == "secrets" and fields["ka.target.name"] == "admin-token"
    assert fields["ka.target.namespace"] == "kube-system"
    assert "k8s.ns.name" not in fields  # falcosidekick type-asserts it; the k8saudit name is used


def test_an_agent_shaped_to_fool_a_reader_reaches_chat_escaped(findings: list[Finding]) -> None:
    spoof = next(f for f in findings if f.user_agent.original and "\u202e" in f.user_agent.original)
    text = json.dumps(falco_payload(spoof), ensure_ascii=False)
    assert "\u202e" not in text and "\\\\u202e" in text
