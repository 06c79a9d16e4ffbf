"""Sinks on real files and real HTTP servers: dedup, rotation, retries, Slack text, a dead sink,
the backlog bound, Kubernetes Events through the official client against a fake API server, and
a real ``tail`` feeding falcosidekick and OTLP endpoints with its cluster's name."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from msgspec.structs import replace

from tests.conftest import log_records
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.sinks.file import FileSink
from webhook.sinks.http import HttpSink, slack_text
from webhook.sinks.metrics import sink_metrics
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import parse_sink

from .conftest import ACCEPTANCE_ALLOWLIST, findings_in, fixture_lines, keys, wait_for
from .endpoints import endpoint, falcosidekick, otlp_collector, otlp_records

LINES = fixture_lines()


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    detector = Detector(Allowlist.from_yaml(ACCEPTANCE_ALLOWLIST))
    out = [f for line in LINES for f in detector.process(parse_event(line))]
    return out + detector.flush()


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records POST bodies; answers from a per-server script of status codes."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        with server.lock:
            status = server.script.pop(0) if server.script else 201
            server.requests.append((self.path, json.loads(body), status))
        reply = body if status < 300 else json.dumps({"kind": "Status", "code": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.lock = threading.Lock()
    httpd.script = []
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_file_sink_drops_duplicates_even_after_a_restart(tmp_path: Path, findings: list[Finding]) -> None:
    path = tmp_path / "out" / "findings.jsonl"
    sink = FileSink(str(path))
    for finding in findings + findings[:3]:
        sink.deliver(finding)
    sink.close()
    again = FileSink(str(path))
    for finding in findings:
        again.deliver(finding)
    again.close()
    lines = findings_in(path)
    assert len(lines) == len(findings) and again.duplicates == len(findings)


def test_file_sink_cuts_a_torn_last_line_and_rotates_by_size(tmp_path: Path, findings: list[Finding]) -> None:
    path = tmp_path / "findings.jsonl"
    sink = FileSink(str(path))
    sink.deliver(findings[0])
    sink.close()
    with open(path, "ab") as handle:
        handle.write(b'{"event": {"id": "torn')  # a crash in the middle of a write
    sink = FileSink(str(path), max_bytes=4000, backups=2, max_share=1.0)  # rotation alone, not fairness
    for finding in findings[1:]:
        sink.deliver(finding)
    sink.close()
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files) and not Path(f"{path}.3").exists()
    assert all(f.stat().st_size < 4000 + 4000 for f in files)
    kept = findings_in(*files)  # parses: no torn line anywhere
    assert findings[-1].id in {f["event"]["id"] for f in kept}


def _as(finding: Finding, n: int) -> Finding:
    """``finding`` as the n-th of a flood: same principal, its own id."""
    return replace(finding, event=replace(finding.event, id=f"flood-{n}"))


def test_one_principals_flood_cannot_rotate_the_others_findings_out(
    tmp_path: Path, findings: list[Finding]
) -> None:
    path = tmp_path / "findings.jsonl"
    sink = FileSink(str(path), max_bytes=64 * 1024, backups=2)
    others = [f for f in findings if f.user.name != "mallory"]
    probe = next(f for f in findings if f.user.name == "mallory")
    for finding in others:
        sink.deliver(finding)
    for n in range(2000):  # ~5 MB of mallory's findings: 80 files' worth, would rotate 40 times
        sink.deliver(_as(probe, n))
    sink.close()
    assert not Path(f"{path}.1").exists()  # mallory alone never fills a file
    kept = findings_in(path)
    assert {f.id for f in others} <= {f["event"]["id"] for f in kept}
    mallory = [f for f in kept if f["user"]["name"] == "mallory"]
    sizes = [len(orjson.dumps(f)) + 1 for f in mallory]
    assert sum(sizes[:-1]) < sink.share_bytes <= sum(sizes)  # the one reaching the share went in
    assert sink.suppressed == 2000 - len(mallory) > 1900


def test_the_share_survives_a_restart_and_renews_when_the_file_rotates(
    tmp_path: Path, findings: list[Finding]
) -> None:
    path = tmp_path / "findings.jsonl"
    probe = next(f for f in findings if f.user.name == "mallory")
    first = FileSink(str(path), max_bytes=64 * 1024, backups=2)
    for n in range(100):
        first.deliver(_as(probe, n))
    first.close()
    again = FileSink(str(path), max_bytes=64 * 1024, backups=2)
    again.deliver(_as(probe, 100))  # the file it reopened already holds mallory's share
    assert again.suppressed == 1
    other = next(f for f in findings if f.user.name == "dev-alice")
    for n in range(1000):  # many other users fill the file: it rotates
        if Path(f"{path}.1").exists():
            break
        user = replace(other.user, name=f"user-{n}")
        again.deliver(replace(other, user=user, event=replace(other.event, id=f"o{n}")))
    assert Path(f"{path}.1").exists()
    again.deliver(_as(probe, 101))  # a new file: mallory has a share again
    again.close()
    assert "flood-101" in {f["event"]["id"] for f in findings_in(path)}


def test_suppressed_findings_are_a_metric(tmp_path: Path, findings: list[Finding]) -> None:
    path = tmp_path / "findings.jsonl"
    sink = FileSink(str(path), max_bytes=64 * 1024)
    outbox = Outbox(parse_sink(f"file:{path}"), sink)
    probe = next(f for f in findings if f.user.name == "mallory")
    outbox.put([_as(probe, n) for n in range(100)])
    assert outbox.drain(timeout=10)
    outbox.close()
    (family,) = [m for m in sink_metrics([outbox]) if m.name == "ua_sentinel_sink_suppressed"]
    (sample,) = [s for s in family.samples if s.name.endswith("_total")]
    assert sample.labels == {"sink": f"file:{path}"} and sample.value == sink.suppressed > 0


def test_http_sink_retries_with_backoff_and_keeps_order(server: Any, findings: list[Finding]) -> None:
    server.script = [500, 503]
    failures: list[str] = []
    outbox = Outbox(
        parse_sink(f"http:{server.url}/hook"), HttpSink(f"{server.url}/hook"), on_failure=failures.append
    )
    outbox.put(findings[:3])
    assert outbox.drain(timeout=10)
    outbox.close()
    delivered = [body["event"]["id"] for _, body, status in server.requests if status == 201]
    assert delivered == [f.id for f in findings[:3]]
    assert len(failures) == 2 and outbox.failures == 2


def test_slack_text_shows_only_the_escaped_agent(server: Any, findings: list[Finding]) -> None:
    spoof = next(f for f in findings if f.user_agent.original and "\u202e" in f.user_agent.original)
    HttpSink(f"{server.url}/slack", slack=True).deliver(spoof)
    ((path, body, _),) = server.requests
    assert path == "/slack" and set(body) == {"text"}
    assert "\u202e" not in body["text"] and "\\u202e" in body["text"]
    assert slack_text(spoof).startswith(
        f"ua-sentinel finding {spoof.id} unusual-agent-forbidden (medium): user mallory"
    )
    assert "<" not in slack_text(spoof).replace("&lt;", "")


def test_backlog_bound_drops_the_oldest_and_counts(findings: list[Finding]) -> None:
    class Dead:
        def deliver(self, finding: Finding) -> None:
            raise OSError("down")

        def close(self) -> None:
            return None

    drops: list[int] = []
    outbox = Outbox(parse_sink("stdout"), Dead(), max_backlog=4, on_drop=lambda _label, n: drops.append(n))
    outbox.put(findings[:9])
    wait_for(lambda: outbox.dropped == 5, what="the first failure to apply the bound")
    assert sum(drops) == 5
    assert [f.id for f in outbox.pending()] == [f.id for f in findings[5:9]]
    outbox.close()


def test_a_dead_sink_never_stops_reading_and_its_backlog_survives_a_restart(
    tmp_path: Path, tail_factory, allowlist_file: Path, free_port: int
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    url = f"http://127.0.0.1:{free_port}/hook"  # nothing listens there yet
    args = ["--allowlist", str(allowlist_file), "--baseline-days", "0", "--sink", f"http:{url}"]
    tail = tail_factory(log, *args, "--sink", "stdout", "--max-backlog", "5").start()
    log.write_bytes(b"".join(LINES))
    wait_for(lambda: len(findings_in(*tail.stdout_files)) == 9, what="stdout to get every finding")
    wait_for(lambda: tail.stats().get("dropped") == 4, what="the dropped count")
    assert tail.stop() == 0
    backlog = {k: v for k, v in tail.checkpoint()["backlog"].items() if k.startswith("http:")}
    assert [len(v) for v in backlog.values()] == [5]
    assert [
        r
        for r in log_records(tail.stderr())
        if r["msg"] == "sink backlog over its bound; DROPPED the oldest findings"
        and r["sink"].startswith("http:")
        and r["dropped"] == 4
    ]
    # The endpoint comes up; a restart delivers the checkpointed backlog, newest five, in order.
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", free_port), Recorder)
    httpd.lock, httpd.script, httpd.requests = threading.Lock(), [], []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        tail.start()
        wait_for(lambda: len(httpd.requests) == 5, what="the backlog to be delivered")
        wait_for(lambda: not any(tail.checkpoint()["backlog"].values()), what="an empty backlog")
        assert tail.stop() == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    ids = [body["event"]["id"] for _, body, _ in httpd.requests]
    assert ids == [f["event"]["id"] for f in findings_in(tail.stdout_files[0])][-5:]


def test_k8s_events_go_to_the_refused_namespace_and_a_repeat_is_already_there(
    tmp_path: Path, tail_factory, allowlist_file: Path, server: Any
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    env = {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": "ua-sentinel", "POD_NAME": "tailer-x"}
    env["KUBERNETES_SERVICE_HOST"] = ""
    tail = tail_factory(
        log, "--allowlist", str(allowlist_file), "--baseline-days", "0", "--sink", "k8s-events", env=env
    ).start()
    server.script = [201, 409]  # the second finding's Event "already exists": delivered before a crash
    log.write_bytes(b"".join(LINES))
    wait_for(lambda: len(server.requests) >= 9, what="an Event per finding")
    assert tail.stop() == 0
    paths = [path for path, _, _ in server.requests]
    bodies = [body for _, body, _ in server.requests]
    assert all(p.startswith("/api/v1/namespaces/") and p.endswith("/events") for p in paths)
    by_ns = {p.split("/")[4] for p in paths}
    assert {"kube-system", "team", "default"} <= by_ns
    for body in bodies:
        assert body["type"] == "Warning" and body["reason"] == "UnusualAgentForbidden"
        assert body["involvedObject"]["namespace"] == body["metadata"]["namespace"]
        assert body["metadata"]["name"].startswith("ua-sentinel.")
        assert "\u202e" not in body["message"]
    assert not any(tail.checkpoint()["backlog"].values())


def test_findings_survive_the_checkpoint_backlog_round_trip(findings: list[Finding]) -> None:
    from webhook.sinks.outbox import restore_findings

    saved = json.loads(json.dumps([f.to_dict() for f in findings]))
    assert restore_findings(saved) == findings


def test_tail_delivers_every_finding_to_each_sink_with_its_cluster(
    tmp_path: Path, tail_factory: Any, allowlist_file: Path
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(LINES))
    with (
        endpoint(falcosidekick, fail_first=2) as sidekick,
        endpoint(otlp_collector(), fail_first=2) as collector,
    ):
        tail = tail_factory(
            log,
            *("--allowlist", str(allowlist_file), "--from-start", "--cluster-name", "prod-eu-1"),
            *("--sink", "stdout", "--sink", f"falcosidekick:{sidekick.url}/"),
            *("--sink", f"otlp:{collector.url}"),
        ).start()
        wait_for(tail.caught_up, what="every sink to catch up")
        assert tail.stop() == 0
    printed = findings_in(*tail.stdout_files)
    assert printed and {f["orchestrator"]["cluster"]["name"] for f in printed} == {"prod-eu-1"}
    assert [r.errors for r in sidekick.received if r.status == 400] == []
    falco = [json.loads(r.body)["output_fields"] for r in sidekick.received if r.status == 200]
    otlp = [attributes for _, _, attributes in otlp_records(collector.received)]
    assert [(f["event.id"], f["event.sequence"]) for f in falco] == keys(printed)
    assert [(a["event.id"], a["event.sequence"]) for a in otlp] == keys(printed)
    assert {f["orchestrator.cluster.name"] for f in falco} == {a["orchestrator.cluster.name"] for a in otlp}
    assert {f["orchestrator.cluster.name"] for f in falco} == {"prod-eu-1"}
