"""Source throughput: `tail --source cloudwatch:...` against moto's server (``eventhub:...``
against the tests' local Event Hubs endpoint: :func:`run_eventhub`), and the file tailer on
the same events as the baseline (events/s end to end: read, decode, detect, deliver, checkpoint).

The generated events are put into one log group across three ``kube-apiserver-audit-*`` streams
(as EKS writes them) on a local moto server, and written in the order the source presents them
(time order) to a file. Each tailer starts with ``--from-start`` on an empty state directory;
the time is from its start until its checkpoint stands after the last event. moto is a Python
(Flask) server on the same machine, so the CloudWatch figure is a floor for the client side, not
a prediction of CloudWatch's own latency or of its API limits (GetLogEvents: 25 requests/s per
account and region, 10,000 events or 1 MB per call).

``--source azblob``: the events as an AKS diagnostic setting archives them (JSON Lines of
``kube-audit`` records in three hour append blobs) in Azurite (Node.js, on the same machine),
read with ranged GETs; the baseline file holds the bare events.

``--source pubsub``: the ResponseComplete events as GKE LogEntries (``tests/tailer/gke_entries``)
published to a subscription of the tests' local Pub/Sub stand-in (real gRPC wire protocol, in
this process), read by ``tail --source pubsub:...``; the baseline is ``tail --format gke`` on a
file of the same entries in publish order. Pub/Sub allows 1,000 messages per Pull; the stand-in
answers on loopback, so this too is a floor for the client side, not Pub/Sub's own latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OUT, Proc, free_port, wait_for
from bench.generate import generate

GROUP = "/aws/eks/bench/cluster"
STREAMS = [f"kube-apiserver-audit-{h}" for h in ("0a1b2c3d4e", "5f6a7b8c9d", "e0f1a2b3c4")]
BATCH = 5000


def _lines_read(state: Path) -> int:
    try:
        return int(json.loads((state / "checkpoint.json").read_bytes())["stats"].get("lines", 0))
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _run_tail(name: str, args: list[str], env: dict[str, str], count: int, work: Path) -> float:
    state = work / f"state-{name}"
    argv = [
        sys.executable,
        "-m",
        "webhook",
        "tail",
        "--state",
        str(state),
        "--from-start",
        "--checkpoint-interval",
        "0.1",
        "--sink",
        f"file:{work / f'findings-{name}.jsonl'}",
        *args,
    ]
    start = time.perf_counter()
    with Proc(f"source-throughput-{name}", argv, env=env) as proc:
        wait_for(lambda: _lines_read(state) >= count, timeout=3600, what=f"{name} to read", alive=proc)
        seconds = time.perf_counter() - start
    return seconds


def run(events: int = 50_000, seed: int = 7, page_size: int = 1000) -> dict[str, float]:
    import boto3

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="source-throughput-", dir=OUT))
    generated = work / "generated.log"
    generate(events, seed, generated)
    lines = generated.read_bytes().splitlines()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(work / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
    }
    with Proc("source-throughput-moto", [sys.executable, "-m", "moto.server", "-p", str(port)]) as moto:
        client = boto3.client(
            "logs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

        def up() -> bool:
            try:
                client.describe_log_groups()
                return True
            except Exception:
                return False

        wait_for(up, timeout=60, what="moto", alive=moto)
        client.create_log_group(logGroupName=GROUP)
        per: dict[str, list[dict[str, object]]] = {name: [] for name in STREAMS}
        base = int(time.time() * 1000) - events  # one event per millisecond, in order, recent
        for i, line in enumerate(lines):
            per[STREAMS[i % len(STREAMS)]].append({"timestamp": base + i, "message": line.decode()})
        for name, items in per.items():
            client.create_log_stream(logGroupName=GROUP, logStreamName=name)
            for at in range(0, len(items), BATCH):
                client.put_log_events(
                    logGroupName=GROUP, logStreamName=name, logEvents=items[at : at + BATCH]
                )
        # The file holds the same events in the order the source presents them (time order).
        ordered = work / "ordered.log"
        ordered.write_bytes(b"".join(line + b"\n" for line in lines))

        cloud = _run_tail(
            "cloudwatch",
            ["--source", f"cloudwatch:{GROUP}", "--source-page-size", str(page_size)],
            env,
            events,
            work,
        )
    file = _run_tail("file", [str(ordered)], env, events, work)
    same = {
        json.loads(x)["event"]["id"] for x in (work / "findings-cloudwatch.jsonl").read_bytes().splitlines()
    }
    base_ids = {
        json.loads(x)["event"]["id"] for x in (work / "findings-file.jsonl").read_bytes().splitlines()
    }
    result = {
        "events": events,
        "cloudwatch_events_per_s": events / cloud,
        "file_events_per_s": events / file,
        "cloudwatch_seconds": cloud,
        "file_seconds": file,
        "ratio": file / cloud,
        "same_findings": float(same == base_ids),
        "findings": len(base_ids),
    }
    print(
        f"{events:,} events, page size {page_size}: cloudwatch (moto) {events / cloud:,.0f} events/s "
        f"({cloud:.1f} s), file tailer {events / file:,.0f} events/s ({file:.1f} s): the file tailer is "
        f"{file and cloud / file:.1f}x faster; same finding ids: {same == base_ids} ({len(base_ids)} ids)"
    )
    return result


def run_eventhub(
    events: int = 50_000, seed: int = 7, page_size: int = 1000, records: int = 50
) -> dict[str, float]:
    """`tail --source eventhub:...` against the tests' local Event Hubs endpoint (an AMQP 1.0
    stand-in in this process: tests/tailer/eventhub_server.py), ``records`` audit records per
    Event Hubs event as an AKS diagnostic setting batches them, over three partitions; the file
    tailer on the same events. A floor for the client side (the stand-in is Python on the same
    machine), not a prediction of Event Hubs' latency or of a namespace's throughput units."""
    from tests.tailer.eventhub_server import EventHubServer

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="source-throughput-eventhub-", dir=OUT))
    generated = work / "generated.log"
    generate(events, seed, generated)
    lines = generated.read_bytes().splitlines()
    server = EventHubServer("bench", 3).start()
    try:
        base = int(time.time() * 1000) - events
        for n, at in enumerate(range(0, len(lines), records)):
            batch = [
                {"category": "kube-audit", "properties": {"log": line.decode(), "stream": "stdout"}}
                for line in lines[at : at + records]
            ]
            body = json.dumps({"records": batch}, separators=(",", ":")).encode()
            server.append(str(n % 3), body, base + n)
        ordered = work / "ordered.log"
        ordered.write_bytes(b"".join(line + b"\n" for line in lines))
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "AZURE_EVENTHUB_CONNECTION_STRING": server.connection_string(),
        }
        source = ["--source", "eventhub:bench-ns/bench", "--source-page-size", str(page_size)]
        cloud = _run_tail("eventhub", source, env, events, work)
    finally:
        server.stop()
    file = _run_tail("file", [str(ordered)], env, events, work)
    same, base_ids = (
        {json.loads(x)["event"]["id"] for x in (work / f"findings-{name}.jsonl").read_bytes().splitlines()}
        for name in ("eventhub", "file")
    )
    print(
        f"{events:,} events, {records} records per Event Hubs event, page size {page_size}: eventhub "
        f"(local AMQP stand-in) {events / cloud:,.0f} events/s ({cloud:.1f} s), file tailer "
        f"{events / file:,.0f} events/s ({file:.1f} s): the file tailer is {file and cloud / file:.1f}x "
        f"faster; same finding ids: {same == base_ids} ({len(base_ids)} ids)"
    )
    return {
        "events": events,
        "eventhub_events_per_s": events / cloud,
        "file_events_per_s": events / file,
        "eventhub_seconds": cloud,
        "file_seconds": file,
        "ratio": file / cloud,
        "same_findings": float(same == base_ids),
        "findings": len(base_ids),
    }


def run_pubsub(events: int = 50_000, seed: int = 7, page_size: int = 1000) -> dict[str, float]:
    from tests.tailer.gke_entries import log_entry
    from tests.tailer.pubsub_server import PubSubStandIn

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="source-throughput-pubsub-", dir=OUT))
    generated = work / "generated.log"
    generate(events, seed, generated)
    entries = [log_entry(json.loads(line)) for line in generated.read_bytes().splitlines()]
    published = [json.dumps(e, separators=(",", ":")).encode() for e in entries if e is not None]
    ordered = work / "entries.jsonl"
    ordered.write_bytes(b"".join(entry + b"\n" for entry in published))
    topic, subscription = "projects/ua-bench/topics/gke-audit", "projects/ua-bench/subscriptions/bench"
    server = PubSubStandIn()
    try:
        server.create(topic, subscription, ack_deadline=60)
        for at in range(0, len(published), BATCH):
            server.publish(topic, published[at : at + BATCH])
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "PUBSUB_EMULATOR_HOST": server.host,
        }
        cloud = _run_tail(
            "pubsub",
            ["--source", f"pubsub:{subscription}", "--source-page-size", str(min(page_size, 1000))],
            env,
            len(published),
            work,
        )
    finally:
        server.close()
    file = _run_tail("file-gke", ["--format", "gke", str(ordered)], env, len(published), work)
    ids = [
        {json.loads(x)["event"]["id"] for x in (work / f"findings-{name}.jsonl").read_bytes().splitlines()}
        for name in ("pubsub", "file-gke")
    ]
    count = len(published)
    print(
        f"{count:,} GKE entries, page size {min(page_size, 1000)}: pubsub (stand-in) "
        f"{count / cloud:,.0f} events/s ({cloud:.1f} s), file tailer --format gke {count / file:,.0f} "
        f"events/s ({file:.1f} s): the file tailer is {cloud / file:.1f}x faster; same finding ids: "
        f"{ids[0] == ids[1]} ({len(ids[1])} ids)"
    )
    return {
        "events": count,
        "pubsub_events_per_s": count / cloud,
        "file_events_per_s": count / file,
        "ratio": file / cloud,
        "same_findings": float(ids[0] == ids[1]),
    }


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's one built-in account and its published key: not a secret."""
AKS_CONTAINER = "insights-logs-kube-audit"
AKS_CLUSTER = (
    "/SUBSCRIPTIONS/0/RESOURCEGROUPS/BENCH/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/BENCH"
)


def run_azblob(events: int = 50_000, seed: int = 7, page_size: int = 1000) -> dict[str, float]:
    import datetime as dt

    from azure.storage.blob import BlobServiceClient

    from tests.e2e.tools import ensure_azurite

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="source-throughput-azblob-", dir=OUT))
    generated = work / "generated.log"
    generate(events, seed, generated)
    lines = generated.read_bytes().splitlines()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint};"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "AZURE_STORAGE_CONNECTION_STRING": connection,
    }
    azurite = [str(ensure_azurite(sys.stderr)), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    azurite += [
        "--location",
        str(work / "azurite"),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    with Proc("source-throughput-azurite", azurite) as server:
        service = BlobServiceClient.from_connection_string(connection)
        wait_for(
            lambda: bool(list(service.list_containers())) or True, timeout=60, what="azurite", alive=server
        )
        container = service.create_container(AKS_CONTAINER)
        now = dt.datetime.now(dt.UTC)
        thirds = [lines[i * len(lines) // 3 : (i + 1) * len(lines) // 3] for i in range(3)]
        for hours_ago, part in zip((2, 1, 0), thirds, strict=True):
            at = now - dt.timedelta(hours=hours_ago)
            name = f"resourceId={AKS_CLUSTER}/y={at:%Y}/m={at:%m}/d={at:%d}/h={at:%H}/m=00/PT1H.json"
            blob = container.get_blob_client(name)
            blob.create_append_blob()
            data = bytearray()
            for line in part:
                record = {
                    "time": json.loads(line)["stageTimestamp"],
                    "resourceId": AKS_CLUSTER,
                    "category": "kube-audit",
                    "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
                    "properties": {"log": line.decode(), "stream": "stdout", "pod": "kube-apiserver-0"},
                }
                data += json.dumps(record, separators=(",", ":")).encode() + b"\n"
            for at_byte in range(0, len(data), 4 * 1024 * 1024):
                blob.append_block(bytes(data[at_byte : at_byte + 4 * 1024 * 1024]))
        ordered = work / "ordered.log"
        ordered.write_bytes(b"".join(line + b"\n" for line in lines))
        cloud = _run_tail(
            "azblob",
            ["--source", f"azblob:{AZURITE_ACCOUNT}/{AKS_CONTAINER}", "--source-page-size", str(page_size)],
            env,
            events,
            work,
        )
    file = _run_tail("file", [str(ordered)], env, events, work)
    ids = {
        name: {
            json.loads(x)["event"]["id"] for x in (work / f"findings-{name}.jsonl").read_bytes().splitlines()
        }
        for name in ("azblob", "file")
    }
    same = ids["azblob"] == ids["file"]
    print(
        f"{events:,} events, page size {page_size}: azblob (Azurite) {events / cloud:,.0f} events/s "
        f"({cloud:.1f} s), file tailer {events / file:,.0f} events/s ({file:.1f} s): the file tailer is "
        f"{file and cloud / file:.1f}x faster; same finding ids: {same} ({len(ids['file'])} ids)"
    )
    return {
        "events": events,
        "azblob_events_per_s": events / cloud,
        "file_events_per_s": events / file,
        "azblob_seconds": cloud,
        "file_seconds": file,
        "ratio": file / cloud,
        "same_findings": float(same),
        "findings": len(ids["file"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--source", choices=["cloudwatch", "eventhub", "pubsub", "azblob", "all"], default="all"
    )
    parser.add_argument("--records", type=int, default=50, help="audit records per Event Hubs event")
    args = parser.parse_args()
    if args.source in ("cloudwatch", "all"):
        run(args.events, args.seed, args.page_size)
    if args.source in ("eventhub", "all"):
        run_eventhub(args.events, args.seed, args.page_size, args.records)
    if args.source in ("pubsub", "all"):
        run_pubsub(args.events, args.seed, args.page_size)
    if args.source in ("azblob", "all"):
        run_azblob(args.events, args.seed, args.page_size)


if __name__ == "__main__":
    main()
