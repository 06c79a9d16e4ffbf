"""AKS audit events from an Event Hub (``--source eventhub:NAMESPACE/HUB``); the only azure.eventhub user.

An AKS diagnostic setting with the categories ``kube-audit`` / ``kube-audit-admin`` sent to an
Event Hub writes batches of diagnostic records: each Event Hubs event's body is
``{"records": [{"category": "kube-audit", "properties": {"log": "<Event JSON>"}, ...}]}``. The
body goes through the one AKS decoder (:func:`webhook.inputs.formats.decode`), so the tailer
gets the apiserver's Event JSON lines and the findings equal ``replay --format aks`` of the same
bodies. A record the decoder refuses is handed on as a line the tailer counts as malformed
(counted and skipped there, with the others of its event read on).

Each partition is a stream; a position is a sequence number (the next event's, as text; empty:
the partition's start). Reading, merging and checkpointing belong to the tailer
(``tail.streams``), so the partition positions are saved in the tailer's own checkpoint with the
detector windows and the undelivered findings they produced, atomically, only after those are
delivered or kept. That is why the Event Hubs Blob checkpoint store is not used: a second
store would be a second truth, written at another moment (ahead of the windows: findings lost
after a crash; behind: repeats) and needing a Storage Account and its RBAC; partition ownership
and load balancing are not needed either, as one reader reads every partition (leader election
on a Lease decides which replica).

``azure-eventhub`` (5.x, its pure-python AMQP stack) is an optional extra
(``pip install 'ua-sentinel[azure]'``). Credentials: the connection string in
``AZURE_EVENTHUB_CONNECTION_STRING`` when set (its endpoint is used; NAMESPACE stays the label),
else ``azure-identity``'s ``DefaultAzureCredential`` (Workload Identity's federated token, the
environment, a managed identity) for ``NAMESPACE.servicebus.windows.net`` (a NAMESPACE with a dot
is taken as the fully qualified name); it needs the role *Azure Event Hubs Data Receiver*. The
consumer group is ``--eventhub-consumer-group``, else ``AZURE_EVENTHUB_CONSUMER_GROUP``, else
``$Default``.

The SDK's callback API (``receive``/``receive_batch`` running an event processor) retries and
reconnects on its own schedule and gives no pull, so a partition is read through the client's
consumer (``EventHubConsumerClient._create_consumer``, the object ``receive_batch`` itself
drives), with the SDK's retries off (``retry_total`` 0): a failed call becomes a
:class:`~webhook.inputs.source.SourceError` at once, and the reader's jittered backoff
(``tail.streams``) is the one retry policy. The receiver of a partition is kept while the
position asked for is where it stands (the next page comes from its prefetched events) and is
opened again at the asked position otherwise. Memory per partition is bounded by the prefetch
(:data:`PREFETCH` events) plus one page (:data:`PAGE_BYTES`), events being at most 1 MB.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import orjson

from webhook.errors import SetupError
from webhook.inputs.formats import decode
from webhook.inputs.source import LogRecord, Page, SourceError, StreamInfo
from webhook.logs import fields

logger = logging.getLogger(__name__)

__all__ = [
    "CONNECTION_STRING_ENV",
    "CONSUMER_GROUP_ENV",
    "MAX_LOGGED_REFUSALS",
    "PAGE_BYTES",
    "PREFETCH",
    "EventHubSource",
    "consumer_group",
]

CONNECTION_STRING_ENV = "AZURE_EVENTHUB_CONNECTION_STRING"
CONSUMER_GROUP_ENV = "AZURE_EVENTHUB_CONSUMER_GROUP"
PREFETCH = 16
"""Events a partition's receiver asks for ahead (AMQP link credit)."""
PAGE_BYTES = 8 * 1024 * 1024
"""A page stops growing past this many body bytes."""
OPEN_TIMEOUT = 30.0
"""Seconds for a receiver's connection, authentication and link to come up."""
MAX_LOGGED_REFUSALS = 20
"""Refused records logged one by one; past this, every 1000th."""
WAIT = 0.2
"""Seconds a page waits for a first event on a partition that has none ready."""
_INSTALL = "the eventhub source needs azure-eventhub: pip install 'ua-sentinel[azure]'"
_THROTTLED = ("com.microsoft:server-busy", "amqp:resource-limit-exceeded", "throttl")
# Conditions and the SDK's "Status code: N" of a management answer (not bare numbers: a message
# may quote a sequence number).
_NOT_FOUND = ("amqp:not-found", "com.microsoft:entity-not-found", "status code: 404", "could not be found")
_DENIED = ("amqp:unauthorized-access", "status code: 401", "status code: 403", "unauthorized")


def consumer_group(flag: str | None = None) -> str:
    """The consumer group: the flag, else ``AZURE_EVENTHUB_CONSUMER_GROUP``, else ``$Default``."""
    return flag or os.environ.get(CONSUMER_GROUP_ENV) or "$Default"


def _client(namespace: str, hub: str, group: str) -> Any:
    try:
        from azure.eventhub import EventHubConsumerClient
    except ImportError:
        raise SetupError(_INSTALL) from None
    options: dict[str, Any] = {
        "consumer_group": group,
        "eventhub_name": hub,
        "retry_total": 0,  # one retry policy: the reader's jittered backoff
        "retry_backoff_factor": 0,
        "user_agent": "ua-sentinel",
    }
    # Its INFO lines narrate every link and connection state change (thousands an hour), and
    # azure.identity's warnings span lines: a failed call is logged once, by the reader, as a
    # SourceError of its kind.
    logging.getLogger("azure").setLevel(logging.ERROR)
    conn_str = os.environ.get(CONNECTION_STRING_ENV)
    if conn_str:
        parts = dict(part.split("=", 1) for part in conn_str.split(";") if "=" in part)
        entity = next((v.strip() for k, v in parts.items() if k.strip().lower() == "entitypath"), "")
        if entity and entity != hub:
            # A hub's own policy authorises that hub only: reading another would be denied.
            raise SetupError(f"{CONNECTION_STRING_ENV} is for the event hub {entity!r}, not {hub!r}")
        try:
            return EventHubConsumerClient.from_connection_string(conn_str, **options)
        except ValueError as exc:  # the SDK's message names the field, never the key
            raise SetupError(f"{CONNECTION_STRING_ENV}: {str(exc)[:200]}") from None
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise SetupError(_INSTALL) from None
    host = namespace if "." in namespace else f"{namespace}.servicebus.windows.net"
    return EventHubConsumerClient(host, credential=DefaultAzureCredential(), **options)


def _error(exc: Exception) -> SourceError:
    """The kind of a failed call, from the SDK's exception and the AMQP condition it carries."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError
    from azure.eventhub.exceptions import (
        AuthenticationError,
        ConnectError,
        ConnectionLostError,
        EventHubError,
        OperationTimeoutError,
    )

    text = " ".join(str(exc).split())[:300]
    lowered = text.lower()
    message = f"{type(exc).__name__}: {text}"
    if any(mark in lowered for mark in _THROTTLED):
        return SourceError("throttled", message)
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 8:
            break
    # The consumer wraps the credential's error in an EventHubError; it stays in the chain.
    credential = any(isinstance(e, AuthenticationError | ClientAuthenticationError) for e in chain)
    if credential or any(mark in lowered for mark in _DENIED):
        return SourceError("denied", message)
    if any(mark in lowered for mark in _NOT_FOUND):
        return SourceError("not-found", message)
    if isinstance(
        exc, ConnectError | ConnectionLostError | OperationTimeoutError | ServiceRequestError | OSError
    ):
        return SourceError("unavailable", message)
    if isinstance(exc, EventHubError | AzureError):
        return SourceError("error", message)
    raise exc


def _errors() -> tuple[type[Exception], ...]:
    """What a call may raise for a reason outside us: the SDK's errors, the credential's (a token
    is fetched when a connection authenticates: ``ClientAuthenticationError``), the socket's."""
    from azure.core.exceptions import AzureError
    from azure.eventhub.exceptions import EventHubError

    return (EventHubError, AzureError, OSError)


def _millis(value: Any) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def _body(event: Any) -> bytes | None:
    try:
        return b"".join(event.body)
    except TypeError:  # an AMQP value or sequence body, not data
        return None


def _decode(event: Any) -> tuple[list[LogRecord], list[str]]:
    """The audit Event lines of one Event Hubs event, and why records of it were refused."""
    when = _millis(event.enqueued_time)
    body = _body(event)
    if body is None:
        return [], ["event body is not binary data"]
    decoded = decode("aks", body)
    lines = [item if isinstance(item, bytes) else orjson.dumps(item) for item in decoded.events]
    return [LogRecord(when, line.decode("utf-8", "replace")) for line in lines], decoded.errors


class _Receiver:
    """One partition's receiver, standing at ``token``."""

    def __init__(self, client: Any, group: str, partition: str, token: str | None) -> None:
        self.token = token
        self.got: list[Any] = []
        # "-1": the partition's start (also for a token that is not ours, e.g. a hand-edited
        # checkpoint: read again rather than skip).
        position: str | int = int(token) if token and token.isdigit() else "-1"
        self.consumer = client._create_consumer(
            group,
            partition,
            position,
            self.got.extend,
            event_position_inclusive=position != "-1",
            prefetch=PREFETCH,
        )

    def read(self, limit: int) -> list[Any]:
        """Up to ``limit`` events: what is ready, else what comes within :data:`WAIT`."""
        consumer = self.consumer
        deadline = time.monotonic() + OPEN_TIMEOUT
        # Opened here, not inside receive(), which swallows a failure to connect.
        while not consumer._open():
            if time.monotonic() > deadline:
                raise SourceError("unavailable", "the receiver's link did not open in time")
        out: list[Any] = []
        size = 0
        deadline = time.monotonic() + WAIT
        while len(out) < limit and size < PAGE_BYTES:
            # receive() reads the socket when it has fewer than max_batch_size events buffered,
            # until it has read PREFETCH frames or none came for the SDK's socket timeout (0.2 s;
            # lower, a TLS handshake over a long RTT would time out): ask for what is buffered,
            # if anything, so a page waits at most once.
            buffered = len(consumer._message_buffer)
            if not buffered and (out or time.monotonic() > deadline):
                break
            self.got.clear()
            consumer.receive(batch=True, max_batch_size=min(buffered, limit - len(out)) or limit - len(out))
            out.extend(self.got)
            size += sum(len(_body(event) or b"") for event in self.got)
        return out

    def close(self) -> None:
        # A broken link closes as it can; it is dropped anyway.
        with contextlib.suppress(Exception):
            self.consumer.close()


class EventHubSource:
    """The partitions of one Event Hub (see :class:`~webhook.inputs.source.StreamSource`)."""

    def __init__(self, target: str, *, group: str | None = None, client: Any = None) -> None:
        namespace, _, hub = target.partition("/")
        self.namespace, self.hub = namespace, hub
        self.group = consumer_group(group)
        self.client = client if client is not None else _client(namespace, hub, self.group)
        self._receivers: dict[str, _Receiver] = {}
        self.refused = 0

    @property
    def label(self) -> str:
        return f"eventhub:{self.namespace}/{self.hub}"

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.client, method)(*args)
        except _errors() as exc:
            raise _error(exc) from None

    def streams(self) -> list[StreamInfo]:
        """Every partition (one management call: each opens a connection and authenticates, so
        no per-partition call; a partition's receiver is polled for news instead)."""
        hub = self._call("get_eventhub_properties")
        created = _millis(hub.get("created_at"))
        return [StreamInfo(str(partition), created, None) for partition in hub.get("partition_ids") or []]

    def page(self, stream: str, token: str | None, *, limit: int) -> Page:
        receiver = self._receivers.get(stream)
        if receiver is None or receiver.token != (token or None):
            if receiver is not None:
                receiver.close()
            receiver = self._receivers[stream] = _Receiver(self.client, self.group, stream, token or None)
        try:
            events = receiver.read(limit)
        except SourceError:
            self._drop(stream)
            raise
        except _errors() as exc:
            self._drop(stream)
            raise _error(exc) from None
        records: list[LogRecord] = []
        for event in events:
            lines, errors = _decode(event)
            records += lines
            for reason in errors:
                self._refused(stream, event, reason)
                # Not JSON: the tailer's line decoder counts it as malformed and skips it.
                records.append(LogRecord(_millis(event.enqueued_time), f"eventhub: {reason}"))
        if not events:
            return Page([], token or "")
        receiver.token = str(int(events[-1].sequence_number) + 1)
        return Page(records, receiver.token)

    def _refused(self, stream: str, event: Any, reason: str) -> None:
        """Say where a refused record is (the tailer counts it, without this detail)."""
        self.refused += 1
        if self.refused <= MAX_LOGGED_REFUSALS or self.refused % 1000 == 0:
            logger.warning(
                "event hub record refused",
                **fields(
                    source=self.label,
                    partition=stream,
                    sequenceNumber=event.sequence_number,
                    reason=reason,
                    refused=self.refused,
                ),
            )

    def _drop(self, stream: str) -> None:
        """A failed receiver is closed; the next page opens one at the asked position."""
        receiver = self._receivers.pop(stream, None)
        if receiver is not None:
            receiver.close()

    def end(self, stream: str) -> str | None:
        """The sequence number after the partition's newest event (None when it is empty)."""
        props = self._call("get_partition_properties", stream)
        if props.get("is_empty"):
            return None
        return str(int(props["last_enqueued_sequence_number"]) + 1)

    def close(self) -> None:
        for receiver in self._receivers.values():
            receiver.close()
        self._receivers.clear()
        self.client.close()
