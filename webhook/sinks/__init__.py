"""Where findings go.

``base`` (the Sink protocol, SinkError, JSON lines), ``spec`` (``--sink`` parsing and opening),
``file``, ``http`` (HTTP and Slack), ``kube_events`` (one Kubernetes Event per finding),
``outbox`` (per-sink queue with retries, backlog restore), ``fanout`` (one sink over many outboxes).
"""
