"""The per-sink outbox that keeps a slow sink from stalling its reader, and its checkpoint form.

Every sink sits behind an :class:`Outbox`: a bounded queue drained by its own thread, retrying
with exponential backoff. Reading never waits for a sink. Undelivered findings are saved in
the tailer's checkpoint (:meth:`Outbox.pending`, read back by :func:`restore_findings`); past
``max_backlog`` the oldest are dropped, counted and logged as errors.

Delivery is at least once: after a crash a finding may be delivered again, always with the same
``event.id`` and ``event.sequence``, so a consumer can drop what it has already seen.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from webhook.core.findings import Finding
from webhook.core.useragent import display
from webhook.logs import fields
from webhook.sinks.base import Sink
from webhook.sinks.spec import SinkSpec

__all__ = ["DEFAULT_MAX_BACKLOG", "Outbox", "restore_findings"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG = 10_000
"""Undelivered findings kept per sink (in memory and in the checkpoint) before dropping."""
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


class Outbox:
    """A sink's queue: delivered in order by one thread, retried with backoff, bounded.

    :meth:`pending` (what the checkpoint saves) includes the finding being delivered, so a
    crash mid-delivery redelivers it rather than losing it.
    """

    def __init__(
        self,
        spec: SinkSpec,
        sink: Sink,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        on_failure: Callable[[str], None] | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.max_backlog = max_backlog
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
        self._on_failure = on_failure
        self._on_drop = on_drop
        self._items: collections.deque[Finding] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=f"sink {spec.label}", daemon=True)
        self._thread.start()

    def put(self, findings: Iterable[Finding]) -> None:
        with self._cond:
            self._items.extend(findings)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Drop the oldest past the bound: while the sink fails, or past 10x the bound anyway.

        A healthy sink may briefly hold more than the bound (one read can yield a burst of
        findings); it is drained in moments, so nothing it could deliver is dropped.
        """
        limit = self.max_backlog if self._failing else 10 * self.max_backlog
        over = len(self._items) - limit
        if over <= 0:
            return
        for _ in range(over):
            self._items.popleft()
        self.dropped += over
        logger.error(
            "sink backlog over its bound; DROPPED the oldest findings",
            **fields(sink=self.spec.label, backlogLimit=limit, dropped=over, droppedTotal=self.dropped),
        )
        if self._on_drop:
            self._on_drop(self.spec.label, over)

    def pending(self) -> list[Finding]:
        with self._cond:
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                finding = self._items[0]
            try:
                self.sink.deliver(finding)
            except Exception as exc:  # a sink failure must never kill the outbox
                self.failures += 1
                with self._cond:
                    self._failing = True
                    self._trim()
                if self._on_failure:
                    self._on_failure(self.spec.label)
                logger.warning(
                    "sink delivery failed; retrying",
                    **fields(sink=self.spec.label, error=str(exc)[:300], retryIn=round(backoff, 2)),
                )
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, timeout=backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_START
            with self._cond:
                self._failing = False
                if self._items and self._items[0] is finding:
                    self._items.popleft()
                self.delivered += 1
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued is delivered (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.1))
            return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=2)
        try:
            self.sink.close()
        except Exception as exc:
            logger.warning("sink close failed", **fields(sink=self.spec.label, error=str(exc)[:300]))


def restore_findings(raw: Iterable[dict[str, Any]]) -> list[Finding]:
    """Findings saved in a checkpoint's backlog, skipping any that no longer validate."""
    out: list[Finding] = []
    for item in raw:
        try:
            out.append(Finding.from_dict(item))
        except ValueError as exc:
            # The error quotes the saved finding, user agent included: escaped like any agent.
            logger.error(
                "a finding saved in the checkpoint backlog no longer validates; dropped",
                **fields(error=display(str(exc), 300)),
            )
    return out
