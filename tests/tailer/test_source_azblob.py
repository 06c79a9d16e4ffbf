"""`tail --source azblob:ACCOUNT/CONTAINER` against Azurite: Microsoft's Storage emulator (the npm
package, installed by tests/e2e/tools.py), a real Blob endpoint that the real azure-storage-blob
client reaches through ``AZURE_STORAGE_CONNECTION_STRING``.

The recorded apiserver events are written as an AKS diagnostic setting archives them (Azure
Monitor's documented layout): container ``insights-logs-kube-audit``, one append blob per hour
``resourceId=/SUBSCRIPTIONS/…/MANAGEDCLUSTERS/<name>/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json``,
JSON Lines of ``{"time", "resourceId", "category", "operationName", "properties": {"log": <Event
JSON>, "stream", "pod"}}``, appended while a real ``ua-sentinel tail`` reads them; it is killed
with SIGKILL and restarted: the findings are exactly those ``replay --format aks`` gives on the
same records. A proxy in front of Azurite answers 503 ServerBusy or 429 with Retry-After for a
while, or Azurite itself is stopped: nothing is lost and the tailer backs off.
"""

from __future__ import annotations

import datetime as dt
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

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import AUDIT_LOGS
from tests.e2e.tools import ensure_azurite

from .conftest import ACCEPTANCE_ALLOWLIST, ROOT, Tail, findings_in, keys, replay_findings, wait_for

ACCOUNT = "devstoreaccount1"
# Azurite's one built-in account and its key, published in Azurite's README: not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "insights-logs-kube-audit"
CLUSTER = (
    "/SUBSCRIPTIONS/0B1F6471-1BF0-4DDA-AEC3-CB9272F09590/RESOURCEGROUPS/PROD-RG/PROVIDERS/"
    "MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/PROD-AKS"
)
SOURCE = f"azblob:{ACCOUNT}/{CONTAINER}"
SEED = int(os.environ.get("UA_SENTINEL_TEST_SEED", "20261130"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _connection(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint};"
    )


def _env(endpoint: str) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": _connection(endpoint)}


class Azurite:
    """azurite-blob on a fixed port and a temp location; stoppable and restartable (data kept)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = ensure_azurite(sys.stderr)
        self.location = workdir / "azurite"
        self.location.mkdir()
        self.log = workdir / "azurite.log"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.location),
                    "--skipApiVersionCheck",  # the SDK may speak a newer service version
                    "--disableTelemetry",
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def up() -> bool:
            assert proc.poll() is None, self.log.read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", f"/{ACCOUNT}?comp=list")
                conn.getresponse().read()
                return True
            except OSError:
                return False

        wait_for(up, 60, "azurite-blob")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path)
    server.start()
    yield server
    server.stop()


_HOP_HEADERS = ("content-length", "connection", "server", "date", "transfer-encoding")


class Proxy:
    """Forwards to Azurite, or answers every request with a refusal while :attr:`mode` says so."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://").split("/")[0]
        self.mode = "ok"
        self.refused = 0
        self.refused_at: list[float] = []
        self.forwarded = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.mode != "ok":
                    proxy.refused += 1
                    proxy.refused_at.append(time.monotonic())
                    if proxy.mode == "busy":  # how Blob Storage throttles an account
                        status, code = 503, "ServerBusy"
                    else:
                        status, code = 429, "TooManyRequests"
                    payload = (
                        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                        f"<Message>slow down</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-ms-error-code", code)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                proxy.forwarded += 1
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body or None, dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in (
                        "content-length",
                        "connection",
                        "server",
                        "date",
                        "transfer-encoding",
                    ):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/{ACCOUNT}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _stamp(line: bytes) -> str:
    return str(json.loads(line)["stageTimestamp"])


def _millis(stamp: str) -> int:
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def _record(event: bytes, category: str = "kube-audit") -> bytes:
    """One diagnostic record as Azure Monitor archives it (one JSON line)."""
    at = dt.datetime.fromisoformat(_stamp(event))
    record = {
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z",  # Azure Monitor writes 7 digits
        "resourceId": CLUSTER,
        "category": category,
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {
            "log": event.decode() + "\n",
            "stream": "stdout",
            "pod": "kube-apiserver-6d5b9c8f7-x2k4q",
            "containerID": "5aeef33b3cfdafa517d8e1d8c4fe4e08901d99958bc6ad3ca5c74891120a0c44",
        },
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def hour_blob(hours_ago: int, cluster: str = CLUSTER) -> str:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    return f"resourceId={cluster}/y={at:%Y}/m={at:%m}/d={at:%d}/h={at:%H}/m=00/PT1H.json"


class Archive:
    """The container, written as Azure Monitor does; remembers the order the source presents."""

    def __init__(self, endpoint: str) -> None:
        self.service = BlobServiceClient.from_connection_string(_connection(endpoint))
        self.container = self.service.get_container_client(CONTAINER)
        if not self.container.exists():
            self.container.create_container()
        self.presented: list[bytes] = []

    def append(self, blob: str, data: bytes) -> None:
        client = self.container.get_blob_client(blob)
        if not client.exists():
            client.create_append_blob()
        for at in range(0, len(data), 4 * 1024 * 1024):  # an append block is at most 4 MiB
            client.append_block(data[at : at + 4 * 1024 * 1024])

    def put(self, per_blob: dict[str, list[bytes]]) -> None:
        """Append whole records (events in time order) to their blobs, as one stored history."""
        merged: list[tuple[int, str, int, bytes]] = []
        for blob, events in per_blob.items():
            records = [_record(event) for event in events]
            self.append(blob, b"".join(records))
            pairs = enumerate(zip(events, records, strict=True))
            merged += [(_millis(_stamp(event)), blob, i, record) for i, (event, record) in pairs]
        self.presented += [record for *_, record in sorted(merged)]


class BlobTail(Tail):
    """The conftest's `Tail`, reading the Storage container instead of a file."""

    start_timeout = 60.0

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str]) -> None:
        super().__init__(workdir, None, ["--source", SOURCE, "--poll-interval", "0.1", *args], env)

    def read_all(self, count: int) -> bool:
        """The checkpoint stands after ``count`` events and holds no backlog."""
        cp = self.checkpoint()
        return (cp.get("stats") or {}).get("lines") == count and not any((cp.get("backlog") or {}).values())

    def streams(self) -> dict[str, Any]:
        return dict(((self.checkpoint().get("streams") or {}).get(SOURCE) or {}).get("streams") or {})


def _fixture_lines() -> list[bytes]:
    lines = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines() if line.strip()]
    return sorted(lines, key=lambda line: _millis(_stamp(line)))


@pytest.fixture
def allowlist_file(tmp_path: Path) -> Path:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ACCEPTANCE_ALLOWLIST)
    return path


def _expected(tmp_path: Path, presented: list[bytes], allowlist: Path, *extra: str) -> list[dict[str, Any]]:
    whole = tmp_path / "presented.jsonl"
    whole.write_bytes(b"".join(presented))
    baseline = str(tmp_path / "replay-baseline.sqlite")
    return replay_findings(whole, allowlist, "--format", "aks", "--baseline", baseline, *extra)


def test_kill9_while_records_are_appended_gives_replays_findings(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path
) -> None:
    rng = random.Random(SEED)
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    cut = len(lines) * 3 // 5
    older, old, current = hour_blob(2), hour_blob(1), hour_blob(0)
    # Stored before the tailer starts: two hours of history, the last record of the second
    # still being appended (a partial line the tailer must leave for later).
    archive.put({older: lines[: cut // 2], old: lines[cut // 2 : cut - 1]})
    partial = _record(lines[cut - 1])
    archive.append(old, partial[:100])
    # Noise: a blob of three days ago (outside the listed hours) and one outside the layout.
    archive.append(hour_blob(72), _record(lines[0]))
    archive.append("README.txt", b"not a diagnostic blob\n")
    sink = tmp_path / "findings.jsonl"
    tail = BlobTail(
        tmp_path,
        _env(azurite.endpoint),
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
    print(f"killed after {killed_at} of {cut - 1} stored records")
    assert any(0 < n < cut - 1 for n in killed_at), killed_at  # at least one kill fell mid-history
    wait_for(lambda: tail.read_all(cut - 1), 60, "the complete stored records read")
    archive.append(old, partial[100:])  # the partial line completed
    archive.presented.append(partial)
    wait_for(lambda: tail.read_all(cut), 60, "the completed record read")
    # New records arrive while it runs, mostly in the current hour, some late into the last one.
    read = cut
    rest = lines[cut:]
    chunks = [rest[i : i + 40] for i in range(0, len(rest), 40)]
    for i, chunk in enumerate(chunks):
        archive.put({old if i % 3 == 2 else current: chunk})
        read += len(chunk)
        if i % 3 == 1:
            time.sleep(rng.uniform(0, 0.2))
            tail.kill9()
            tail.start()
        wait_for(lambda n=read: tail.read_all(n), 60, f"the tailer to read {read} events")
    assert tail.stop() == 0, tail.stderr()

    expected = _expected(tmp_path, archive.presented, allowlist_file)
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
    assert sorted(tail.streams()) == sorted([older, old, current])  # the noise is not read
    assert (tail.checkpoint().get("stats") or {}).get("malformed", 0) == 0
    assert "Traceback" not in tail.stderr()


def test_bad_records_are_counted_and_skipped(tmp_path: Path, azurite: Azurite, allowlist_file: Path) -> None:
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    half = len(lines) // 2
    blob = hour_blob(0)
    archive.put({blob: lines[:half]})
    bad = [
        b'{"time":"2026-11-27T18:10:45.0000000Z","category":"kube-audit","properties":{"stream":"stdout"}}\n',
        b"this is not JSON\n",
    ]
    # Longer than a page (and than the tailer's line limit), and still being appended when read.
    long_head, long_rest = b"{" + b"x" * (4 * 1024 * 1024 + 10), b"x" * 1000 + b"}\n"
    archive.append(blob, b"".join(bad) + long_head)
    port = _free_port()
    args = ["--allowlist", str(allowlist_file), "--from-start", "--metrics-port", str(port)]
    tail = BlobTail(tmp_path, _env(azurite.endpoint), args)
    tail.start()
    wait_for(lambda: tail.read_all(half + len(bad) + 1), 60, "the records before the long line's end")
    size = archive.container.get_blob_client(blob).get_blob_properties().size
    wait_for(lambda: any(p["token"].startswith(f"{size}:") for p in tail.streams().values()), 60, "the end")
    requests = f'ua_sentinel_source_requests_total{{source="{SOURCE}"}}'
    polled = _scrape(port)[requests]
    wait_for(lambda: _scrape(port)[requests] >= polled + 3, 60, "polls at the end of the long line")
    other = b'{"time":"2026-11-27T18:10:45.0000000Z","category":"guard","properties":{"log":"x"}}\n'
    archive.append(blob, long_rest + other)
    archive.put({blob: lines[half:]})
    wait_for(lambda: tail.read_all(len(lines) + len(bad) + 1), 60, "every record read")
    assert tail.stop() == 0, tail.stderr()
    stats = tail.checkpoint()["stats"]
    assert stats["malformed"] == len(bad) + 1  # the other category is skipped, not malformed
    expected = _expected(tmp_path, archive.presented, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    stderr = tail.stderr()
    assert "malformed audit input skipped" in stderr and "Traceback" not in stderr


def test_without_a_checkpoint_old_records_are_skipped_and_a_new_hour_is_read_whole(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path
) -> None:
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    third = len(lines) // 3
    old, new = hour_blob(1), hour_blob(0)
    archive.put({old: lines[: third - 1]})  # before the first start: history, not read
    partial = _record(lines[third - 1])
    archive.append(old, partial[:100])  # ...but a record still being written is read when complete
    archive.presented.clear()
    tail = BlobTail(tmp_path, _env(azurite.endpoint), ["--allowlist", str(allowlist_file)])
    tail.start()
    wait_for(lambda: any(not p["at_end"] for p in tail.streams().values()), 60, "the blob positioned")
    archive.append(old, partial[100:])
    archive.presented.append(partial)
    wait_for(lambda: tail.read_all(1), 60, "the completed record")
    archive.put({old: lines[third : 2 * third - 1]})
    wait_for(lambda: tail.read_all(third), 60, "the new records of an old blob")
    time.sleep(1.1)  # the next hour's blob is created after the first start (creation times are in s)
    archive.put({new: lines[2 * third :]})
    wait_for(lambda: tail.read_all(len(lines) - third), 60, "the whole of the new hour")
    assert tail.stop() == 0, tail.stderr()
    assert tail.checkpoint()["stats"].get("malformed", 0) == 0  # the record was read whole
    expected = _expected(tmp_path, archive.presented, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    assert "Traceback" not in tail.stderr()


def test_a_container_that_fills_later_is_read_from_its_first_record(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path
) -> None:
    """The diagnostic setting creates the container, then the cluster's folders, on its first record."""
    service = BlobServiceClient.from_connection_string(_connection(azurite.endpoint))
    port = _free_port()
    args = ["--allowlist", str(allowlist_file), "--metrics-port", str(port)]
    tail = BlobTail(tmp_path, _env(azurite.endpoint), args)
    tail.start()
    requests = f'ua_sentinel_source_requests_total{{source="{SOURCE}"}}'
    wait_for(lambda: _scrape(port)[requests] >= 1, 60, "the missing container listed")
    service.create_container(CONTAINER)
    listed = _scrape(port)[requests]
    wait_for(lambda: _scrape(port)[requests] >= listed + 2, 60, "the empty container listed")
    time.sleep(1.1)  # the first blob is created after the first start (creation times are in s)
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    archive.put({hour_blob(0): lines})
    wait_for(lambda: tail.read_all(len(lines)), 60, "the first records")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, archive.presented, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    stderr = tail.stderr()
    assert "cannot list the source's streams" in stderr and "Traceback" not in stderr


def test_a_replaced_blob_is_read_again_from_its_start(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path
) -> None:
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    third = len(lines) // 3
    blob = hour_blob(0)
    archive.put({blob: lines[:third]})
    tail = BlobTail(tmp_path, _env(azurite.endpoint), ["--allowlist", str(allowlist_file), "--from-start"])
    tail.start()
    wait_for(lambda: tail.read_all(third), 60, "the first blob read")
    time.sleep(1.1)  # another creation time (Blob Storage keeps it in seconds)
    # Written over in place (never missing from a listing), longer than the old one: only its
    # creation time tells that the old offset means nothing in it.
    archive.container.get_blob_client(blob).create_append_blob()
    archive.put({blob: lines[third:]})
    wait_for(lambda: tail.read_all(len(lines)), 60, "the new blob read from its start")
    assert tail.stop() == 0, tail.stderr()
    assert tail.checkpoint()["stats"].get("malformed", 0) == 0
    expected = _expected(tmp_path, archive.presented, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}


def test_every_cluster_in_the_container_is_read_and_a_prefix_selects_one(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path
) -> None:
    archive = Archive(azurite.endpoint)
    lines = _fixture_lines()
    other = CLUSTER.replace("PROD-AKS", "STAGING-AKS")
    half = len(lines) // 2
    mine, theirs = hour_blob(0), hour_blob(0, other)
    archive.put({mine: lines[:half], theirs: lines[half:]})
    (tmp_path / "both").mkdir()
    args = ["--allowlist", str(allowlist_file), "--from-start"]
    both = BlobTail(tmp_path / "both", _env(azurite.endpoint), args)
    both.start()
    wait_for(lambda: both.read_all(len(lines)), 60, "both clusters read")
    assert both.stop() == 0, both.stderr()
    assert sorted(both.streams()) == sorted([mine, theirs])
    prefix = f"resourceId={other}/"
    (tmp_path / "one").mkdir()
    one = Tail(
        tmp_path / "one",
        None,
        ["--source", f"{SOURCE}/{prefix}", "--allowlist", str(allowlist_file), "--from-start"],
        _env(azurite.endpoint),
    )
    one.start()
    wait_for(lambda: (one.checkpoint().get("stats") or {}).get("lines") == len(lines) - half, 60, "one read")
    assert one.stop() == 0, one.stderr()
    streams = one.checkpoint()["streams"][f"{SOURCE}/{prefix}"]["streams"]
    assert sorted(streams) == [theirs]


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


@pytest.mark.parametrize(
    ("outage", "kind"), [("busy", "throttled"), ("429", "throttled"), ("stopped", "unavailable")]
)
def test_an_outage_loses_nothing_and_the_tailer_backs_off(
    tmp_path: Path, azurite: Azurite, allowlist_file: Path, outage: str, kind: str
) -> None:
    proxy = Proxy(azurite.endpoint)
    try:
        archive = Archive(azurite.endpoint)
        lines = _fixture_lines()
        cut = len(lines) // 2
        blob = hour_blob(0)
        archive.put({blob: lines[:cut]})
        sink = tmp_path / "findings.jsonl"
        port = _free_port()
        args = ["--allowlist", str(allowlist_file), "--sink", f"file:{sink}", "--from-start"]
        args += ["--metrics-port", str(port), "--poll-interval", "0.02"]
        # Throttling is answered by the proxy; a stopped Azurite refuses connections itself.
        tail = BlobTail(tmp_path, _env(azurite.endpoint if outage == "stopped" else proxy.endpoint), args)
        tail.start()
        wait_for(lambda: tail.read_all(cut), 60, "the stored records read")
        label = f'source="{SOURCE}"'
        errors = f'ua_sentinel_source_errors_total{{kind="{kind}",{label}}}'
        archive.put({blob: lines[cut:]})  # written during the outage, straight to the service
        if outage == "stopped":
            azurite.stop()
        else:
            proxy.mode = outage
        began = time.monotonic()
        wait_for(lambda: _scrape(port)[errors] >= 3, 60, "the tailer to meet the outage")
        time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # the outage lasts 4 s
        failed = _scrape(port)[errors]
        if outage == "stopped":
            azurite.start()
        else:
            proxy.mode = "ok"
        wait_for(lambda: tail.read_all(len(lines)), 120, "the records of the outage read")
        metrics = _scrape(port)
        assert tail.stop() == 0, tail.stderr()
    finally:
        proxy.close()
    # Polling every 0.02 s without a backoff makes over a hundred calls in 4 s; the backoff (full
    # jitter, from 0.02 s doubling) about ten.
    print(f"failed calls during the {outage} outage: {failed}")
    assert failed <= 30, failed
    if outage != "stopped":
        assert proxy.refused == metrics[errors]  # each refused call counted once, as its kind
        gaps = [b - a for a, b in zip(proxy.refused_at, proxy.refused_at[1:], strict=False)]
        assert min(gaps) >= 0.95, gaps  # the proxy's Retry-After: 1 is the least wait
    expected = _expected(tmp_path, archive.presented, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(sink)} == {f["event"]["id"] for f in expected}
    assert metrics[f"ua_sentinel_source_events_total{{{label}}}"] == len(lines)
    assert metrics[f"ua_sentinel_source_last_success_timestamp_seconds{{{label}}}"] > 0
    assert metrics[f"ua_sentinel_source_lag_seconds{{{label}}}"] > 0  # the recorded events are old
    stderr = tail.stderr()
    assert "source call failed; backing off" in stderr and "Traceback" not in stderr
    assert f'"kind":"{kind}"' in stderr.replace(" ", "")


def _tail_once(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), *args],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_without_the_azure_sdk_one_line_says_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    (blocker / "azure").mkdir(parents=True)
    (blocker / "azure" / "__init__.py").write_text("raise ImportError('No module named azure')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    result = _tail_once(tmp_path, env, "--source", SOURCE)
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines()[-1].endswith("pip install 'ua-sentinel[azure]'")
    assert b"Traceback" not in result.stderr


def test_a_connection_string_for_another_account_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, **_env("http://127.0.0.1:9/otheraccount")}
    env["AZURE_STORAGE_CONNECTION_STRING"] = env["AZURE_STORAGE_CONNECTION_STRING"].replace(
        f"AccountName={ACCOUNT}", "AccountName=otheraccount"
    )
    result = _tail_once(tmp_path, env, "--source", SOURCE)
    assert result.returncode == 1
    assert "is for the account 'otheraccount', not 'devstoreaccount1'" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text", ["azblob:", "azblob:Account/insights-logs-kube-audit", "azblob:acct", "azblob:acct/-bad-"]
)
def test_a_bad_azblob_source_is_one_line(tmp_path: Path, text: str) -> None:
    result = _tail_once(tmp_path, dict(os.environ), "--source", text)
    assert result.returncode == 2, result.stderr
    assert "needs a storage account and container" in result.stderr.decode()
    assert b"Traceback" not in result.stderr
