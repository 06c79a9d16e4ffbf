"""One sink that hands every finding to several, each behind its own :class:`Outbox`.

``serve``'s detector thread delivers to one sink; with several ``--sink`` it delivers to this,
so one slow or failing sink (own thread, retries with backoff, bounded backlog) delays no other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from webhook.core.findings import Finding
from webhook.logs import fields
from webhook.sinks.base import Sink
from webhook.sinks.outbox import Outbox
from webhook.sinks.spec import SinkSpec

__all__ = ["SINK_DRAIN_SECONDS", "FanOutSink"]

logger = logging.getLogger(__name__)

SINK_DRAIN_SECONDS: Final = 5.0
"""How long :meth:`FanOutSink.close` waits for each sink's backlog at shutdown."""


class FanOutSink:
    """Every opened sink, each behind an :class:`~webhook.sinks.outbox.Outbox`."""

    def __init__(self, sinks: Sequence[tuple[SinkSpec, Sink]]) -> None:
        self.outboxes = [Outbox(spec, sink) for spec, sink in sinks]

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

    def state(self) -> list[tuple[str, int, int, int, int]]:
        """(label, delivered, failures, dropped, backlog) per sink, for metrics."""
        return [(o.spec.label, o.delivered, o.failures, o.dropped, len(o)) for o in self.outboxes]
