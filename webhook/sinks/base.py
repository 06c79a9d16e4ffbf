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

__all__ = ["ClusterSink", "JsonLinesSink", "Sink", "SinkError"]


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


class ClusterSink:
    """Stamps each finding with its cluster (``orchestrator.cluster.name``) on its way to ``sink``.

    The stamp is added at delivery, not by the Detector, so ids, windows and checkpoints do not
    depend on the name; every sink (and so every output format) sees it the same way.
    """

    def __init__(self, sink: Sink, cluster_name: str) -> None:
        self.sink = sink
        self.cluster_name = cluster_name

    def deliver(self, finding: Finding) -> None:
        self.sink.deliver(finding.in_cluster(self.cluster_name))

    def close(self) -> None:
        self.sink.close()
