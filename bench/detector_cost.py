"""The Detector's cost per event, by kind of event (issue 15: per-event work proportional to what
the event can change; a 200 from a listed agent should cost almost nothing).

Events: ``bench.generate``'s traffic (recorded events, a busy cluster's clients, 2% refusals),
decoded once with the tree's own ``parse_event``; then ``Detector.process`` timed over each kind
alone and over the whole mix, in order, with the built-in allowlist and a fresh Detector per run
(best of ``--repeat``, in CPU time: the machine is shared). Run it with ``PYTHONPATH`` set to
each tree for an A/B:

    PYTHONPATH=/tmp/before python -m bench.detector_cost --events 200000
    PYTHONPATH=$PWD python -m bench.detector_cost --events 200000
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import OUT
from bench.generate import generate
from webhook.core.allowlist import default_allowlist
from webhook.core.audit import Event, parse_event
from webhook.detect.detector import Detector


def _events(count: int) -> list[Event]:
    source = OUT / f"detector-cost-{count}.log"
    if not source.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        generate(count, 13, source)
    return [parse_event(line) for line in Path(source).read_bytes().splitlines()]


def _kinds(events: list[Event]) -> dict[str, Callable[[Event], bool]]:
    allowlist = default_allowlist()

    def listed_2xx(e: Event) -> bool:
        code = e.code or 0
        ok = e.stage == "ResponseComplete" and 200 <= code < 300
        return ok and allowlist.decide(e.user_agent, user=e.user.username).verdict == "listed"

    return {
        "every event (the mix, in order)": lambda e: True,
        "RequestReceived": lambda e: e.stage == "RequestReceived",
        "ResponseComplete 2xx, listed agent": listed_2xx,
        "ResponseComplete refused by authorization": lambda e: e.forbidden_by_authorization,
    }


def _run(events: list[Event], repeat: int) -> float:
    """Best microseconds per event over ``repeat`` fresh Detectors."""
    best = float("inf")
    for _ in range(repeat):
        detector = Detector(default_allowlist())
        gc.collect()
        start = time.process_time()
        for event in events:
            detector.process(event)
        detector.flush()
        best = min(best, time.process_time() - start)
    return best / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    events = _events(args.events)
    print("| events | count | us per event |")
    print("|---|---|---|")
    for name, keep in _kinds(events).items():
        chosen = [e for e in events if keep(e)]
        print(f"| {name} | {len(chosen):,} | {_run(chosen, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
