"""Where findings go, each behind an outbox so a slow sink never stalls detection.

- ``base``: the Sink protocol, ``SinkError``, JSON lines to a stream.
- ``spec``: ``--sink`` texts parsed and opened.
- ``outbox``: the per-sink queue with retries (at least once, duplicates recognisable).
- ``fanout``: one Sink that feeds several outboxes.
- ``file``, ``http``, ``kube_events``, ``falcosidekick``, ``otlp``: the sinks themselves.
- ``metrics``: the sinks' and findings' Prometheus metrics, the same in serve and tail.
- ``table``: findings as a table for people at a terminal, or JSON lines (``-o``).
"""

__all__ = [
    "base",
    "falcosidekick",
    "fanout",
    "file",
    "http",
    "kube_events",
    "metrics",
    "otlp",
    "outbox",
    "spec",
    "table",
]
