"""GKE audit events from a Pub/Sub subscription (``--source pubsub:projects/P/subscriptions/S``).

The only importer of google-cloud-pubsub, google-api-core and grpc. GKE writes each
kube-apiserver request to Cloud Logging as a ``LogEntry`` whose ``protoPayload`` is an
``AuditLog`` with ``serviceName`` ``k8s.io``; a log sink routes those entries to a Pub/Sub
topic, and each message's data is one LogEntry as JSON (decoded by ``inputs.formats``' ``gke``
shape, as ``replay --format gke`` decodes it).

Why unary ``Pull`` + ``Acknowledge`` + ``ModifyAckDeadline`` and not the library's streaming
``subscribe()``: streaming pull runs its own threads, leases and flow control and acknowledges
from callbacks, so the tailer would have to hand every message across threads and could not
bound what is received but not yet checkpointed. A synchronous pull of at most ``limit``
messages fits the tailer's loop: one thread, memory bounded by what the follower holds, acks
sent only when the follower says the checkpoint counting the messages is saved
(``tail.queues``). The cost is one RPC per page instead of a stream, which the page size makes
small.

The library is an optional extra (``pip install 'ua-sentinel[gcp]'``). Credentials come from
Application Default Credentials (GKE Workload Identity, ``GOOGLE_APPLICATION_CREDENTIALS``, the
metadata server); ``PUBSUB_EMULATOR_HOST`` points the library at a local endpoint (insecure, no
credentials) by itself. The library's own retries are off (``retry=None``): a failed call becomes
a :class:`~webhook.inputs.source.SourceError` at once and the follower's jittered backoff is the
one retry policy, every failure counted by kind.
"""

from __future__ import annotations

from typing import Any, Literal

from webhook.errors import SetupError
from webhook.inputs.source import QueueMessage, SourceError

__all__ = ["ACK_IDS_PER_CALL", "PubSubSource"]

ACK_IDS_PER_CALL = 1000
"""Ack ids per Acknowledge / ModifyAckDeadline call (the request must stay under 512 KB)."""
_CALL_TIMEOUT = 30.0
_INSTALL = "the pubsub source needs google-cloud-pubsub: pip install 'ua-sentinel[gcp]'"


def _client() -> Any:
    try:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import pubsub_v1
    except ImportError:
        raise SetupError(_INSTALL) from None
    try:
        return pubsub_v1.SubscriberClient()
    except DefaultCredentialsError as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SetupError(
            f"the pubsub source finds no Google credentials ({first}): use Workload Identity or set "
            "GOOGLE_APPLICATION_CREDENTIALS"
        ) from None


def _error(exc: Exception) -> SourceError:
    """The kind of a failed call, from google-api-core's exception (a gRPC status underneath)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    message = f"{type(exc).__name__}: {str(exc)[:300]}"
    if isinstance(exc, api.ResourceExhausted | api.TooManyRequests):
        return SourceError("throttled", message)
    if isinstance(exc, api.PermissionDenied | api.Unauthenticated | api.Unauthorized | api.Forbidden):
        return SourceError("denied", message)
    if isinstance(exc, api.NotFound):
        return SourceError("not-found", message)
    if isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.InternalServerError | api.Aborted):
        return SourceError("unavailable", message)
    if isinstance(exc, api.Cancelled | api.Unknown | api.GatewayTimeout | api.BadGateway):
        return SourceError("unavailable", message)
    if isinstance(exc, auth.RefreshError):
        return SourceError("denied", message)
    if isinstance(exc, auth.TransportError):
        return SourceError("unavailable", message)
    return SourceError("error", message)


class PubSubSource:
    """One subscription (see :class:`~webhook.inputs.source.QueueSource`)."""

    def __init__(self, subscription: str, client: Any = None) -> None:
        self.subscription = subscription
        self.client = client if client is not None else _client()

    @property
    def label(self) -> str:
        return f"pubsub:{self.subscription}"

    @property
    def fmt(self) -> Literal["gke", "aks"]:
        return "gke"

    def _call(self, method: str, timeout: float, *, waiting: bool = False, **request: Any) -> Any:
        """``waiting``: a deadline passing is an answer with nothing in it (None)."""
        from google.api_core.exceptions import DeadlineExceeded, GoogleAPICallError, RetryError
        from google.auth.exceptions import GoogleAuthError

        try:
            return getattr(self.client, method)(
                request={"subscription": self.subscription, **request}, retry=None, timeout=timeout
            )
        except DeadlineExceeded as exc:
            if waiting:
                return None
            raise _error(exc) from None
        except (GoogleAPICallError, RetryError, GoogleAuthError) as exc:
            raise _error(exc) from None

    def pull(self, *, limit: int, wait: float) -> list[QueueMessage]:
        """One ``Pull``; Pub/Sub answers when it has messages or after a while with none. A pull
        that outlasts ``wait`` with nothing to give is an empty answer, not a failure."""
        response = self._call("pull", wait, waiting=True, max_messages=limit)
        if response is None:
            return []
        out: list[QueueMessage] = []
        for received in response.received_messages:
            message = received.message
            stamp = message.publish_time
            millis = int(stamp.timestamp() * 1000) if stamp else 0
            out.append(
                QueueMessage(str(message.message_id), str(received.ack_id), bytes(message.data), millis)
            )
        return out

    def acknowledge(self, ack_ids: list[str]) -> None:
        for at in range(0, len(ack_ids), ACK_IDS_PER_CALL):
            self._call("acknowledge", _CALL_TIMEOUT, ack_ids=ack_ids[at : at + ACK_IDS_PER_CALL])

    def extend(self, ack_ids: list[str], seconds: int) -> None:
        for at in range(0, len(ack_ids), ACK_IDS_PER_CALL):
            self._call(
                "modify_ack_deadline",
                _CALL_TIMEOUT,
                ack_ids=ack_ids[at : at + ACK_IDS_PER_CALL],
                ack_deadline_seconds=seconds,
            )

    def close(self) -> None:
        self.client.close()
