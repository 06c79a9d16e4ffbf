"""Audit webhook intake: parse an EventList body, and feed its events to the Detector off the loop.

``POST /audit`` must answer fast (the apiserver's batch backend waits for us) and must never
wait for a slow sink, so :class:`DetectorFeed` runs the one Detector (not thread-safe, same as
``replay`` uses) and the sink on a background thread behind a bounded queue. When the queue is
full, batches are dropped and counted rather than blocking the event loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError

from webhook.core.audit import Event, MalformedEvent, parse_event
from webhook.core.findings import Finding, Sink
from webhook.detect.detector import Detector
from webhook.logs import fields
from webhook.sinks.outbox import Outbox, SinkSpec, open_sink

__all__ = [
    "DEFAULT_QUEUE_EVENTS",
    "AuditBatch",
    "AuditBodyError",
    "DetectorFeed",
    "FanOutSink",
    "FeedStats",
    "parse_event_list",
]

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_EVENTS: Final = 100_000
"""Events waiting for the Detector before new batches are dropped."""
MAX_REASONS: Final = 5
SINK_DRAIN_SECONDS: Final = 5.0
_EVENTS: Final = TypeAdapter(list[Event])


class AuditBodyError(ValueError):
    """The body is not an ``audit.k8s.io/v1`` EventList; the message says why (HTTP 400)."""


@dataclass(slots=True)
class AuditBatch:
    events: list[Event]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def parse_event_list(body: bytes) -> AuditBatch:
    """Parse an EventList. A bad envelope raises :class:`AuditBodyError`; a bad item is skipped.

    Skipping items (and answering 2xx) matters: the apiserver retries a non-2xx batch, and a
    batch refused for one odd event would be refused on every retry, losing the good ones.
    """
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AuditBodyError(f"body is not JSON: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(data, dict):
        raise AuditBodyError(f"body is not a JSON object but {type(data).__name__}")
    if data.get("kind") != "EventList":
        raise AuditBodyError(f"kind is {data.get('kind')!r}, expected 'EventList'")
    if data.get("apiVersion") != "audit.k8s.io/v1":
        raise AuditBodyError(f"apiVersion is {data.get('apiVersion')!r}, expected 'audit.k8s.io/v1'")
    items = data.get("items") or []
    if not isinstance(items, list):
        raise AuditBodyError(f"items is not a list but {type(items).__name__}")
    try:  # one validator call for the whole list (~20% faster); any bad item: one by one below
        return AuditBatch(events=_EVENTS.validate_python(items))
    except ValidationError:
        pass
    batch = AuditBatch(events=[])
    for number, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise MalformedEvent(f"not a JSON object but {type(item).__name__}")
            batch.events.append(parse_event(item))
        except MalformedEvent as exc:
            batch.skipped += 1
            if len(batch.reasons) < MAX_REASONS:
                batch.reasons.append(f"items[{number}]: {exc}")
    return batch


@dataclass(slots=True)
class FeedStats:
    """What the feed reports (``/readyz``, metrics); written by the detector thread only."""

    events: int = 0
    dropped: int = 0
    sink_errors: int = 0
    detector_errors: int = 0
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
    ) -> None:
        self.detector = detector
        self.sink = sink
        self.max_events = max_events
        self.stats = FeedStats()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
            self._thread.start()

    def submit(self, events: Sequence[Event]) -> bool:
        """Queue ``events`` for the Detector; False (and counted as dropped) when the queue is full."""
        if not events:
            return True
        with self._lock:
            if self._pending + len(events) > self.max_events:
                self.stats.dropped += len(events)
                return False
            self._pending += len(events)
        self._queue.put(events)
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, Sequence)
            for event in item:
                try:
                    found = self.detector.process(event)
                except Exception:
                    self.stats.detector_errors += 1
                    logger.exception("detector failed on an event", **fields(auditID=event.audit_id))
                    continue
                self._deliver(found)
            with self._lock:
                self._pending -= len(item)
                self.stats.events += len(item)

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


class FanOutSink:
    """Every ``--sink``, each behind the tailer's :class:`~webhook.sinks.outbox.Outbox` (own thread,
    retries with backoff, bounded backlog), so one slow or failing sink delays no other."""

    def __init__(self, specs: Sequence[SinkSpec]) -> None:
        self.outboxes = [Outbox(spec, open_sink(spec)) for spec in specs]

    def deliver(self, finding: Finding) -> None:
        for outbox in self.outboxes:
            outbox.put((finding,))

    def close(self) -> None:
        for outbox in self.outboxes:
            if not outbox.drain(SINK_DRAIN_SECONDS):
                logger.warning(
                    "sink not drained at shutdown", **fields(sink=outbox.spec.label, pending=len(outbox))
                )
            outbox.close()
