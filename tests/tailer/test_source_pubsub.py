"""`tail --source pubsub:projects/P/subscriptions/S` against a local Pub/Sub endpoint that speaks
the real gRPC protocol (``pubsub_server.PubSubStandIn``, a stand-in: no official emulator installs
here), reached by google-cloud-pubsub through ``PUBSUB_EMULATOR_HOST``.

The recorded apiserver events, as GKE's log sink publishes them (one LogEntry JSON per message),
are read by a real ``ua-sentinel tail`` process that is killed with SIGKILL mid-stream and
restarted while messages arrive: the findings are exactly those of ``replay --format gke`` on the
same entries. A crash between the checkpoint and the acknowledgement, an outage (UNAVAILABLE,
RESOURCE_EXHAUSTED) and bad messages lose nothing, count nothing twice and make no busy loop.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from .conftest import ROOT, Tail, findings_in, keys, replay_findings, wait_for
from .gke_entries import recorded_entries
from .pubsub_server import PubSubStandIn

TOPIC = "projects/ua-sentinel-test/topics/gke-audit"
SUBSCRIPTION = "projects/ua-sentinel-test/subscriptions/ua-sentinel"
LABEL = f"pubsub:{SUBSCRIPTION}"
SEED = int(os.environ.get("UA_SENTINEL_TEST_SEED", "20261130"))


@pytest.fixture
def pubsub() -> Iterator[PubSubStandIn]:
    server = PubSubStandIn()
    server.create(TOPIC, SUBSCRIPTION, ack_deadline=10)  # Pub/Sub's default and minimum
    yield server
    server.close()


class PubSubTail(Tail):
    """The conftest's `Tail`, reading `--source pubsub:SUBSCRIPTION` through the stand-in."""

    start_timeout = 60.0

    def __init__(self, workdir: Path, server: PubSubStandIn, args: list[str]) -> None:
        env = {
            "PUBSUB_EMULATOR_HOST": server.host,
            "GOOGLE_CLOUD_PROJECT": "ua-sentinel-test",
            "GOOGLE_APPLICATION_CREDENTIALS": str(workdir / "no-credentials"),
        }
        super().__init__(workdir, None, ["--source", LABEL, "--poll-interval", "0.1", *args], env)
        self.server = server

    def read_all(self, count: int) -> bool:
        """The checkpoint stands after ``count`` events, holds no backlog, and every message is
        acknowledged."""
        cp = self.checkpoint()
        done = (cp.get("stats") or {}).get("lines") == count and not any((cp.get("backlog") or {}).values())
        return done and self.server.unacked(SUBSCRIPTION) == 0


def _expected(tmp_path: Path, entries: list[bytes], allowlist: Path, *extra: str) -> list[dict[str, Any]]:
    """`replay --format gke` on the entries in the order they were published."""
    whole = tmp_path / "published.jsonl"
    whole.write_bytes(b"".join(entry + b"\n" for entry in entries))
    baseline = str(tmp_path / "replay-baseline.sqlite")
    return replay_findings(whole, allowlist, "--format", "gke", "--baseline", baseline, *extra)


def _same_findings(delivered: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert {(f["event"]["id"], f["rule"]["name"]) for f in delivered} == {
        (f["event"]["id"], f["rule"]["name"]) for f in expected
    }
    assert {k for k in keys(expected) if k[1] == 1} <= set(keys(delivered))
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for finding in delivered:  # a repeat is the same finding: same id, same content
        key = (finding["event"]["id"], finding["event"]["sequence"])
        assert by_key.setdefault(key, finding) == finding


def test_kill9_mid_stream_while_messages_arrive_gives_replays_findings(
    tmp_path: Path, pubsub: PubSubStandIn, allowlist_file: Path
) -> None:
    rng = random.Random(SEED)
    entries = recorded_entries()
    cut = len(entries) * 3 // 5
    pubsub.publish(TOPIC, entries[:cut])  # waiting in the subscription before the tailer starts
    pubsub.latency = 0.02  # a round trip to Pub/Sub: reading them takes a while, kills fall inside
    sink = tmp_path / "findings.jsonl"
    tail = PubSubTail(
        tmp_path,
        pubsub,
        [
            *("--allowlist", str(allowlist_file), "--sink", f"file:{sink}", "--sink", "stdout"),
            *("--source-page-size", "7"),
        ],
    )
    tail.start()

    def restart() -> None:
        tail.kill9()
        # What waiting out the ack deadline does: what the killed reader held comes back.
        pubsub.expire_leases()
        tail.start()

    killed_at: list[int] = []
    for _ in range(3):  # SIGKILL while the waiting messages are read, page by page
        wait_for(lambda: (tail.checkpoint().get("stats") or {}).get("lines", 0) > 0, 60, "reading")
        time.sleep(rng.uniform(0, 0.3))
        killed_at.append((tail.checkpoint().get("stats") or {}).get("lines", 0))
        restart()
    assert any(0 < n < cut for n in killed_at), killed_at  # at least one kill fell mid-stream
    read = cut
    rest = entries[cut:]
    chunks = [rest[i : i + 40] for i in range(0, len(rest), 40)]
    for i, chunk in enumerate(chunks):  # new messages arrive while it runs
        pubsub.publish(TOPIC, chunk)
        read += len(chunk)
        if i % 3 == 1:
            time.sleep(rng.uniform(0, 0.2))
            restart()
        wait_for(lambda n=read: tail.read_all(n), 90, f"the tailer to read {read} messages")
    assert tail.stop() == 0, tail.stderr()

    expected = _expected(tmp_path, entries, allowlist_file)
    assert len(expected) >= 5
    _same_findings(findings_in(sink, *tail.stdout_files), expected)
    in_file = keys(findings_in(sink))
    assert len(in_file) == len(set(in_file)), "duplicate (id, sequence) in the file sink"
    assert "Traceback" not in tail.stderr()


def test_a_crash_between_checkpoint_and_ack_counts_nothing_twice(
    tmp_path: Path, pubsub: PubSubStandIn, allowlist_file: Path
) -> None:
    """The tailer dies as its first acknowledgement leaves: the saved checkpoint counted those
    messages, Pub/Sub redelivers them after their deadline; they must not be read again."""
    entries = recorded_entries()
    pubsub.publish(TOPIC, entries)
    sink = tmp_path / "findings.jsonl"
    tail = PubSubTail(
        tmp_path,
        pubsub,
        ["--allowlist", str(allowlist_file), "--sink", f"file:{sink}", "--source-page-size", "50"],
    )
    lost: list[int] = []
    started = threading.Event()

    def crash(ack_ids: list[str]) -> bool:
        if lost:
            return False
        assert started.wait(60)
        assert tail.proc is not None
        tail.proc.send_signal(signal.SIGKILL)
        tail.proc.wait(10)
        lost.append(len(ack_ids))
        return True  # the acknowledgement never arrives

    pubsub.on_acknowledge = crash
    tail.start()
    started.set()
    wait_for(lambda: bool(lost), 60, "the first acknowledgement")
    counted = tail.checkpoint()["streams"][LABEL]["counted"]
    read = tail.checkpoint()["stats"]["lines"]
    assert len(counted) == read == lost[0] > 0  # the checkpoint counted exactly the lost acks
    assert pubsub.unacked(SUBSCRIPTION) == len(entries)
    tail.start()  # no lease expired by hand: the real 10 s ack deadline brings them back

    def settled() -> bool:
        cp = tail.checkpoint()
        done = cp["stats"].get("lines", 0) >= len(entries) and not any(cp["backlog"].values())
        return done and pubsub.unacked(SUBSCRIPTION) == 0

    wait_for(settled, 120, "every message read and acknowledged")
    assert tail.stop() == 0, tail.stderr()
    assert tail.checkpoint()["stats"]["lines"] == len(entries)  # the redelivered ones not read twice
    assert "messages the checkpoint counted came again" in tail.stderr()
    _same_findings(findings_in(sink), _expected(tmp_path, entries, allowlist_file))
    assert "Traceback" not in tail.stderr()


def test_held_messages_are_kept_from_redelivery_until_the_checkpoint(
    tmp_path: Path, pubsub: PubSubStandIn, allowlist_file: Path
) -> None:
    """Messages wait for the checkpoint (here 25 s away) beyond the subscription's 10 s ack
    deadline: their leases are extended, so Pub/Sub does not hand them out again meanwhile."""
    entries = recorded_entries()[:60]
    pubsub.publish(TOPIC, entries)
    tail = PubSubTail(tmp_path, pubsub, ["--allowlist", str(allowlist_file), "--checkpoint-interval", "25"])
    tail.start()
    wait_for(lambda: len(pubsub.deliveries) == len(entries), 60, "every message handed out")
    # The condition is time itself: the first leases' 10 s deadline passing (plus a margin).
    wait_for(lambda: time.monotonic() > pubsub.first_lease + 13, 60, "the subscription's deadline to pass")
    assert pubsub.calls["ModifyAckDeadline"] >= 1
    assert set(pubsub.deliveries.values()) == {1}  # none redelivered while held
    assert pubsub.unacked(SUBSCRIPTION) == len(entries)  # none acknowledged before the checkpoint
    # While they wait for the checkpoint, a Pull does not hold the loop (and the checkpoint) long.
    later = [wait for at, wait in pubsub.pull_waits if at > pubsub.first_lease]
    assert later and all(wait is not None and wait <= 1.0 for wait in later), later
    assert tail.stop() == 0, tail.stderr()  # the last checkpoint, then the acknowledgements
    assert pubsub.unacked(SUBSCRIPTION) == 0
    assert tail.checkpoint()["stats"]["lines"] == len(entries)


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
    ("code", "kind"),
    [(grpc.StatusCode.UNAVAILABLE, "unavailable"), (grpc.StatusCode.RESOURCE_EXHAUSTED, "throttled")],
)
def test_an_outage_loses_nothing_and_the_tailer_backs_off(
    tmp_path: Path,
    pubsub: PubSubStandIn,
    allowlist_file: Path,
    free_port: int,
    code: grpc.StatusCode,
    kind: str,
) -> None:
    entries = recorded_entries()
    cut = len(entries) // 2
    pubsub.publish(TOPIC, entries[:cut])
    sink = tmp_path / "findings.jsonl"
    tail = PubSubTail(
        tmp_path,
        pubsub,
        [
            *("--allowlist", str(allowlist_file), "--sink", f"file:{sink}"),
            *("--metrics-port", str(free_port), "--poll-interval", "0.02"),
        ],
    )
    tail.start()
    wait_for(lambda: tail.read_all(cut), 60, "the waiting messages read")
    pubsub.outage(code)
    pubsub.publish(TOPIC, entries[cut:])  # the log sink goes on publishing during the outage
    began = time.monotonic()
    wait_for(lambda: pubsub.refused >= 3, 60, "the tailer to meet the outage")
    time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # the outage lasts 4 s
    refused = pubsub.refused
    pubsub.outage(None)
    wait_for(lambda: tail.read_all(len(entries)), 120, "the messages of the outage read")
    metrics = _scrape(free_port)
    assert tail.stop() == 0, tail.stderr()
    # Polling every 0.02 s without a backoff makes about two hundred calls in 4 s; the backoff
    # (full jitter, from 0.02 s doubling) about ten.
    print(f"calls refused during the {kind} outage: {refused}")
    assert refused <= 30, refused
    _same_findings(findings_in(sink), _expected(tmp_path, entries, allowlist_file))
    label = f'source="{LABEL}"'
    assert metrics[f"ua_sentinel_source_events_total{{{label}}}"] == len(entries)
    assert metrics[f'ua_sentinel_source_errors_total{{kind="{kind}",{label}}}'] == pubsub.refused
    assert metrics[f"ua_sentinel_source_last_success_timestamp_seconds{{{label}}}"] > 0
    assert metrics[f"ua_sentinel_source_redelivered_total{{{label}}}"] == 0
    assert 0 <= metrics[f"ua_sentinel_source_lag_seconds{{{label}}}"] < 3600  # publish times are now
    stderr = tail.stderr()
    assert "source call failed; backing off" in stderr and "Traceback" not in stderr
    assert f'"kind":"{kind}"' in stderr.replace(" ", "")


def test_the_endpoint_going_away_loses_nothing_and_the_tailer_backs_off(
    tmp_path: Path, pubsub: PubSubStandIn, allowlist_file: Path, free_port: int
) -> None:
    """The port closes (connections refused) for 4 s: the tailer's own count of failed calls
    shows it backed off; what was published meanwhile is read once the endpoint is back."""
    entries = recorded_entries()
    cut = len(entries) // 2
    pubsub.publish(TOPIC, entries[:cut])
    sink = tmp_path / "findings.jsonl"
    tail = PubSubTail(
        tmp_path,
        pubsub,
        [
            *("--allowlist", str(allowlist_file), "--sink", f"file:{sink}"),
            *("--metrics-port", str(free_port), "--poll-interval", "0.02"),
        ],
    )
    tail.start()
    wait_for(lambda: tail.read_all(cut), 60, "the waiting messages read")
    errors = f'ua_sentinel_source_errors_total{{kind="unavailable",source="{LABEL}"}}'
    pubsub.go_away()
    pubsub.publish(TOPIC, entries[cut:])  # kept by the service while its endpoint is unreachable
    began = time.monotonic()
    wait_for(lambda: _scrape(free_port)[errors] >= 3, 60, "the tailer to meet the outage")
    time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # the outage lasts 4 s
    failed = _scrape(free_port)[errors]
    pubsub.come_back()
    wait_for(lambda: tail.read_all(len(entries)), 180, "the messages of the outage read")
    assert tail.stop() == 0, tail.stderr()
    print(f"calls failed while the endpoint was away: {failed}")
    assert failed <= 30, failed
    _same_findings(findings_in(sink), _expected(tmp_path, entries, allowlist_file))
    assert "Traceback" not in tail.stderr()


def test_bad_messages_are_counted_skipped_and_acknowledged(
    tmp_path: Path, pubsub: PubSubStandIn, allowlist_file: Path
) -> None:
    entries = recorded_entries()
    other_service = json.dumps(
        {
            "insertId": "x1",
            "logName": "projects/ua-sentinel-test/logs/cloudaudit.googleapis.com%2Factivity",
            "protoPayload": {"serviceName": "compute.googleapis.com", "methodName": "v1.compute.zones.list"},
            "timestamp": "2026-11-27T18:10:50Z",
        }
    ).encode()
    bad = [b"not JSON at all \x1b[31m", b'{"no": "entry"}', b"[1, 2]", other_service]
    mixed = entries[:100] + bad + entries[100:]
    pubsub.publish(TOPIC, mixed)
    sink = tmp_path / "findings.jsonl"
    tail = PubSubTail(tmp_path, pubsub, ["--allowlist", str(allowlist_file), "--sink", f"file:{sink}"])
    tail.start()
    wait_for(lambda: tail.read_all(len(entries)), 60, "every message read and acknowledged")
    stats = tail.checkpoint()["stats"]
    assert tail.stop() == 0, tail.stderr()
    assert stats["malformed"] == 3 and stats["skipped_records"] == 1
    _same_findings(findings_in(sink), _expected(tmp_path, entries, allowlist_file))
    stderr = tail.stderr()
    warnings = [line for line in stderr.splitlines() if "malformed audit input skipped" in line]
    assert len(warnings) == 3 and all(LABEL in line for line in warnings)
    assert "\x1b" not in stderr and "Traceback" not in stderr


def _run(tmp_path: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "tail", "--state", str(tmp_path / "s"), *args],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_without_the_library_one_line_says_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "site" / "google" / "cloud" / "pubsub_v1"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named google.cloud.pubsub_v1')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    result = _run(tmp_path, ["--source", LABEL], env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().strip().splitlines()[-1].endswith("pip install 'ua-sentinel[gcp]'")
    assert b"Traceback" not in result.stderr


def test_without_credentials_one_line_says_how_to_give_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "PUBSUB_", "CLOUDSDK_"))}
    env.update(
        HOME=str(tmp_path),  # no gcloud application-default credentials
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        NO_GCE_CHECK="true",  # not on GCE: do not wait for a metadata server
    )
    result = _run(tmp_path, ["--source", LABEL], env)
    assert result.returncode == 1, result.stderr
    assert "no Google credentials" in result.stderr.decode().strip().splitlines()[-1]
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--source", "pubsub:my-subscription"], 2, "needs a subscription's full name"),
        (["--source", "pubsub:projects/p/topics/gke-audit"], 2, "needs a subscription's full name"),
        (["--source", "pubsub:projects/p/subscriptions/s"], 2, "needs a subscription's full name"),
        (["--source", f"{LABEL.rsplit('/', 1)[0]}/goog-audit"], 2, "needs a subscription's full name"),
        (["--source", LABEL, "--source", "cloudwatch:/aws/eks/c/cluster"], 1, "cannot be mixed"),
        (["--source", LABEL, "--format", "aks"], 1, "a pubsub source holds gke records, not --format aks"),
    ],
)
def test_pubsub_source_mistakes_are_one_line(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    result = _run(tmp_path, args, {**os.environ, "PUBSUB_EMULATOR_HOST": "127.0.0.1:1"})
    assert result.returncode == status, result.stderr
    assert message in result.stderr.decode()
    assert b"Traceback" not in result.stderr
