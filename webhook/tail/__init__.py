"""``ua-sentinel tail``: follow the apiserver's audit log, detect, deliver, checkpoint.

- ``command``: the wiring (allowlist source, detector, baseline, sinks, metrics, signals).
- ``tailer``: the loop: read, detect, deliver, checkpoint.
- ``follow`` and ``logfiles``: the follower, one mechanism in two files: ``logfiles`` knows one
  file (identity, backups, reading forward), ``follow`` strings files across rotations.
- ``streams``: the stream follower: a cloud source's streams merged in time order, exact
  positions per stream, backoff (the follower of ``--source cloudwatch:...``).
- ``queues``: the queue follower: a queued source's messages (Pub/Sub), acknowledged only after
  the checkpoint that counted them is saved (the follower of ``--source pubsub:...``).
- ``checkpoint``: the durable, atomic, checksummed checkpoint.
- ``metrics``: tail's Prometheus metrics.
"""

__all__ = ["checkpoint", "command", "follow", "logfiles", "metrics", "queues", "streams", "tailer"]
