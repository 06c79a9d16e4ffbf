"""Load generator for the soak test, run as its own process (never inside the server's):

    python -m tests.hardening.loadgen admission --url https://127.0.0.1:PORT --ca CA --rate 300 \\
        --seconds 60 --t0 EPOCH --out result.json
    python -m tests.hardening.loadgen audit ... --rate 2000

Open loop: request ``i`` is due at ``t0 + i / rate`` whether or not earlier ones were answered
(a slow server builds up in-flight requests, it does not slow the load). The two streams share
``t0`` and the request numbering, so the audit stream sends request ``i``'s RequestReceived just
before its admission call and its ResponseComplete just after, as the apiserver's batch backend
does (batches every 20 ms); the rest of the audit rate is reads and RBAC refusals (findings).

The result file: counts by status, unanswered (timeout or connection error), latencies (p50,
p99, max, seconds), verdicts seen. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ssl
import time
import uuid
from collections import Counter
from typing import Any

import orjson

USERS = 50
PYTHON_USERS = 10
"""Users 0..9 write with python-requests (unlisted), the others with kubectl (listed)."""
KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
PYTHON = "python-requests/2.34.2"
PROBERS = [(f"prober-{n}", agent) for n in range(5) for agent in ("curl/8.5.0", "kube-hunter/0.6")]
TIMEOUT = 10.0
BATCH_EVERY = 0.02


def _user(i: int) -> tuple[str, str, str]:
    n = i % USERS
    return f"soak-user-{n}", str(10_000 + n), PYTHON if n < PYTHON_USERS else KUBECTL


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def review(i: int) -> bytes:
    user, uid, _ = _user(i)
    name = f"soak-{i}"
    return orjson.dumps(
        {
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "requestKind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "requestResource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": name,
                "namespace": "team",
                "operation": "CREATE",
                "userInfo": {"username": user, "uid": uid, "groups": ["system:authenticated"]},
                "object": {
                    "kind": "ConfigMap",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "namespace": "team"},
                    "data": {"k": "v" * 200},
                },
                "oldObject": None,
                "dryRun": False,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
            },
        }
    )


def _event(
    audit_id: str, stage: str, verb: str, user: str, uid: str, agent: str, **extra: Any
) -> dict[str, Any]:
    now = _now()
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": stage,
        "requestURI": "/api/v1/namespaces/team/configmaps",
        "verb": verb,
        "user": {"username": user, "uid": uid, "groups": ["system:authenticated"]},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": agent,
        "objectRef": {"resource": "configmaps", "namespace": "team", "apiVersion": "v1"},
        "requestReceivedTimestamp": now,
        "stageTimestamp": now,
    }
    event.update(extra)
    return event


def write_events(i: int, stage: str) -> dict[str, Any]:
    user, uid, agent = _user(i)
    extra: dict[str, Any] = {}
    if stage == "ResponseComplete":
        extra = {
            "responseStatus": {"metadata": {}, "code": 201},
            "annotations": {"authorization.k8s.io/decision": "allow"},
        }
    return _event(f"soak-{i}", stage, "create", user, uid, agent, **extra)


def other_event(n: int) -> dict[str, Any]:
    """Reads by listed agents, and now and then an RBAC refusal of an unlisted one (a finding)."""
    if n % 50 == 0:
        user, agent = PROBERS[(n // 50) % len(PROBERS)]
        return _event(
            f"probe-{n}",
            "ResponseComplete",
            "list",
            user,
            "1",
            agent,
            objectRef={"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
            responseStatus={"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
            annotations={"authorization.k8s.io/decision": "forbid"},
        )
    user, uid, _ = _user(n)
    stage = "RequestReceived" if n % 2 else "ResponseComplete"
    extra = {} if stage == "RequestReceived" else {"responseStatus": {"metadata": {}, "code": 200}}
    return _event(f"read-{n // 2}", stage, "get", user, uid, KUBECTL, **extra)


class Results:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.unanswered = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        """From the moment a request was due (open loop: includes any wait for a connection)."""
        self.service: list[float] = []
        """From the first byte sent to the whole answer read."""
        self.verdicts: Counter[str] = Counter()
        self.sent = 0
        self.items = 0

    def summary(self, started: float, ended: float) -> dict[str, Any]:
        def q(values: list[float], p: float) -> float | None:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

        return {
            "sent": self.sent,
            "items": self.items,
            "answered": sum(self.statuses.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": sum(v for k, v in self.statuses.items() if k >= 500),
            "unanswered": self.unanswered,
            "errors": dict(self.errors),
            "verdicts": dict(self.verdicts),
            "p50": q(self.latencies, 0.50),
            "p99": q(self.latencies, 0.99),
            "max": max(self.latencies, default=None),
            "service_p50": q(self.service, 0.50),
            "service_p99": q(self.service, 0.99),
            "seconds": ended - started,
        }


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS (the apiserver's clients keep theirs open)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.context = host, port, context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.context, server_hostname=self.host
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self._open()
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), self.host.encode(), len(body))
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        answer = await reader.readexactly(length)
        if close:
            self.close()
        return status, answer


async def _worker(
    connection: Connection,
    work: asyncio.Queue[tuple[float, str, bytes, int] | None],
    results: Results,
    t0: float,
) -> None:
    while True:
        item = await work.get()
        if item is None:
            return
        due, path, body, _ = item
        started = time.time()
        try:
            status, answer = await asyncio.wait_for(connection.post(path, body), TIMEOUT)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            connection.close()
            results.unanswered += 1
            results.errors[type(exc).__name__] += 1
            continue
        ended = time.time()
        results.service.append(ended - started)
        results.latencies.append(ended - (t0 + due))
        results.statuses[status] += 1
        if path == "/validate" and status == 200:
            annotations = orjson.loads(answer)["response"]["auditAnnotations"]
            results.verdicts[annotations["user-agent-verdict"]] += 1


async def _pace(t0: float, due: float) -> None:
    delay = t0 + due - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def produce_admission(args: argparse.Namespace, work: asyncio.Queue[Any], results: Results) -> None:
    for i in range(int(args.rate * args.seconds)):
        due = i / args.rate
        await _pace(args.t0, due)
        work.put_nowait((due, "/validate", review(i), 1))
        results.sent += 1
        results.items += 1


async def produce_audit(args: argparse.Namespace, work: asyncio.Queue[Any], results: Results) -> None:
    """Every BATCH_EVERY seconds: the writes due around now (RequestReceived 5 ms before their
    admission call, ResponseComplete 30 ms after), topped up with reads and refusals to the rate."""
    admission_rate = args.admission_rate
    per_batch = args.rate * BATCH_EVERY
    next_rr = next_rc = 0
    filler = 0
    owed = 0.0
    batches = int(args.seconds / BATCH_EVERY)
    total_writes = int(admission_rate * args.seconds)
    for b in range(batches + 3):
        due = b * BATCH_EVERY
        await _pace(args.t0, due)
        horizon = due + BATCH_EVERY
        items: list[dict[str, Any]] = []
        while next_rr < total_writes and next_rr / admission_rate - 0.005 < horizon:
            items.append(write_events(next_rr, "RequestReceived"))
            next_rr += 1
        while next_rc < next_rr and next_rc / admission_rate + 0.03 < horizon:
            items.append(write_events(next_rc, "ResponseComplete"))
            next_rc += 1
        if b < batches:
            owed += per_batch - len(items)
            while owed >= 1:
                items.append(other_event(filler))
                filler += 1
                owed -= 1
        if not items:
            continue
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
        work.put_nowait((due, "/audit", body, len(items)))
        results.sent += 1
        results.items += len(items)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    host, _, port = args.url.removeprefix("https://").partition(":")
    results = Results()
    work: asyncio.Queue[Any] = asyncio.Queue()
    connections = [Connection(host, int(port), context) for _ in range(args.connections)]
    workers = [asyncio.create_task(_worker(c, work, results, args.t0)) for c in connections]
    started = time.time()
    if args.stream == "admission":
        await produce_admission(args, work, results)
    else:
        await produce_audit(args, work, results)
    for _ in workers:
        work.put_nowait(None)
    await asyncio.gather(*workers)
    ended = time.time()
    for connection in connections:
        connection.close()
    return results.summary(started, ended)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stream", choices=("admission", "audit"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--admission-rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not args.url.startswith("https://127.0.0.1:"):
        parser.error("only https://127.0.0.1:PORT is a valid target")
    summary = asyncio.run(main_async(args))
    with open(args.out, "wb") as handle:
        handle.write(orjson.dumps(summary))


if __name__ == "__main__":
    main()
