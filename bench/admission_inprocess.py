"""Item 2 in one process: what ``POST /validate`` costs above the FastAPI floor app, no TLS, no h11.

Both ASGI apps (``serve``'s, built from the same components as ``ua-sentinel serve --mode warn``
with the built-in allowlist, and bench/floor_app.py's) are driven directly with the reviews of
item 2 (every one distinct, one agent in ten unlisted, the RequestIndex pre-filled so no join
waits). The figure is thread CPU time per request, median of alternating rounds: unlike wall
time on a shared 2-core machine, it barely moves with the load of other processes, so an A/B of
two trees is readable when wrk's saturation ratios are not. Run it once per tree:

    PYTHONPATH=/path/to/tree python -m bench.admission_inprocess --kind configmap --kind pod20k

What it leaves out is what both servers pay alike on the wire: TLS, h11, asyncio's transports.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench import reviews
from bench.floor_app import make_app
from webhook.core.allowlist import default_allowlist
from webhook.core.findings import Finding
from webhook.core.live_allowlist import LiveAllowlist
from webhook.detect.detector import Detector
from webhook.inputs.eventlist import parse_event_list
from webhook.serve import admission
from webhook.serve.feed import DetectorFeed
from webhook.serve.join import RequestIndex
from webhook.serve.metrics import Metrics
from webhook.serve.routes import AppState, create_app

ROUNDS = 7
PER_ROUND = 3000


class _Discard:
    def deliver(self, finding: Finding) -> None:
        pass

    def close(self) -> None:
        pass


def _serve_app() -> tuple[Any, RequestIndex]:
    allowlist = default_allowlist()
    live = LiveAllowlist(allowlist, fallback=allowlist)
    index = RequestIndex()
    state = AppState(
        policy=admission.Policy(mode="warn"),
        index=index,
        allowlist=live,
        feed=DetectorFeed(Detector(live.current_or_fallback), _Discard()),
        metrics=Metrics("warn"),
        certificate=dict,
    )
    return create_app(state), index


def _scope(length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8443),
        "client": ("127.0.0.1", 50000),
        "scheme": "https",
        "method": "POST",
        "root_path": "",
        "path": "/validate",
        "raw_path": b"/validate",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8443"),
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
        ],
        "state": {},
    }


async def _drive(app: Any, bodies: Sequence[bytes], chunk: int = 16384) -> float:
    """Thread CPU seconds per request for ``bodies`` (each delivered in ``chunk``-byte messages)."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.thread_time()
    for body in bodies:
        parts = [body[i : i + chunk] for i in range(0, len(body), chunk)]

        async def receive(parts: list[bytes] = parts) -> dict[str, Any]:
            body = parts.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(parts)}

        await app(_scope(len(body)), receive, send)
    spent = time.thread_time() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"answers other than 200: {sorted(set(statuses))}")
    return spent / len(bodies)


def measure(kind: str, rounds: int = ROUNDS, per_round: int = PER_ROUND) -> tuple[list[float], list[float]]:
    """(floor, ours) thread CPU per request, one figure per round (the first is a warm-up)."""
    template = reviews.template(kind)
    floor = make_app()
    ours, index = _serve_app()
    floors: list[float] = []
    ourses: list[float] = []
    for number in range(rounds):
        first = 1 + number * per_round
        numbers = range(first, first + per_round)
        for start in range(first, first + per_round, 400):
            batch = [
                reviews.request_received(kind, n) for n in range(start, min(start + 400, first + per_round))
            ]
            index.observe_all(parse_event_list(reviews.event_list(batch)).events)
        bodies = [template.replace(reviews.TOKEN, str(n)).encode() for n in numbers]
        floors.append(asyncio.run(_drive(floor, bodies)))
        ourses.append(asyncio.run(_drive(ours, bodies)))
    if index.stats.waited or index.stats.misses:
        raise RuntimeError(f"the join waited or missed: {index.stats}")
    return floors[1:], ourses[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", action="append", choices=list(reviews.PAYLOADS))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115 - the log line's cost counts
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as ua-sentinel serve runs (webhook.serve.service.GC_THRESHOLD)
    for kind in args.kind or ["configmap", "pod20k"]:
        floors, ourses = measure(kind, args.rounds)
        floor, ours = statistics.median(floors) * 1e6, statistics.median(ourses) * 1e6
        print(
            f"{kind}: floor app {floor:.1f} us, serve app {ours:.1f} us (+{ours - floor:.1f} us) "
            f"per request, thread CPU, median of {len(floors)} rounds of {PER_ROUND}",
            flush=True,
        )


if __name__ == "__main__":
    main()
