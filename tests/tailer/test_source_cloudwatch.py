"""`tail --source cloudwatch:LOG_GROUP` against moto's server: a real HTTP endpoint speaking the
CloudWatch Logs API, which boto3 reaches through ``AWS_ENDPOINT_URL``.

The recorded apiserver events are put into a log group as EKS writes them (one audit event JSON
per log event's ``message``, streams ``kube-apiserver-audit-<id>``, each request in one stream),
a real ``ua-sentinel tail`` process reads them, is killed with SIGKILL mid-stream and restarted
while new events arrive: the findings are exactly those ``replay`` gives on the same events.
A proxy in front of moto answers 503 or ``ThrottlingException`` for a while: nothing is lost and
the tailer backs off (the proxy counts its requests).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import AUDIT_LOGS

from .conftest import ACCEPTANCE_ALLOWLIST, ROOT, Tail, findings_in, keys, replay_findings, wait_for
from .moto import aws_env, moto_server

GROUP = "/aws/eks/test/cluster"
STREAMS = [f"kube-apiserver-audit-{h}" for h in ("2f9c81d4a1", "7be03c55e2", "c41d9a0f63")]
SEED = int(os.environ.get("UA_SENTINEL_TEST_SEED", "20261129"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[str]:
    """moto's server on a free port; its URL."""
    with moto_server(tmp_path) as url:
        yield url


class Proxy:
    """Forwards to moto, or answers every request with an outage while :attr:`mode` says so."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.mode = "ok"
        self.refused = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.mode != "ok":
                    proxy.refused += 1
                    if proxy.mode == "throttle":
                        status, payload = 400, b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
                    else:
                        status, payload = 503, b'{"__type":"ServiceUnavailableException","message":"down"}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request("POST", self.path, body, dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "connection", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _millis(line: bytes) -> int:
    stamp = json.loads(line)["stageTimestamp"].replace("Z", "+00:00")
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def _stream_of(line: bytes) -> str:
    """Each request is logged by the one apiserver instance that served it."""
    audit_id = json.loads(line)["auditID"]
    return STREAMS[int(hashlib.sha256(audit_id.encode()).hexdigest(), 16) % len(STREAMS)]


class Group:
    """The log group, written as EKS does; remembers the order CloudWatch presents the events in."""

    def __init__(self, endpoint: str, env: dict[str, str]) -> None:
        self.client = boto3.client(
            "logs",
            endpoint_url=endpoint,
            region_name=env["AWS_REGION"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client.create_log_group(logGroupName=GROUP)
        for name in STREAMS:
            self.client.create_log_stream(logGroupName=GROUP, logStreamName=name)
        self.client.create_log_stream(logGroupName=GROUP, logStreamName="authenticator-0a1b2c")
        self.presented: list[bytes] = []

    def put(self, lines: list[bytes], streams: list[str] | None = None) -> None:
        """Put ``lines`` (in time order) into their streams; all at once, as one stored history."""
        per: dict[str, list[tuple[int, bytes]]] = {}
        for line in lines:
            per.setdefault(_stream_of(line) if streams is None else streams[0], []).append(
                (_millis(line), line)
            )
        merged: list[tuple[int, str, int, bytes]] = []
        for name, items in sorted(per.items()):
            items.sort(key=lambda item: item[0])
            self.client.put_log_events(
                logGroupName=GROUP,
                logStreamName=name,
                logEvents=[{"timestamp": ms, "message": line.decode()} for ms, line in items],
            )
            merged += [(ms, name, i, line) for i, (ms, line) in enumerate(items)]
        self.presented += [line for *_, line in sorted(merged)]
        # Noise EKS writes to the same group: other streams are not read.
        self.client.put_log_events(
            logGroupName=GROUP,
            logStreamName="authenticator-0a1b2c",
            logEvents=[{"timestamp": _millis(lines[0]), "message": 'time=... msg="access granted"'}],
        )


class CloudTail(Tail):
    """The conftest's `Tail`, reading `--source cloudwatch:GROUP` instead of a file."""

    start_timeout = 60.0

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str]) -> None:
        super().__init__(
            workdir, None, ["--source", f"cloudwatch:{GROUP}", "--poll-interval", "0.1", *args], env
        )

    def read_all(self, count: int) -> bool:
        """The checkpoint stands after ``count`` events and holds no backlog."""
        cp = self.checkpoint()
        return (cp.get("stats") or {}).get("lines") == count and not any((cp.get("backlog") or {}).values())


def _fixture_lines() -> list[bytes]:
    """The recorded apiserver events in time order (CloudWatch orders each stream by time)."""
    lines = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines() if line.strip()]
    return sorted(lines, key=_millis)


@pytest.fixture
def allowlist_file(tmp_path: Path) -> Path:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ACCEPTANCE_ALLOWLIST)
    return path


def _expected(tmp_path: Path, group: Group, allowlist: Path, *extra: str) -> list[dict[str, Any]]:
    whole = tmp_path / "presented.log"
    whole.write_bytes(b"".join(line + b"\n" for line in group.presented))
    return replay_findings(whole, allowlist, "--baseline", str(tmp_path / "replay-baseline.sqlite"), *extra)


def test_kill9_mid_stream_while_events_arrive_gives_replays_findings(
    tmp_path: Path, moto: str, allowlist_file: Path
) -> None:
    rng = random.Random(SEED)
    env = aws_env(tmp_path, moto)
    group = Group(moto, env)
    lines = _fixture_lines()
    cut = len(lines) * 3 // 5
    group.put(lines[:cut])  # stored before the tailer starts: one history, merged in time order
    sink = tmp_path / "findings.jsonl"
    tail = CloudTail(
        tmp_path,
        env,
        [
            "--allowlist",
            str(allowlist_file),
            "--sink",
            f"file:{sink}",
            "--sink",
            "stdout",
            "--from-start",
            "--source-page-size",
            "7",
        ],
    )
    tail.start()
    killed_at: list[int] = []
    for _ in range(3):  # SIGKILL while the stored history is read, page by page
        wait_for(lambda: (tail.checkpoint().get("stats") or {}).get("lines", 0) > 0, 60, "reading")
        time.sleep(rng.uniform(0, 0.3))
        tail.kill9()
        killed_at.append((tail.checkpoint().get("stats") or {}).get("lines", 0))
        tail.start()
    assert any(0 < n < cut for n in killed_at), killed_at  # at least one kill fell mid-history
    # New events arrive while it runs: one stream at a time, each read before the next comes.
    read = cut
    rest = lines[cut:]
    chunks = [rest[i : i + 40] for i in range(0, len(rest), 40)]
    for i, chunk in enumerate(chunks):
        group.put(chunk, [STREAMS[i % len(STREAMS)]])
        read += len(chunk)
        if i % 3 == 1:
            time.sleep(rng.uniform(0, 0.2))
            tail.kill9()
            tail.start()
        wait_for(lambda n=read: tail.read_all(n), 60, f"the tailer to read {read} events")
    assert tail.stop() == 0, tail.stderr()

    expected = _expected(tmp_path, group, allowlist_file)
    assert len(expected) >= 5
    delivered = findings_in(sink, *tail.stdout_files)
    assert {(f["event"]["id"], f["rule"]["name"]) for f in delivered} == {
        (f["event"]["id"], f["rule"]["name"]) for f in expected
    }
    first = {k for k in keys(expected) if k[1] == 1}
    assert first <= set(keys(delivered))
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for finding in delivered:  # a repeat is the same finding: same id, same content
        key = (finding["event"]["id"], finding["event"]["sequence"])
        assert by_key.setdefault(key, finding) == finding
    in_file = keys(findings_in(sink))
    assert len(in_file) == len(set(in_file)), "duplicate (id, sequence) in the file sink"
    streams = tail.checkpoint()["streams"][f"cloudwatch:{GROUP}"]["streams"]
    assert sorted(streams) == STREAMS  # the authenticator's stream is not read
    assert "Traceback" not in tail.stderr()


def _refusal(at: float, number: int) -> bytes:
    """One recorded refusal of an unlisted agent, moved to ``at`` (epoch seconds)."""
    for line in _fixture_lines():
        event = json.loads(line)
        code = (event.get("responseStatus") or {}).get("code")
        unlisted = not event.get("userAgent", "").startswith(("kubectl/", "kube-"))
        if code == 403 and event["stage"] == "ResponseComplete" and unlisted:
            break
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event.update(auditID=f"00000000-0000-4000-8000-{number:012d}", stageTimestamp=stamp)
    event["requestReceivedTimestamp"] = stamp
    return json.dumps(event, separators=(",", ":")).encode()


def test_streams_are_merged_in_time_order_across_pages(
    tmp_path: Path, moto: str, allowlist_file: Path
) -> None:
    """One stream's page must not run ahead of another stream's older records: with a 5 s window,
    reading 15.5 before 7..15 would close the window early and give other finding ids."""
    env = aws_env(tmp_path, moto)
    group = Group(moto, env)
    base = time.time() - 3600
    group.put([_refusal(base + i, i) for i in range(20)], [STREAMS[0]])
    group.put([_refusal(base + 0.5, 100), _refusal(base + 15.5, 101)], [STREAMS[1]])
    group.presented.sort(key=_millis)  # one history: the order CloudWatch presents is time order
    rules = ["--window", "5", "--baseline-days", "0"]
    tail = CloudTail(
        tmp_path, env, ["--allowlist", str(allowlist_file), "--from-start", "--source-page-size", "7", *rules]
    )
    tail.start()
    wait_for(lambda: tail.read_all(22), 60, "every record read")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, group, allowlist_file, *rules)
    first = {f["event"]["id"] for f in expected if f["event"]["sequence"] == 1}
    assert len(first) >= 3
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == first


def test_without_a_checkpoint_old_events_are_skipped_and_a_new_stream_is_read_whole(
    tmp_path: Path, moto: str, allowlist_file: Path
) -> None:
    env = aws_env(tmp_path, moto)
    group = Group(moto, env)
    lines = _fixture_lines()
    third = len(lines) // 3
    group.put(lines[:third])  # before the first start: history, not read
    group.presented.clear()
    tail = CloudTail(tmp_path, env, ["--allowlist", str(allowlist_file)])
    tail.start()

    def positioned() -> bool:
        streams = (tail.checkpoint().get("streams") or {}).get(f"cloudwatch:{GROUP}", {}).get("streams", {})
        return sorted(streams) == STREAMS and not any(p["at_end"] for p in streams.values())

    wait_for(positioned, 60, "every stream positioned at its end")
    group.put(lines[third : 2 * third], [STREAMS[0]])
    wait_for(lambda: tail.read_all(third), 60, "the new events of an old stream")
    newcomer = "kube-apiserver-audit-9e8d7c6b5a"  # an apiserver replaced: a new stream
    group.client.create_log_stream(logGroupName=GROUP, logStreamName=newcomer)
    group.put(lines[2 * third :], [newcomer])
    wait_for(lambda: tail.read_all(len(lines) - third), 60, "the whole of the new stream")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, group, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    assert "Traceback" not in tail.stderr()


def test_a_missing_log_group_does_not_stop_the_others(
    tmp_path: Path, moto: str, allowlist_file: Path
) -> None:
    env = aws_env(tmp_path, moto)
    group = Group(moto, env)
    lines = _fixture_lines()
    group.put(lines)
    missing = "/aws/eks/logging-not-enabled-yet/cluster"
    tail = CloudTail(
        tmp_path,
        env,
        ["--allowlist", str(allowlist_file), "--from-start", "--source", f"cloudwatch:{missing}"],
    )
    tail.start()
    wait_for(lambda: tail.read_all(len(lines)), 60, "the existing group read")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, group, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    refusals = [
        json.loads(line) for line in tail.stderr().splitlines() if "cannot list the source's streams" in line
    ]
    assert refusals and {r["source"] for r in refusals} == {f"cloudwatch:{missing}"}
    assert {r["kind"] for r in refusals} == {"not-found"}
    assert "Traceback" not in tail.stderr()


@pytest.mark.parametrize("outage", ["throttle", "unavailable"])
def test_an_outage_loses_nothing_and_the_tailer_backs_off(
    tmp_path: Path, moto: str, allowlist_file: Path, outage: str
) -> None:
    kind = {"throttle": "throttled", "unavailable": "unavailable"}[outage]
    proxy = Proxy(moto)
    try:
        env = aws_env(tmp_path, proxy.url)
        group = Group(moto, env)
        lines = _fixture_lines()
        cut = len(lines) // 2
        group.put(lines[:cut])
        sink = tmp_path / "findings.jsonl"
        port = _free_port()
        tail = CloudTail(
            tmp_path,
            env,
            [
                "--allowlist",
                str(allowlist_file),
                "--sink",
                f"file:{sink}",
                "--from-start",
                "--metrics-port",
                str(port),
                "--poll-interval",
                "0.02",
            ],
        )
        tail.start()
        wait_for(lambda: tail.read_all(cut), 60, "the stored events read")
        proxy.mode = outage
        group.put(lines[cut:])  # written during the outage, straight to the service
        began = time.monotonic()
        wait_for(lambda: proxy.refused >= 3, 60, "the tailer to meet the outage")
        time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # the outage lasts 4 s
        refused = proxy.refused
        proxy.mode = "ok"
        wait_for(lambda: tail.read_all(len(lines)), 120, "the events of the outage read")
        metrics = _scrape(port)
        assert tail.stop() == 0, tail.stderr()
    finally:
        proxy.close()
    # Polling every 0.02 s without a backoff makes over a hundred calls in 4 s; the backoff (full
    # jitter, from 0.02 s doubling) about ten.
    print(f"requests refused during the {outage} outage: {refused}")
    assert refused <= 30, refused
    expected = _expected(tmp_path, group, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(sink)} == {f["event"]["id"] for f in expected}
    label = f'source="cloudwatch:{GROUP}"'
    assert metrics[f"ua_sentinel_source_events_total{{{label}}}"] == len(lines)
    errors = f'ua_sentinel_source_errors_total{{kind="{kind}",{label}}}'
    assert metrics[errors] == refused_by_tail(metrics) == proxy.refused  # each failed call counted once
    assert metrics[f"ua_sentinel_source_last_success_timestamp_seconds{{{label}}}"] > 0
    assert metrics[f"ua_sentinel_source_lag_seconds{{{label}}}"] > 0  # the recorded events are old
    stderr = tail.stderr()
    assert "source call failed; backing off" in stderr and "Traceback" not in stderr
    assert f'"kind":"{kind}"' in stderr.replace(" ", "")


def _scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def refused_by_tail(metrics: dict[str, float]) -> float:
    """Every failed call is counted once, whatever its kind."""
    return sum(v for k, v in metrics.items() if k.startswith("ua_sentinel_source_errors_total"))


def test_without_boto3_one_line_says_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    (blocker / "boto3").mkdir(parents=True)
    (blocker / "boto3" / "__init__.py").write_text("raise ImportError('No module named boto3')\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "tail",
            "--state",
            str(tmp_path / "s"),
            "--source",
            f"cloudwatch:{GROUP}",
        ],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines()[-1].endswith("pip install 'ua-sentinel[aws]'")
    assert b"Traceback" not in result.stderr


def test_without_a_region_one_line_says_to_set_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "tail",
            "--state",
            str(tmp_path / "s"),
            "--source",
            f"cloudwatch:{GROUP}",
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines()[-1].endswith("needs a region: set AWS_REGION")
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--source", "kafka:audit"], 2, "unknown kind"),
        (["--source", "cloudwatch:"], 2, "needs a log group name"),
        ([], 1, "give PATH or --source"),
        (["--source", f"cloudwatch:{GROUP}", "audit.log"], 1, "mixing them is not supported yet"),
        (["--source", f"cloudwatch:{GROUP}", "--format", "gke"], 1, "not --format gke"),
    ],
)
def test_source_mistakes_are_one_line(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == status, result.stderr
    assert message in result.stderr.decode()
    assert b"Traceback" not in result.stderr
