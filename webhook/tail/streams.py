"""The stream follower: the streams of cloud sources merged in time order, with exact positions.

It is to a streamed source (:class:`~webhook.inputs.source.StreamSource`, e.g. CloudWatch Logs)
what :class:`~webhook.tail.follow.Follower` is to a log file: :meth:`read` returns batches of
lines (each one audit event), :attr:`idle` says it is at the end, and :meth:`positions` is what
the tailer checkpoints after the lines returned so far are handled, so the tailer's guarantees
(nothing checkpointed before its findings are delivered or saved, at least once across
``kill -9``, same ``event.id``) hold unchanged.

- **Position per stream**: ``(token, skip)``: read from ``token`` and drop the first ``skip``
  records. A page is buffered and handed out record by record, so the position can stand inside
  it; after a restart the same token gives the same records.
- **Merge**: a k-way merge on (record time, source, stream): a record is handed out only when
  every stream that is not at its end has a buffered record to compare it with, so events
  already stored come out in time order whatever the page size, and a restart continues in the
  same order. A stream at its end is polled again after ``poll_interval`` (longer while it
  stays empty, up to ``8 ×``; at once when its listing shows new records).
- **Bounded**: at most ``page_limit`` buffered records per stream and :data:`MAX_STREAMS` streams
  per source.
- **Backoff**: any failed call (throttling, 5xx, connection errors, denied) stops all calls for a
  random time in ``[0, min(MAX_BACKOFF, poll_interval × 2^failures)]`` (full jitter), and at
  least the service's ``Retry-After`` when it sent one: a rate limit is per account, so one
  stream's throttling is every stream's.
- **Where a new stream starts**: without a checkpoint at its end (``from_start``: its start);
  a stream created after the first start (kept in the checkpoint as ``since``) from its start.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.inputs.source import LogRecord, SourceError, StreamInfo, StreamSource
from webhook.logs import fields
from webhook.tail.logfiles import Batch

__all__ = ["MAX_BACKOFF", "MAX_STREAMS", "SourceCalls", "SourceStats", "StreamFollower"]

logger = logging.getLogger(__name__)

MAX_STREAMS = 256
MAX_BACKOFF = 60.0
MAX_BATCH = 5000
"""Records handed out by one :meth:`StreamFollower.read` (the tailer checkpoints between reads)."""
_FETCHES_PER_READ = 64
_EVERYONES = frozenset({"throttled", "unavailable"})
"""Failures that are the service's (rate limit per account, outage): every call backs off."""


@dataclass(slots=True)
class SourceStats:
    """One source's counters (the ``source`` label of tail's metrics); owned by the follower."""

    events: int = 0
    bytes: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Failed calls by :attr:`SourceError.kind`."""
    last_success: float = 0.0
    """Wall clock of the last call that succeeded (0 before the first)."""
    newest_event: float | None = None
    """The newest record time read (epoch seconds)."""


@dataclass(slots=True)
class _Stream:
    source: int
    name: str
    token: str | None = None
    skip: int = 0
    at_end: bool = True
    """Positioned at its newest record on first use (else at its start)."""
    buffer: deque[LogRecord] = field(default_factory=deque)
    after: str | None = None
    """The token after the buffered page."""
    caught_up: bool = False
    due: float = 0.0
    empties: int = 0
    last_ingestion: int | None = None

    def position(self) -> dict[str, Any]:
        return {"token": self.token, "skip": self.skip, "at_end": self.at_end}


class SourceCalls:
    """What both followers (streams here, queues in ``tail.queues``) keep of their calls: each
    source's counters, and one backoff for every call of every source (full jitter, at least the
    service's ``Retry-After``), with its log lines."""

    def __init__(self, labels: Sequence[str], poll_interval: float) -> None:
        self.poll_interval = max(poll_interval, 0.01)
        self.stats = {label: SourceStats() for label in labels}
        self.idle = False
        self._labels = list(labels)
        self._failures = 0
        self._resume_at = 0.0
        self._logged_error: str | None = None

    def _backing_off(self, now: float) -> bool:
        """True (and not idle) until the backoff after the last failure has passed."""
        if now < self._resume_at:
            self.idle = False
            return True
        return False

    def _answered(self) -> None:
        """Calls succeed again after failures: say so once."""
        if self._failures:
            logger.info("source answers again", **fields(failures=self._failures))
            self._failures = 0
            self._logged_error = None

    def _call_ok(self, source: int) -> None:
        stats = self.stats[self._labels[source]]
        stats.requests += 1
        stats.last_success = time.time()

    def _count_error(self, source: int, exc: SourceError) -> None:
        stats = self.stats[self._labels[source]]
        stats.requests += 1
        stats.errors[exc.kind] += 1

    def _failed(self, exc: SourceError) -> None:
        self._failures += 1
        delay = random.uniform(0, min(MAX_BACKOFF, self.poll_interval * 2**self._failures))
        delay = max(delay, min(MAX_BACKOFF, exc.retry_after or 0.0))  # the service's Retry-After
        self._resume_at = time.monotonic() + delay
        self.idle = False
        text = f"{exc.kind}: {exc}"
        if text != self._logged_error or self._failures % 50 == 0:
            logger.error(
                "source call failed; backing off",
                **fields(kind=exc.kind, error=str(exc), failures=self._failures, retryIn=round(delay, 3)),
            )
            self._logged_error = text


class StreamFollower(SourceCalls):
    """Reads every stream of ``sources`` (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[StreamSource],
        *,
        poll_interval: float = 2.0,
        page_limit: int = 1000,
        list_interval: float | None = None,
    ) -> None:
        self.sources = list(sources)
        super().__init__([source.label for source in self.sources], poll_interval)
        self.list_interval = list_interval if list_interval is not None else max(10 * self.poll_interval, 1.0)
        self.page_limit = page_limit
        self.from_start = False
        """True after a read found every stream at its end."""
        self._streams: dict[tuple[int, str], _Stream] = {}
        self._listed_at = float("-inf")
        now = int(time.time() * 1000)
        self.since: dict[str, int] = {source.label: now for source in self.sources}
        """Per source: when reading first started (ms): later streams are read from their start."""

    def restore(self, saved: dict[str, Any] | None, *, from_start: bool = False) -> None:
        """Resume from :meth:`positions` as checkpointed (None: a first start)."""
        self.from_start = from_start
        for index, source in enumerate(self.sources):
            mine = (saved or {}).get(source.label) or {}
            if mine.get("since"):
                self.since[source.label] = int(mine["since"])
            for name, pos in (mine.get("streams") or {}).items():
                self._streams[(index, name)] = _Stream(
                    index,
                    name,
                    token=pos.get("token"),
                    skip=int(pos.get("skip") or 0),
                    at_end=bool(pos.get("at_end")),
                )

    # -- positions ------------------------------------------------------------------------
    def positions(self) -> dict[str, Any]:
        """What the checkpoint holds: per source, ``since`` and every stream's position."""
        out: dict[str, Any] = {}
        for index, source in enumerate(self.sources):
            streams = {s.name: s.position() for key, s in sorted(self._streams.items()) if key[0] == index}
            out[source.label] = {"since": self.since[source.label], "streams": streams}
        return out

    def state_key(self) -> tuple[Any, ...]:
        return tuple((key, s.token, s.skip, s.at_end) for key, s in sorted(self._streams.items()))

    # -- reading --------------------------------------------------------------------------
    def read(self) -> Batch:
        """The next records in time order, as lines (empty: at the end, or backing off)."""
        now = time.monotonic()
        if self._backing_off(now):
            return Batch()
        try:
            if now - self._listed_at >= self.list_interval:
                self._list(now)
            self._fill(now)
        except SourceError as exc:
            self._failed(exc)
            return Batch()
        self._answered()
        batch = self._merge()
        self.idle = not batch.lines and all(s.caught_up and not s.buffer for s in self._streams.values())
        return batch

    def _list(self, now: float) -> None:
        for index, source in enumerate(self.sources):
            try:
                listed = source.streams()
            except SourceError as exc:
                self._count_error(index, exc)
                if exc.kind in _EVERYONES:
                    raise
                # This log group's own problem (missing, denied): the other sources read on,
                # this one is listed again after list_interval.
                logger.error(
                    "cannot list the source's streams; reading the others, trying again later",
                    **fields(source=source.label, kind=exc.kind, error=str(exc), retryIn=self.list_interval),
                )
                continue
            self._call_ok(index)
            self._update(index, listed)
        self._listed_at = now

    def _update(self, index: int, listed: list[StreamInfo]) -> None:
        label = self.sources[index].label
        names = {info.name for info in listed}
        for key in [k for k in self._streams if k[0] == index and k[1] not in names]:
            stream = self._streams.pop(key)
            logger.info("stream gone (deleted or expired)", **fields(source=label, stream=stream.name))
        listed = sorted(listed, key=lambda i: -(i.last_ingestion_ms or i.created_ms))
        if len(listed) > MAX_STREAMS:
            logger.error(
                "too many streams: reading the most recent ones",
                **fields(source=label, streams=len(listed), reading=MAX_STREAMS),
            )
            listed = listed[:MAX_STREAMS]
        for info in listed:
            found = self._streams.get((index, info.name))
            if found is None:
                new = self.from_start or info.created_ms >= self.since[label]
                stream = self._streams[(index, info.name)] = _Stream(index, info.name, at_end=not new)
                logger.info("reading a stream", **fields(source=label, stream=info.name, fromStart=new))
            else:
                stream = found
            if info.last_ingestion_ms is not None and info.last_ingestion_ms != stream.last_ingestion:
                if stream.last_ingestion is not None:
                    stream.due = 0.0  # the listing shows news: poll it now
                stream.last_ingestion = info.last_ingestion_ms

    def _needs_fetch(self, stream: _Stream, now: float) -> bool:
        return not stream.buffer and (not stream.caught_up or now >= stream.due)

    def _fill(self, now: float) -> None:
        """Fetch a page for every stream that has nothing buffered and may have more."""
        for _ in range(_FETCHES_PER_READ):
            pending = [s for s in self._streams.values() if self._needs_fetch(s, now)]
            if not pending:
                return
            for stream in pending:
                self._fetch(stream, now)

    def _fetch(self, stream: _Stream, now: float) -> None:
        source = self.sources[stream.source]
        try:
            if stream.at_end and stream.token is None:
                stream.token = source.end(stream.name)
                self._call_ok(stream.source)
            stream.at_end = False
            page = source.page(stream.name, stream.token, limit=self.page_limit)
        except SourceError as exc:
            self._count_error(stream.source, exc)
            if exc.kind == "not-found":
                self._streams.pop((stream.source, stream.name), None)
                logger.info(
                    "stream gone (deleted or expired)", **fields(source=source.label, stream=stream.name)
                )
                return
            raise
        self._call_ok(stream.source)
        records = page.records[stream.skip :]
        if not records and stream.skip and page.records:
            # Fewer records than the saved skip: the skip goes on into the next page.
            stream.skip -= len(page.records)
            stream.token = page.next_token
            return
        if not records:
            moved = page.next_token != stream.token
            stream.token = page.next_token
            stream.caught_up = not moved
            if stream.caught_up:
                stream.empties += 1
                stream.due = now + self.poll_interval * min(2 ** (stream.empties - 1), 8)
            return
        stream.buffer.extend(records)
        stream.after = page.next_token
        stream.caught_up = False
        stream.empties = 0

    def _merge(self) -> Batch:
        """Hand out records in time order while every stream not at its end has one buffered."""
        streams = list(self._streams.values())
        if any(not s.buffer and not s.caught_up for s in streams):
            return Batch()
        buffered = [s for s in streams if s.buffer]
        lines: list[bytes] = []
        consumed = 0
        while buffered and len(lines) < MAX_BATCH:
            stream = min(buffered, key=lambda s: (s.buffer[0].timestamp_ms, s.source, s.name))
            record = stream.buffer.popleft()
            stream.skip += 1
            line = record.message.replace("\n", " ").replace("\r", " ").encode("utf-8", "replace")
            lines.append(line)
            consumed += len(line)
            stats = self.stats[self.sources[stream.source].label]
            stats.events += 1
            stats.bytes += len(line)
            seconds = record.timestamp_ms / 1000
            if stats.newest_event is None or seconds > stats.newest_event:
                stats.newest_event = seconds
            if not stream.buffer:
                stream.token, stream.skip = stream.after, 0
                break  # it needs its next page before anything later can be compared with it
        return Batch(lines, consumed)

    def close(self) -> None:
        """Nothing to release: calls are one by one (kept for the follower's interface)."""
