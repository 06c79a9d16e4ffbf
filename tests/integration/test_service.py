"""Probes, metrics, detection through /audit, and graceful shutdown of a real `serve` process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Launch
from tests.integration.server import PKI, wait_for
from tests.integration.traffic import admission, audit_batch, recorded, with_audit_id
from tests.tailer.endpoints import endpoint, falcosidekick


def test_health_ready_and_metrics_after_a_replay(launch: Launch) -> None:
    server = launch("--mode", "warn")
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        for item in recorded():
            assert client.post(item.path, content=item.raw).status_code == 200
        ready = client.get("/readyz")
        metrics = client.get("/metrics")
    assert ready.status_code == 200
    doc = ready.json()
    assert doc["ready"] is True and doc["mode"] == "warn"
    assert doc["certificate"]["loaded"] is True and doc["certificate"]["notAfter"] > 0
    assert doc["allowlist"]["source"] == "built-in default allowlist" and len(doc["allowlist"]["hash"]) == 12
    assert metrics.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    events = sum(len(i.body["items"]) for i in recorded() if i.route == "/audit")
    reviews = sum(1 for i in recorded() if i.route == "/validate")
    assert value("ua_sentinel_audit_events_total") == events
    assert value("ua_sentinel_join_hits_total") == reviews
    assert value("ua_sentinel_join_misses_total") == 0
    assert value("ua_sentinel_admission_reviews_total", verdict="listed", mode="warn", allowed="true") == 7
    assert value("ua_sentinel_admission_reviews_total", verdict="denied", mode="warn", allowed="true") == 3
    assert value("ua_sentinel_request_duration_seconds_count", handler="validate") == reviews
    assert value("ua_sentinel_request_duration_seconds_count", handler="audit") == len(recorded()) - reviews
    assert value("ua_sentinel_allowlist_loaded") == 1
    assert value("ua_sentinel_allowlist_reload_errors_total") == 0
    assert value("ua_sentinel_certificate_expiry_timestamp_seconds") == doc["certificate"]["notAfter"]
    wait_for(
        lambda: server.metric("ua_sentinel_detector_events_total") == events, timeout=10, what="detector"
    )
    assert server.metric("ua_sentinel_findings_total") == len(server.findings()) > 0


def test_an_event_the_detector_cannot_take_is_counted_and_costs_no_other_finding(launch: Launch) -> None:
    """A refusal dated 9999-12-31 (no date can hold it with a window added) is skipped and counted;
    the refusals before and after it are still findings."""
    server = launch("--mode", "warn")
    with server.client() as client:
        client.post("/audit", json=with_audit_id(audit_batch(1398), "before"))
        client.post(
            "/audit",
            json=with_audit_id(
                audit_batch(1398),
                "far-future",
                userAgent="future/1.0",
                stageTimestamp="9999-12-31T23:59:59.999999Z",
                requestReceivedTimestamp="9999-12-31T23:59:59.999999Z",
            ),
        )
        client.post("/audit", json=with_audit_id(audit_batch(1398), "after", userAgent="after/1.0"))
    wait_for(lambda: server.metric("ua_sentinel_detector_skipped_total") == 1, timeout=10, what="the skip")
    wait_for(lambda: server.metric("ua_sentinel_detector_events_total") == 3, timeout=10, what="detector")
    server.stop()
    agents = {f["user_agent"]["original"] for f in server.findings()}
    assert {"python-requests/2.34.2", "after/1.0"} <= agents and "future/1.0" not in agents


def test_shutdown_finishes_in_flight_requests_and_flushes_findings(launch: Launch, tmp_path: Path) -> None:
    server = launch("--join-wait", "2")
    refusal = audit_batch(1398)  # mallory, python-requests/2.34.2, list secrets: 403 forbid
    with server.client() as client:
        client.post("/audit", json=refusal)
        client.post("/audit", json=with_audit_id(audit_batch(1398), "second-refusal"))
        wait_for(lambda: server.findings(), timeout=10, what="the first finding")
    results: dict[str, Any] = {}

    def in_flight() -> None:
        with server.client() as client:
            results["answer"] = client.post("/validate", json=admission(1405))  # awaits 2 s

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_for(lambda: server.metric("ua_sentinel_join_waits_total") == 1, timeout=10, what="the wait")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    thread.join()
    assert results["answer"].status_code == 200
    assert server.process.wait(60) == -signal.SIGTERM
    findings = server.findings()
    assert [f["event"]["sequence"] for f in findings] == [1, 2]  # the window's total, on shutdown
    assert findings[1]["event"]["count"] == 2 and findings[0]["event"]["id"] == findings[1]["event"]["id"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", verify=server.ssl_context())


def test_findings_go_to_every_configured_sink(launch: Launch, tmp_path: Path) -> None:
    out = tmp_path / "findings.jsonl"
    server = launch("--sink", f"file:{out}", "--sink", "stdout")
    with server.client() as client:
        client.post("/audit", json=audit_batch(1398))  # mallory's python-requests probe: a finding
    wait_for(lambda: out.exists() and out.read_text().strip(), timeout=10, what="the file sink")
    wait_for(server.findings, timeout=10, what="the stdout sink")
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["user"]["name"] == "mallory"
    assert server.metric("ua_sentinel_sink_delivered_total", sink=f"file:{out}") == 1
    assert server.metric("ua_sentinel_sink_delivered_total", sink="stdout") == 1


def test_serve_names_its_cluster_in_every_sink(launch: Launch) -> None:
    with endpoint(falcosidekick, fail_first=1) as sidekick:
        server = launch("--cluster-name", "prod-eu-1", "--sink", f"falcosidekick:{sidekick.url}/")
        with server.client() as client:
            client.post("/audit", json=audit_batch(1398))
        wait_for(lambda: [r for r in sidekick.received if r.status == 200], timeout=30, what="falcosidekick")
    (accepted,) = [json.loads(r.body) for r in sidekick.received if r.status == 200]
    assert accepted["output_fields"]["orchestrator.cluster.name"] == "prod-eu-1"
    assert accepted["output_fields"]["ka.user.name"] == "mallory"
    assert accepted["output"].startswith("ua-sentinel cluster prod-eu-1: ")


def test_a_bad_sink_is_a_start_up_error(tmp_path: Path, pki: PKI) -> None:
    argv = [sys.executable, "-m", "webhook", "serve", "--tls-cert", str(pki.serving.cert)]
    argv += ["--tls-key", str(pki.serving.key), "--port", "0", "--sink", "carrier-pigeon:coo"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--sink unknown sink 'carrier-pigeon'" in done.stderr
