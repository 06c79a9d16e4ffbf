"""`tail --source eventhub:NAMESPACE/HUB` with the real azure-eventhub client against a local
Event Hubs endpoint (:mod:`tests.tailer.eventhub_server`: a stand-in speaking AMQP 1.0 as the
service does; no Event Hubs emulator installs here), reached through a connection string with
``UseDevelopmentEmulator=true`` in ``AZURE_EVENTHUB_CONNECTION_STRING``.

The recorded apiserver events are sent as an AKS diagnostic setting sends them (batches of
``{"records": [...]}`` with the Event JSON in ``properties.log``, other categories mixed in)
into the partitions of a hub; a real ``ua-sentinel tail`` process reads them, is killed with
SIGKILL mid-stream and restarted while new events arrive: the findings are exactly those
``replay --format aks`` gives on the same bodies. Outages (connections reset, links detached
with ``com.microsoft:server-busy``) lose nothing, and the tailer backs off (the server counts
the attempts).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT_LOGS

from .conftest import ACCEPTANCE_ALLOWLIST, ROOT, Tail, findings_in, keys, replay_findings, wait_for
from .eventhub_server import EventHubServer

NAMESPACE = "test-ns"
HUB = "aks-audit"
LABEL = f"eventhub:{NAMESPACE}/{HUB}"
PARTITIONS = 3
SEED = int(os.environ.get("UA_SENTINEL_TEST_SEED", "20261130"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _millis(line: bytes) -> int:
    stamp = json.loads(line)["stageTimestamp"].replace("Z", "+00:00")
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def _fixture_lines() -> list[bytes]:
    lines = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines() if line.strip()]
    return sorted(lines, key=_millis)


def _record(line: bytes, category: str = "kube-audit") -> dict[str, Any]:
    """One diagnostic record as AKS writes it (Azure Monitor resource log schema)."""
    return {
        "time": json.loads(line)["stageTimestamp"],
        "resourceId": "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG"
        "/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/TEST",
        "category": category,
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {
            "log": line.decode(),
            "stream": "stdout",
            "pod": "kube-apiserver-6d5b8c7f9-x2x7q",
            "containerID": "4c7a0b1e2d",
        },
    }


class Hub:
    """The Event Hub, written as a diagnostic setting does; remembers the order the tailer's
    merge presents the bodies in (enqueued time, then partition)."""

    def __init__(self, server: EventHubServer, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.presented: list[bytes] = []
        self.records = 0
        """Lines the tailer gets: audit records (and refused ones)."""
        self.clock = int(time.time() * 1000) - 3_600_000
        self.turn = 0

    def send(self, body: bytes, partition: str | None = None, lines: int = 1) -> None:
        if partition is None:
            partition = str(self.turn % PARTITIONS)
            self.turn += 1
        self.clock += 1
        self.server.append(partition, body, self.clock)
        self.presented.append(body)
        self.records += lines

    def put(self, lines: list[bytes], partition: str | None = None) -> None:
        """``lines`` in batches of 1-5 records, with a record of another category now and then."""
        i = 0
        while i < len(lines):
            batch = lines[i : i + self.rng.randint(1, 5)]
            i += len(batch)
            records = [_record(line, self.rng.choice(["kube-audit", "kube-audit-admin"])) for line in batch]
            if self.rng.random() < 0.3:
                records.insert(self.rng.randint(0, len(records)), _record(batch[0], "kube-apiserver"))
            body = json.dumps({"records": records}, separators=(",", ":")).encode()
            self.send(body, partition, len(batch))


class EventHubTail(Tail):
    """The conftest's `Tail`, reading `--source eventhub:NAMESPACE/HUB` instead of a file."""

    start_timeout = 60.0

    def __init__(self, workdir: Path, server: EventHubServer, args: list[str]) -> None:
        env = {"AZURE_EVENTHUB_CONNECTION_STRING": server.connection_string()}
        super().__init__(workdir, None, ["--source", LABEL, "--poll-interval", "0.1", *args], env)

    def read_all(self, count: int) -> bool:
        """The checkpoint stands after ``count`` lines and holds no backlog."""
        cp = self.checkpoint()
        return (cp.get("stats") or {}).get("lines") == count and not any((cp.get("backlog") or {}).values())


@pytest.fixture
def server() -> Iterator[EventHubServer]:
    hub = EventHubServer(HUB, PARTITIONS).start()
    yield hub
    hub.stop()


@pytest.fixture
def allowlist_file(tmp_path: Path) -> Path:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ACCEPTANCE_ALLOWLIST)
    return path


def _expected(tmp_path: Path, hub: Hub, allowlist: Path, *extra: str) -> list[dict[str, Any]]:
    whole = tmp_path / "presented.jsonl"
    whole.write_bytes(b"".join(body + b"\n" for body in hub.presented))
    baseline = str(tmp_path / "replay-baseline.sqlite")
    return replay_findings(whole, allowlist, "--format", "aks", "--baseline", baseline, *extra)


def test_kill9_mid_stream_while_events_arrive_gives_replays_findings(
    tmp_path: Path, server: EventHubServer, allowlist_file: Path
) -> None:
    rng = random.Random(SEED)
    hub = Hub(server, rng)
    lines = _fixture_lines()
    cut = len(lines) * 3 // 5
    hub.put(lines[:cut])  # stored before the tailer starts, spread over the partitions
    stored = hub.records
    sink = tmp_path / "findings.jsonl"
    tail = EventHubTail(
        tmp_path,
        server,
        [
            "--allowlist",
            str(allowlist_file),
            "--sink",
            f"file:{sink}",
            "--sink",
            "stdout",
            "--from-start",
            "--source-page-size",
            "3",
            "--eventhub-consumer-group",
            "ua-sentinel",
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
    assert any(0 < n < stored for n in killed_at), killed_at  # at least one kill fell mid-history
    rest = lines[cut:]
    chunks = [rest[i : i + 40] for i in range(0, len(rest), 40)]
    for i, chunk in enumerate(chunks):  # new events while it runs, each chunk into one partition
        hub.put(chunk, str(i % PARTITIONS))
        if i % 3 == 1:
            time.sleep(rng.uniform(0, 0.2))
            tail.kill9()
            tail.start()
        wait_for(lambda n=hub.records: tail.read_all(n), 60, f"the tailer to read {hub.records} lines")
    assert tail.stop() == 0, tail.stderr()

    expected = _expected(tmp_path, hub, allowlist_file)
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
    streams = tail.checkpoint()["streams"][LABEL]["streams"]
    assert sorted(streams) == [str(p) for p in range(PARTITIONS)]
    assert server.consumer_groups == {"ua-sentinel"}
    assert "Traceback" not in tail.stderr()


def test_without_a_checkpoint_old_events_are_skipped(
    tmp_path: Path, server: EventHubServer, allowlist_file: Path
) -> None:
    hub = Hub(server, random.Random(SEED))
    lines = _fixture_lines()
    half = len(lines) // 2
    hub.put(lines[:half])  # before the first start: history, not read
    hub.presented.clear()
    hub.records = 0
    tail = EventHubTail(tmp_path, server, ["--allowlist", str(allowlist_file)])
    tail.start()

    def positioned() -> bool:
        streams = (tail.checkpoint().get("streams") or {}).get(LABEL, {}).get("streams", {})
        return len(streams) == PARTITIONS and not any(p["at_end"] for p in streams.values())

    wait_for(positioned, 60, "every partition positioned at its end")
    hub.put(lines[half:])
    wait_for(lambda: tail.read_all(hub.records), 60, "the new events")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, hub, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    assert server.consumer_groups == {"$Default"}


def test_a_missing_hub_does_not_stop_the_others(
    tmp_path: Path, server: EventHubServer, allowlist_file: Path
) -> None:
    hub = Hub(server, random.Random(SEED))
    hub.put(_fixture_lines())
    missing = f"eventhub:{NAMESPACE}/diagnostics-not-set-yet"
    tail = EventHubTail(
        tmp_path, server, ["--allowlist", str(allowlist_file), "--from-start", "--source", missing]
    )
    tail.start()
    wait_for(lambda: tail.read_all(hub.records), 60, "the existing hub read")
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, hub, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    refusals = [
        json.loads(line) for line in tail.stderr().splitlines() if "cannot list the source's streams" in line
    ]
    assert refusals and {(r["source"], r["kind"]) for r in refusals} == {(missing, "not-found")}
    assert "Traceback" not in tail.stderr()


def test_a_hub_policy_for_another_hub_is_one_line(tmp_path: Path) -> None:
    conn = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=c2VjcmV0;EntityPath=other"
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), "--source", LABEL],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "AZURE_EVENTHUB_CONNECTION_STRING": conn},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.endswith(f"is for the event hub 'other', not '{HUB}'"), last
    assert b"c2VjcmV0" not in result.stderr and b"Traceback" not in result.stderr


def test_a_bad_record_is_counted_and_skipped(
    tmp_path: Path, server: EventHubServer, allowlist_file: Path
) -> None:
    hub = Hub(server, random.Random(SEED))
    lines = _fixture_lines()
    half = len(lines) // 2
    hub.put(lines[:half])
    bad_partition = str(hub.turn % PARTITIONS)
    hub.send(b"not JSON at all", bad_partition)
    one_good = _record(lines[half])
    no_log = {"category": "kube-audit", "properties": {"stream": "stdout"}}
    hub.send(json.dumps({"records": [no_log, one_good]}).encode(), bad_partition, lines=2)
    broken = {"category": "kube-audit", "properties": {"log": '{"kind": "Event", broken'}}
    hub.send(json.dumps({"records": [broken]}).encode())
    hub.put(lines[half + 1 :])
    tail = EventHubTail(tmp_path, server, ["--allowlist", str(allowlist_file), "--from-start"])
    tail.start()
    wait_for(lambda: tail.read_all(hub.records), 60, "every record read")
    assert tail.stats()["malformed"] == 3
    assert tail.stop() == 0, tail.stderr()
    expected = _expected(tmp_path, hub, allowlist_file)
    assert len(expected) >= 5
    assert {f["event"]["id"] for f in findings_in(*tail.stdout_files)} == {f["event"]["id"] for f in expected}
    stderr = tail.stderr()
    skipped = [json.loads(line) for line in stderr.splitlines() if "malformed audit input skipped" in line]
    assert len(skipped) == 3
    refused = [json.loads(line) for line in stderr.splitlines() if "event hub record refused" in line]
    assert [(r["partition"], r["reason"][:14]) for r in refused] == [
        (bad_partition, "aks: not JSON:"),
        (bad_partition, "kube-audit rec"),
    ]
    assert refused[1]["reason"] == "kube-audit record without properties.log"
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("outage", "kind"), [("reset", "unavailable"), ("busy", "throttled")])
def test_an_outage_loses_nothing_and_the_tailer_backs_off(
    tmp_path: Path, server: EventHubServer, allowlist_file: Path, outage: str, kind: str
) -> None:
    hub = Hub(server, random.Random(SEED))
    lines = _fixture_lines()
    cut = len(lines) // 2
    hub.put(lines[:cut])
    sink = tmp_path / "findings.jsonl"
    port = _free_port()
    tail = EventHubTail(
        tmp_path,
        server,
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
    wait_for(lambda: tail.read_all(hub.records), 60, "the stored events read")

    def attempts() -> int:
        return server.resets if outage == "reset" else server.busy_detaches

    server.outage(outage)
    hub.put(lines[cut:])  # written during the outage
    began = time.monotonic()
    wait_for(lambda: attempts() >= 3, 60, "the tailer to meet the outage")
    time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # the outage lasts 4 s
    during = attempts()
    server.outage(None)
    wait_for(lambda: tail.read_all(hub.records), 120, "the events of the outage read")
    metrics = _scrape(port)
    assert tail.stop() == 0, tail.stderr()
    # Polling every 0.02 s without a backoff makes a hundred attempts in 4 s; the backoff (full
    # jitter, from 0.02 s doubling) about ten.
    print(f"attempts during the {outage} outage: {during}")
    assert during <= 30, during
    expected = _expected(tmp_path, hub, allowlist_file)
    assert {f["event"]["id"] for f in findings_in(sink)} == {f["event"]["id"] for f in expected}
    label = f'source="{LABEL}"'
    assert metrics[f'ua_sentinel_source_errors_total{{kind="{kind}",{label}}}'] >= 1
    assert metrics[f"ua_sentinel_source_events_total{{{label}}}"] == hub.records
    stderr = tail.stderr()
    assert "source call failed; backing off" in stderr and "Traceback" not in stderr
    assert f'"kind":"{kind}"' in stderr.replace(" ", "")


def _scrape(port: int) -> dict[str, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_without_credentials_calls_fail_as_denied_not_with_a_traceback(
    server: EventHubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection string and no identity (no Workload Identity token, no managed identity):
    azure-identity's ClientAuthenticationError, raised when the connection authenticates, is a
    ``denied`` SourceError (the reader backs off), not an exception that stops the tailer."""
    from azure.eventhub import EventHubConsumerClient
    from azure.identity import DefaultAzureCredential

    from webhook.inputs.eventhub import EventHubSource
    from webhook.inputs.source import SourceError

    for name in [k for k in os.environ if k.startswith(("AZURE_", "IDENTITY_", "MSI_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", "/nonexistent")  # no az / azd / pwsh to borrow a login from
    client = EventHubConsumerClient(
        f"127.0.0.1:{server.port}",
        HUB,
        "$Default",
        credential=DefaultAzureCredential(),
        use_tls=False,  # what UseDevelopmentEmulator=true sets
        retry_total=0,
    )
    source = EventHubSource(f"{NAMESPACE}/{HUB}", client=client)
    for call in (source.streams, lambda: source.page("0", None, limit=5)):
        with pytest.raises(SourceError) as raised:
            call()
        assert raised.value.kind == "denied", str(raised.value)
        assert "\n" not in str(raised.value)
    source.close()


def test_without_the_sdk_one_line_says_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    (blocker / "azure" / "eventhub").mkdir(parents=True)
    init = blocker / "azure" / "eventhub" / "__init__.py"
    init.write_text("raise ImportError('No module named azure.eventhub')\n")
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), "--source", LABEL],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines()[-1].endswith("pip install 'ua-sentinel[azure]'")
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("eventhub:", "needs NAMESPACE/HUB"),
        ("eventhub:ns", "needs NAMESPACE/HUB"),
        ("eventhub:ns/a/b", "needs NAMESPACE/HUB"),
    ],
)
def test_eventhub_mistakes_are_one_line(tmp_path: Path, source: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), "--source", source],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.decode()
    assert b"Traceback" not in result.stderr
