"""`ua-sentinel tail` as a real child process: bad input survived and counted, shutdown, metrics,
wall-clock closing, allowlist reload, --from-start and other input shapes."""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.unit.test_detector import EXPECTED

from .conftest import findings_in, fixture_lines, replay_findings, wait_for

LINES = fixture_lines()


def agents(findings: list[dict[str, Any]], rule: str = "unusual-agent-forbidden") -> set[tuple[str, Any]]:
    return {
        (f["user"]["name"], f["user_agent"].get("original")) for f in findings if f["rule"]["name"] == rule
    }


def test_partial_huge_binary_and_unreadable_input_is_survived_and_counted(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "audit.log"
    (logs / "audit-2026-11-27T18-00-00.000.log").mkdir()  # an unreadable "backup"
    (logs / "audit-2026-11-27T18-00-01.000.log.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (logs / "audit-2026-11-27T18-00-02.000.log").write_bytes(b"".join(LINES[:800]))
    log.write_bytes(b"")
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--from-start").start()
    with open(log, "ab") as handle:
        handle.write(b"\x00\x01\xfe\xff binary garbage 403 \xc3\x28\n")
        handle.write(b'{"padding":"' + b"x" * (5 * 1024 * 1024) + b'"\n')  # not one JSON object
        handle.write(LINES[800][:-1][:300])  # a partial line ...
        handle.flush()
        wait_for(lambda: tail.stats().get("malformed", 0) >= 2, what="the garbage to be read")
        handle.write(LINES[800][300:])  # ... completed later
        handle.write(b"".join(LINES[801:]))
    wait_for(tail.caught_up, what="catch up")
    assert tail.stop() == 0
    stats = tail.stats()
    assert stats["unreadable"] == 2
    assert stats["malformed"] == 2  # the binary line and the 5 MB line; the partial line was waited for
    assert stats["lines"] == len(LINES) + 1  # the 5 MB line is skipped as it streams by, not a line
    assert agents(findings_in(*tail.stdout_files)) == EXPECTED
    assert "Traceback" not in tail.stderr()


def test_sigterm_drains_and_leaves_a_checkpoint_at_the_end(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(LINES))
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--from-start").start()
    wait_for(tail.caught_up, what="catch up")
    assert tail.stop() == 0
    checkpoint = tail.checkpoint()
    assert checkpoint["position"]["offset"] == log.stat().st_size
    assert checkpoint["detector"]["windows"], "open windows are kept, not flushed, at shutdown"
    restarted = tail.start()
    with open(log, "ab") as handle:
        handle.write(LINES[0])
    wait_for(restarted.caught_up, what="the restarted tailer")
    assert restarted.stop() == 0
    second = findings_in(tail.stdout_files[-1])
    assert second == [], "nothing new: the restart neither re-read nor re-emitted"


def test_metrics_endpoint_reports_lines_rotations_findings_and_lag(
    tmp_path: Path, tail_factory, allowlist_file: Path, free_port: int
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--metrics-port", str(free_port)).start()
    half = len(LINES) // 2
    log.write_bytes(b"".join(LINES[:half]))
    wait_for(tail.caught_up, what="first half")
    os.rename(log, tmp_path / "audit-2026-11-27T18-10-45.450.log")
    log.write_bytes(b"".join(LINES[half:]) + b"not json\n")
    wait_for(tail.caught_up, what="second half")

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    wait_for(lambda: scrape().get("ua_sentinel_tail_rotations_total", 0) >= 1, what="rotation metric")
    metrics = scrape()
    assert metrics["ua_sentinel_tail_lines_total"] == len(LINES) + 1
    assert metrics["ua_sentinel_tail_bytes_total"] == sum(map(len, LINES)) + len(b"not json\n")
    assert metrics["ua_sentinel_tail_malformed_total"] == 1
    assert metrics['ua_sentinel_findings_total{rule="unusual-agent-forbidden"}'] == len(EXPECTED)
    assert metrics['ua_sentinel_sink_failures_total{sink="stdout"}'] == 0
    assert "ua_sentinel_tail_checkpoint_lag_bytes" in metrics
    assert 0 <= metrics["ua_sentinel_tail_checkpoint_lag_seconds"] < 60
    assert metrics["ua_sentinel_allowlist_loaded"] == 1  # the same allowlist metrics as serve's
    assert metrics["ua_sentinel_allowlist_last_reload_failed"] == 0
    assert tail.stop() == 0


def _live(line: bytes, when: dt.datetime, audit_id: str) -> bytes:
    raw = json.loads(line)
    stamp = when.isoformat().replace("+00:00", "Z")
    raw.update(auditID=audit_id, requestReceivedTimestamp=stamp, stageTimestamp=stamp)
    return orjson.dumps(raw) + b"\n"


def test_live_windows_close_by_wall_clock_when_the_log_goes_quiet(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    refusal = next(line for line in LINES if b"python-requests/2.25.1" in line and b'"forbid"' in line)
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    tail = tail_factory(
        log, "--allowlist", str(allowlist_file), "--window", "2", "--grace", "1", "--baseline-days", "0"
    ).start()
    now = dt.datetime.now(dt.UTC)
    log.write_bytes(
        b"".join(_live(refusal, now + dt.timedelta(milliseconds=i), f"live-{i}") for i in range(3))
    )
    wait_for(lambda: len(findings_in(*tail.stdout_files)) == 2, timeout=20, what="the window's total")
    first, total = findings_in(*tail.stdout_files)
    assert first["event"]["id"] == total["event"]["id"]
    assert (first["event"]["sequence"], total["event"]["sequence"], total["event"]["count"]) == (1, 2, 3)
    assert tail.stop() == 0


def again(line: bytes) -> bytes:
    """The same request a day later (new auditID, new windows)."""
    return line.replace(b'"auditID":"', b'"auditID":"again-').replace(b'"2026-11-27T', b'"2026-11-28T')


def test_the_allowlist_file_is_reloaded_when_it_changes(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--baseline-days", "0").start()
    log.write_bytes(b"".join(LINES))
    wait_for(tail.caught_up, what="first pass")
    allowlist_file.write_text('agents: ["kubectl/*", "kube-*", "python-requests/*", "curl/*"]\n')
    wait_for(
        lambda: "allowlist applied" in tail.stderr() and tail.stderr().count("allowlist applied") >= 2,
        what="the reload",
    )
    later = [again(line) for line in LINES]
    with open(log, "ab") as handle:
        handle.write(b"".join(later))
    wait_for(tail.caught_up, what="second pass")
    assert tail.stop() == 0
    found = findings_in(*tail.stdout_files)
    assert {a for _, a in agents(found)} & {"python-requests/2.34.2", "curl/7.88.1"}
    later_agents = {
        f["user_agent"].get("original")
        for f in found
        if f["kubernetes"]["audit"]["auditID"].startswith("again-")
    }
    assert not later_agents & {"python-requests/2.34.2", "curl/7.88.1"}
    assert "peirates/v0.0.0 (linux/amd64) kubernetes/$Format" in later_agents


def test_from_start_with_gzipped_backups_finds_what_replay_finds(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "audit.log"
    with gzip.open(logs / "audit-2026-11-27T18-10-45.450.log.gz", "wb") as gz:
        gz.write(b"".join(LINES[:1000]))
    log.write_bytes(b"".join(LINES[1000:]))
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--from-start").start()
    wait_for(tail.caught_up, what="backfill")
    assert tail.stop() == 0
    whole = tmp_path / "whole.log"
    whole.write_bytes(b"".join(LINES))
    expected = replay_findings(whole, allowlist_file, "--baseline", str(tmp_path / "b.sqlite"))
    got = findings_in(*tail.stdout_files)
    assert {f["event"]["id"] for f in got} == {f["event"]["id"] for f in expected}
    assert {f["rule"]["name"] for f in got} == {"unusual-agent-forbidden", "new-agent-forbidden"}


def test_aks_records_are_tailed_like_apiserver_lines(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    log = tmp_path / "aks.jsonl"
    log.write_bytes(b"")
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--format", "aks").start()
    records = []
    for i in range(0, len(LINES), 50):
        batch = [
            {
                "category": "kube-audit",
                "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
                "properties": {"log": line.decode(), "stream": "stdout", "pod": "kube-apiserver-0"},
            }
            for line in LINES[i : i + 50]
        ]
        batch.append(
            {"category": "kube-apiserver", "properties": {"log": "I0624 20:14:59 wrap.go:47] GET /"}}
        )
        records.append(orjson.dumps({"records": batch}) + b"\n")
    log.write_bytes(b"".join(records))
    wait_for(tail.caught_up, what="records")
    assert tail.stop() == 0
    assert agents(findings_in(*tail.stdout_files)) == EXPECTED
    assert tail.stats()["skipped_records"] == len(records)


class FakeApi(http.server.BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for the allowlist ConfigMap: list, and a short watch."""

    def do_GET(self) -> None:
        server: Any = self.server
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != "/api/v1/namespaces/ua/configmaps":
            self.send_error(404)
            return
        if query.get("watch") == ["true"]:
            time.sleep(0.5)  # the server ends the watch: the source lists again
            body = b""
        else:
            with server.lock:
                text, version = server.text, str(server.version)
            item = {
                "metadata": {"name": "allowlist", "namespace": "ua", "resourceVersion": version},
                "data": {"allowlist.yaml": text},
            }
            body = json.dumps(
                {
                    "kind": "ConfigMapList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": version},
                    "items": [item],
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_the_allowlist_configmap_is_watched(tmp_path: Path, tail_factory) -> None:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    httpd.lock, httpd.text, httpd.version = threading.Lock(), 'agents: ["kubectl/*", "kube-*"]\n', 1
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{httpd.server_address[1]}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
            }
        )
    )
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    env = {"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
    try:
        tail = tail_factory(
            log, "--allowlist-configmap", "ua/allowlist", "--baseline-days", "0", env=env
        ).start()
        wait_for(lambda: "allowlist applied" in tail.stderr(), what="the first list")
        log.write_bytes(b"".join(LINES))
        wait_for(tail.caught_up, what="first pass")
        with httpd.lock:
            httpd.text = 'agents: ["kubectl/*", "kube-*", "python-requests/*", "curl/*"]\n'
            httpd.version = 2
        wait_for(lambda: "resourceVersion 2" in tail.stderr(), what="the changed ConfigMap")
        with open(log, "ab") as handle:
            handle.write(b"".join(again(line) for line in LINES))
        wait_for(tail.caught_up, what="second pass")
        assert tail.stop() == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    found = findings_in(*tail.stdout_files)
    marked = [
        (f["kubernetes"]["audit"]["auditID"].startswith("again-"), f["user_agent"].get("original"))
        for f in found
    ]
    first = {agent for later, agent in marked if not later}
    later_agents = {agent for later, agent in marked if later}
    assert {"python-requests/2.34.2", "curl/7.88.1"} <= first
    assert not {"python-requests/2.34.2", "curl/7.88.1"} & later_agents
    assert "peirates/v0.0.0 (linux/amd64) kubernetes/$Format" in later_agents


def _refusal_at(agent: str, when: str, audit_id: str) -> bytes:
    template = json.loads(next(line for line in LINES if b'"forbid"' in line))
    template.update(auditID=audit_id, userAgent=agent, stageTimestamp=when, requestReceivedTimestamp=when)
    return orjson.dumps(template) + b"\n"


def test_an_event_with_an_out_of_range_time_is_counted_and_no_finding_is_lost_across_a_restart(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(
        _refusal_at("curl/1", "2026-11-27T18:00:00.000000Z", "a1")
        + _refusal_at("curl/2", "9999-12-31T23:59:59.999999Z", "a2")
        + _refusal_at("curl/3", "0001-01-01T00:00:00+01:00", "a3")
        + _refusal_at("curl/4", "2026-11-27T18:00:01.000000Z", "a4")
    )
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--from-start").start()
    wait_for(tail.caught_up, what="catch up")
    assert tail.stop() == 0
    assert tail.stats()["malformed"] == 2
    restarted = tail.start()
    with open(log, "ab") as handle:
        handle.write(_refusal_at("curl/5", "2026-11-27T18:00:02.000000Z", "a5"))
    wait_for(restarted.caught_up, what="the restarted tailer")
    assert restarted.stop() == 0
    found = findings_in(*tail.stdout_files)
    assert [f["user_agent"]["original"] for f in found if f["rule"]["name"] == "unusual-agent-forbidden"] == [
        "curl/1",
        "curl/4",
        "curl/5",
    ]
    assert "Traceback" not in tail.stderr()


def test_a_refusal_padded_past_the_line_limit_is_still_a_finding(
    tmp_path: Path, tail_factory, allowlist_file: Path
) -> None:
    """``GET .../secrets?`` + 700,000 ``&`` (written ``\\u0026``): a 4.2 MB line, refused."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    tail = tail_factory(log, "--allowlist", str(allowlist_file), "--from-start").start()
    padded = orjson.loads(_refusal_at("curl/padded", "2026-11-27T18:00:00.000000Z", "p1"))
    padded["requestURI"] = "/api/v1/namespaces/default/secrets?" + "&" * 700_000
    with open(log, "ab") as handle:
        handle.write(orjson.dumps(padded).replace(b"&", b"\\u0026") + b"\n")
        handle.write(_refusal_at("curl/after", "2026-11-27T18:00:01.000000Z", "p2"))
    wait_for(tail.caught_up, what="catch up")
    assert tail.stop() == 0
    found = [f for f in findings_in(*tail.stdout_files) if f["rule"]["name"] == "unusual-agent-forbidden"]
    assert [f["user_agent"]["original"] for f in found] == ["curl/padded", "curl/after"]
    assert found[0]["kubernetes"]["audit"]["requestURI"].startswith("/api/v1/namespaces/default/secrets?&&")
    assert tail.stats().get("malformed", 0) == 0
