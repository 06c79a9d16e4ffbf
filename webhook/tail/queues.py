"""The queue follower: messages of queued sources (Pub/Sub), acknowledged after the checkpoint.

It is to a queued source (:class:`~webhook.inputs.source.QueueSource`) what
:class:`~webhook.tail.streams.StreamFollower` is to a streamed one: :meth:`read` returns batches
of audit Event JSON lines, :attr:`idle` says nothing is waiting. A broker has no positions,
only acknowledgements, so the tailer's guarantee (nothing given up before its findings are
delivered or saved) becomes: a message is acknowledged only after the checkpoint holding the
detector state that counted it was saved (:meth:`committed`, called by the tailer right after
``store.save`` returned). Until then it is *held*.

- **Crash between save and ack**: the checkpoint keeps the ids of the messages it counted that
  may still come back (held, and the most recent acknowledged ones; :meth:`positions`). After a
  restart a redelivered message with such an id is not read again (the restored detector
  already counted it): it is acknowledged and counted as ``redelivered``. A message read after
  the last checkpoint is not in it and is read again, as a file's lines after the offset are.
- **Redelivery while held** (an ack deadline missed, or the broker's own duplicates): the
  message is not read twice; its new ack id replaces the old one.
- **Ack deadlines**: a held message's lease is extended (``ModifyAckDeadline`` to
  :data:`LEASE_SECONDS`) before it can run out; the subscription's own deadline is unknown to a
  reader with only ``roles/pubsub.subscriber``, so the first extension comes before Pub/Sub's
  minimum (:data:`MIN_DEADLINE`).
- **Bounded**: at most :data:`MAX_HELD` messages held (pulling waits for the next checkpoint),
  at most :data:`MAX_REMEMBERED` acknowledged ids (and :data:`MAX_REMEMBERED_BYTES`) remembered.
- **Backoff**: any failed call stops all calls for a random time in
  ``[0, min(MAX_BACKOFF, poll_interval × 2^failures)]`` (full jitter): the stream follower's own
  (:class:`~webhook.tail.streams.SourceCalls`).
  A nack is never needed: what is not acknowledged comes back by itself.
- **Bad messages** (not JSON, not a LogEntry, another service's entry) are counted by the
  tailer as malformed or skipped, and acknowledged with the rest.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from webhook.inputs.formats import decode
from webhook.inputs.source import QueueMessage, QueueSource, SourceError
from webhook.logs import fields
from webhook.tail.logfiles import Batch
from webhook.tail.streams import SourceCalls

__all__ = [
    "LEASE_SECONDS",
    "MAX_HELD",
    "MAX_REMEMBERED",
    "MAX_REMEMBERED_BYTES",
    "MIN_DEADLINE",
    "QueueFollower",
]

logger = logging.getLogger(__name__)

MAX_HELD = 10_000
"""Messages read and not yet acknowledged (they wait for a checkpoint)."""
MAX_REMEMBERED = 10_000
MAX_REMEMBERED_BYTES = 1024 * 1024
"""Acknowledged message ids remembered (a broker may deliver one again after its ack)."""
MIN_DEADLINE = 10.0
"""Pub/Sub's smallest ack deadline: a held message is extended before this runs out."""
LEASE_SECONDS = 60
"""How far one extension moves a held message's deadline."""
_MARGIN = 5.0
"""Extend a lease this long before it runs out (the call's own latency)."""
_EVERYONES = frozenset({"throttled", "unavailable"})
_SHORT_WAIT = 0.5
"""How long a Pull may wait while read messages wait for a checkpoint (which comes after it)."""


@dataclass(slots=True)
class _Held:
    ack_id: str
    leased_until: float
    """Monotonic time by which its lease must have been extended."""
    saved: bool = False
    """Counted by a saved checkpoint: acknowledge it."""


class QueueFollower(SourceCalls):
    """Reads every subscription of ``sources`` (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[QueueSource],
        *,
        poll_interval: float = 2.0,
        page_limit: int = 1000,
        wait: float = 5.0,
        min_deadline: float = MIN_DEADLINE,
    ) -> None:
        self.sources = list(sources)
        super().__init__([source.label for source in self.sources], poll_interval)
        self.page_limit = max(1, min(page_limit, 1000))  # Pub/Sub's documented maximum per Pull
        self.wait = wait
        self.min_deadline = min_deadline
        self.redelivered = {source.label: 0 for source in self.sources}
        """Per source: messages delivered again after they were read (skipped, acknowledged)."""
        self._held: list[OrderedDict[str, _Held]] = [OrderedDict() for _ in self.sources]
        self._acked: list[OrderedDict[str, None]] = [OrderedDict() for _ in self.sources]
        self._acked_bytes = [0 for _ in self.sources]
        self._ack_now: list[list[str]] = [[] for _ in self.sources]
        """Ack ids of redeliveries of messages a saved checkpoint already counted."""
        self._next = 0
        self._changes = 0

    # -- the checkpoint ---------------------------------------------------------------------
    def restore(self, saved: dict[str, Any] | None, *, from_start: bool = False) -> None:
        """Remember the ids a checkpoint counted (None: a first start). ``from_start`` means
        nothing here: a subscription holds exactly what no reader has acknowledged."""
        for index, source in enumerate(self.sources):
            for message_id in ((saved or {}).get(source.label) or {}).get("counted") or []:
                self._remember(index, str(message_id))

    def positions(self) -> dict[str, Any]:
        """Per source, the ids of the messages this checkpoint counted that may come back."""
        return {
            source.label: {"counted": [*self._acked[index], *self._held[index]]}
            for index, source in enumerate(self.sources)
        }

    def state_key(self) -> tuple[Any, ...]:
        return (self._changes,)

    def committed(self) -> None:
        """The checkpoint built from :meth:`positions` is saved: its messages may be acknowledged
        (sent on the next :meth:`read`, or by :meth:`close`)."""
        for held in self._held:
            for item in held.values():
                item.saved = True

    def _remember(self, index: int, message_id: str) -> None:
        acked = self._acked[index]
        if message_id in acked:
            return
        acked[message_id] = None
        self._acked_bytes[index] += len(message_id)
        while len(acked) > MAX_REMEMBERED or self._acked_bytes[index] > MAX_REMEMBERED_BYTES:
            old, _ = acked.popitem(last=False)
            self._acked_bytes[index] -= len(old)

    @property
    def held(self) -> int:
        return sum(len(h) for h in self._held)

    # -- reading ----------------------------------------------------------------------------
    def read(self) -> Batch:
        """Acknowledge what the last checkpoint counted, extend leases, pull the next page."""
        now = time.monotonic()
        if self._backing_off(now):
            return Batch()
        try:
            self._acknowledge()
            self._extend(now)
            batch = self._pull()
        except SourceError as exc:
            self._failed(exc)
            return Batch()
        self._answered()
        return batch

    def _acknowledge(self) -> None:
        for index, source in enumerate(self.sources):
            held = self._held[index]
            done = [message_id for message_id, item in held.items() if item.saved]
            ack_ids = [held[message_id].ack_id for message_id in done] + self._ack_now[index]
            if not ack_ids:
                continue
            try:
                source.acknowledge(ack_ids)
            except SourceError as exc:
                self._count_error(index, exc)
                if exc.kind in _EVERYONES:
                    raise
                # An ack id the broker refuses (expired, malformed): the message comes back and
                # is recognised by its id, so giving up the ack loses nothing.
                logger.error(
                    "acknowledgement refused; the messages will come back and be skipped",
                    **fields(source=source.label, kind=exc.kind, error=str(exc), messages=len(ack_ids)),
                )
            else:
                self._call_ok(index)
            for message_id in done:
                del held[message_id]
                self._remember(index, message_id)
            self._ack_now[index] = []
            self._changes += 1

    def _extend(self, now: float) -> None:
        for index, source in enumerate(self.sources):
            due = [item for item in self._held[index].values() if item.leased_until - now <= _MARGIN]
            if not due:
                continue
            try:
                source.extend([item.ack_id for item in due], LEASE_SECONDS)
            except SourceError as exc:
                self._count_error(index, exc)
                if exc.kind in _EVERYONES:
                    raise
                logger.error(
                    "ack deadline extension refused; the messages may come back and be skipped",
                    **fields(source=source.label, kind=exc.kind, error=str(exc), messages=len(due)),
                )
            else:
                self._call_ok(index)
            until = now + LEASE_SECONDS
            for item in due:
                item.leased_until = until

    def _pull(self) -> Batch:
        """One page from the next source in turn (round robin), as Event lines."""
        room = MAX_HELD - self.held
        if room <= 0:
            self.idle = False  # waiting for a checkpoint to acknowledge what is held
            return Batch()
        index = self._next
        self._next = (self._next + 1) % len(self.sources)
        source = self.sources[index]
        unsaved = any(not item.saved for held in self._held for item in held.values())
        wait = min(self.wait, _SHORT_WAIT) if unsaved else self.wait
        try:
            messages = source.pull(limit=min(self.page_limit, room), wait=wait)
        except SourceError as exc:
            self._count_error(index, exc)
            raise
        self._call_ok(index)
        self.idle = not messages
        return self._take(index, messages)

    def _take(self, index: int, messages: list[QueueMessage]) -> Batch:
        batch = Batch()
        source = self.sources[index]
        stats = self.stats[source.label]
        held = self._held[index]
        received = time.monotonic()
        for message in messages:
            found = held.get(message.id)
            if found is not None:  # its lease ran out, or the broker's own duplicate
                found.ack_id = message.ack_id
                found.leased_until = received + self.min_deadline
                self.redelivered[source.label] += 1
                continue
            if message.id in self._acked[index]:
                self._ack_now[index].append(message.ack_id)  # a saved checkpoint counted it
                self.redelivered[source.label] += 1
                continue
            held[message.id] = _Held(message.ack_id, received + self.min_deadline)
            self._changes += 1
            stats.events += 1
            stats.bytes += len(message.data)
            batch.consumed += len(message.data)
            seconds = message.publish_ms / 1000
            if seconds and (stats.newest_event is None or seconds > stats.newest_event):
                stats.newest_event = seconds
            decoded = decode(source.fmt, message.data.replace(b"\n", b" ").replace(b"\r", b" "))
            batch.skipped += decoded.skipped
            batch.malformed += [f"{source.label} message {message.id[:64]}: {e}" for e in decoded.errors]
            for event in decoded.events:
                batch.lines.append(event if isinstance(event, bytes) else orjson.dumps(event))
        if self._ack_now[index]:
            logger.info(
                "messages the checkpoint counted came again: skipped, acknowledged",
                **fields(source=source.label, messages=len(self._ack_now[index])),
            )
        return batch

    def close(self) -> None:
        """Acknowledge what the last checkpoint counted (best effort), close the clients."""
        try:
            self._acknowledge()
        except SourceError as exc:
            logger.info(
                "could not acknowledge on the way out; the messages will come back and be skipped",
                **fields(kind=exc.kind, error=str(exc)),
            )
        for source in self.sources:
            source.close()
