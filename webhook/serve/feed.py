"""Audit webhook intake: feed the events of a parsed EventList to the Detector off the loop.

``POST /audit`` must answer fast (the apiserver's batch backend waits for us) and must never
wait for a slow sink, so :class:`DetectorFeed` runs the one Detector (not thread-safe, same as
``replay`` uses) and the sink on a background thread behind a bounded queue. When the queue is
full (by events or by bytes), batches are dropped and counted rather than blocking the event
loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from webhook.core.audit import Event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.logs import fields
from webhook.sinks.base import Sink

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_QUEUE_EVENTS",
    "DetectorFeed",
    "FeedStats",
    "event_bytes",
    "offer_gil",
]

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_EVENTS: Final = 10_000
"""Events waiting for the Detector before new batches are dropped (counted). 10,000 is seconds of
a busy apiserver's audit traffic (about two events a request: 2,000 requests/s send ~4,000
events/s), while the Detector thread judged ~28k events/s even with /audit saturating the event
loop beside it (`make bench` item 3). At 100,000 the queue of a /audit flood held ~155 MB: peak
RSS 260 MB = 4.1x an idle serve (`make bench` item 5, 2026-11-30 01:21)."""
DEFAULT_QUEUE_BYTES: Final = 32 * 1024 * 1024
"""Bytes (:func:`event_bytes`) waiting for the Detector before new batches are dropped: a real
apiserver writes request URIs of up to ~1 MB (Go's header limit), so a count alone allows GBs."""
_YIELD_EVERY: Final = 32
"""Events the detector thread judges between two offers of the GIL (~75 us of work)."""
_EVENT_OVERHEAD: Final = 2048
"""What a parsed Event costs besides its strings (its Structs, lists and dict), about."""


def offer_gil() -> None:
    """Let a thread waiting for the GIL take it now. The detector thread runs off the event loop
    but not off its GIL: without this, the loop (answering /validate) waited the interpreter's
    whole switch interval (5 ms) each time it gave the GIL up for I/O while a batch was judged."""
    time.sleep(0)


def event_bytes(event: Event) -> int:
    """About what ``event`` holds in memory: its attacker-sized strings, and a fixed overhead."""
    size = _EVENT_OVERHEAD + len(event.request_uri) + len(event.user_agent or "") + len(event.audit_id)
    size += len(event.user.username) + sum(len(g) for g in event.user.groups)
    return size + sum(len(k) + len(v) for k, v in event.annotations.items())


@dataclass(slots=True)
class FeedStats:
    """What the feed reports (``/readyz``, metrics); written by the detector thread only."""

    events: int = 0
    dropped: int = 0
    sink_errors: int = 0
    detector_errors: int = 0
    """Events the Detector could not take (a time no date can hold, or a fault): skipped."""
    by_rule: dict[str, int] = field(default_factory=dict)
    """Findings handed to the sink, by rule name."""

    @property
    def findings(self) -> int:
        return sum(self.by_rule.copy().values())  # a copy: the detector thread may add a rule


_STOP: Final = object()


class DetectorFeed:
    """One Detector and one Sink on a background thread; :meth:`submit` never blocks."""

    def __init__(
        self,
        detector: Detector,
        sink: Sink,
        *,
        max_events: int = DEFAULT_QUEUE_EVENTS,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.detector = detector
        self.sink = sink
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.stats = FeedStats()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_bytes(self) -> int:
        """About the bytes the queued events hold (:func:`event_bytes`)."""
        return self._pending_bytes

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
            self._thread.start()

    def submit(self, events: Sequence[Event], body_bytes: int | None = None) -> bool:
        """Queue ``events`` for the Detector; False (and counted as dropped) when the queue is full,
        by events or by bytes.

        ``body_bytes``: the length of the JSON the events were decoded from, which bounds their
        strings; with the fixed cost per event it stands for their size without looking at each
        one (:func:`event_bytes` cost ~0.8 us an event on /audit, half the decode)."""
        if not events:
            return True
        if body_bytes is None:
            size = sum(event_bytes(event) for event in events)
        else:
            size = body_bytes + _EVENT_OVERHEAD * len(events)
        with self._lock:
            if self._pending + len(events) > self.max_events or self._pending_bytes + size > self.max_bytes:
                self.stats.dropped += len(events)
                return False
            self._pending += len(events)
            self._pending_bytes += size
        self._queue.put((events, size))
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, tuple)
            batch: Sequence[Event] = item[0]
            for number, event in enumerate(batch, 1):
                if number % _YIELD_EVERY == 0:
                    offer_gil()
                try:
                    found = self.detector.process(event)
                except Exception:
                    self.stats.detector_errors += 1
                    logger.exception("detector failed on an event", **fields(auditID=event.audit_id))
                    continue
                if self.detector.last_rejection is not None:
                    self.stats.detector_errors += 1
                    logger.warning(
                        "audit event skipped by the detector",
                        **fields(auditID=event.audit_id, reason=self.detector.last_rejection),
                    )
                if found:
                    self._deliver(found)
            with self._lock:
                self._pending -= len(batch)
                self._pending_bytes -= item[1]
                self.stats.events += len(batch)

    def _deliver(self, found: list[Finding]) -> None:
        by_rule = self.stats.by_rule
        for finding in found:
            by_rule[finding.rule.name] = by_rule.get(finding.rule.name, 0) + 1
            try:
                self.sink.deliver(finding)
            except Exception:
                self.stats.sink_errors += 1
                logger.exception("sink failed to deliver a finding", **fields(finding=finding.id))

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue (bounded by ``timeout``), flush open windows to the sink, close it."""
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
            self._thread = None
            if thread.is_alive():
                logger.warning("detector queue not drained at shutdown", **fields(pending=self._pending))
                return
        self._deliver(self.detector.flush())
        try:
            self.sink.close()
        except Exception:
            logger.exception("sink failed to close")
