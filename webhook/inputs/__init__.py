"""Bytes to audit events: one way in for replay, tail, suggest and ``/audit``.

- ``files``: the one opener (plain, gzip by its magic bytes, ``-`` for stdin).
- ``lines``: the one line decoder (input format → audit events, malformed lines counted).
- ``scan``: the block scanner that finds the few lines that can matter, at C speed.
- ``longline``: a line over the length limit read down to its audit fields, in bounded memory.
- ``formats``: the EKS, GKE and AKS shapes around an audit event.
- ``eventlist``: the ``/audit`` webhook body (an EventList), bad items skipped.
- ``source``: ``--source`` texts and what a streamed cloud source offers (streams, pages).
- ``cloudwatch``: EKS audit events in CloudWatch Logs (the only boto3 user).
- ``eventhub``: AKS audit events in Event Hubs (the only azure.eventhub user).
- ``pubsub``: GKE audit events from a Pub/Sub subscription (the only google-cloud-pubsub user).
- ``azblob``: AKS audit events archived to a Storage Account (the only azure.storage.blob user).
"""

__all__ = [
    "azblob",
    "cloudwatch",
    "eventhub",
    "eventlist",
    "files",
    "formats",
    "lines",
    "longline",
    "pubsub",
    "scan",
    "source",
]
