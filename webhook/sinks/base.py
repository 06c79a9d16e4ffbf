"""What every sink is: the :class:`Sink` protocol, the error a failed hand-over raises, and the
simplest sink, JSON lines to a stream (``stdout``, and ``replay``'s output).

Every other module of :mod:`webhook.sinks` imports this one and none imports them back, so the
sinks and the outbox that retries them share :class:`SinkError` without importing each other.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Protocol

from webhook.core.findings import Finding, dumps
from webhook.errors import DeliveryError

__all__ = ["JsonLinesSink", "Sink", "SinkError"]


class SinkError(DeliveryError):
    """A finding could not be handed over; the outbox keeps it and retries."""


class Sink(Protocol):
    """Where findings go. ``deliver`` returns once the finding is durably handed over."""

    def deliver(self, finding: Finding) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """JSON lines to a stream (stdout by default), one finding per line, flushed per finding."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._lock = threading.Lock()

    def deliver(self, finding: Finding) -> None:
        line = dumps(finding) + b"\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.flush()
