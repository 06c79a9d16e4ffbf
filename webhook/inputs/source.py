"""Where ``tail`` reads audit events from: ``--source`` texts, and what a streamed source offers.

A source is a file (the apiserver's audit log, followed across rotations by ``tail.follow``) or
a cloud service that stores the apiserver's events in *streams* of log records (EKS: CloudWatch
Logs, :mod:`webhook.inputs.cloudwatch`). A streamed source only lists its streams and reads one
page of a stream from a position (an opaque token); where reading stands, the merge of the
streams in time order and the checkpoint belong to the tailer (``tail.streams``), so every source
gets the file tailer's guarantees from the same code. A record's ``message`` is one audit event
as the apiserver wrote it: it goes through the one line decoder (:mod:`webhook.inputs.lines`),
so the findings equal those of the same events read from a file.

A *queued* source (GKE: a Pub/Sub subscription, :mod:`webhook.inputs.pubsub`) has no positions,
only acknowledgements: it hands out messages (each one record in a cloud shape, ``fmt``) with an
ack id, and the tailer's queue follower (``tail.queues``) acknowledges them once the checkpoint
that counted them is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import re2

from webhook.errors import InputError, SetupError

__all__ = [
    "LogRecord",
    "Page",
    "QueueMessage",
    "QueueSource",
    "SourceError",
    "SourceSpec",
    "SourceSpecError",
    "StreamInfo",
    "StreamSource",
    "parse_source",
]

SourceKind = Literal["file", "cloudwatch", "eventhub", "pubsub", "azblob"]

_SCHEME = re2.compile(r"^([a-z][a-z0-9]+):")
_LOG_GROUP = re2.compile(r"^[A-Za-z0-9_\-/.#]{1,512}$")
"""CloudWatch's documented log group name characters and length."""
_EVENT_HUB = re2.compile(
    r"^[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9](\.[a-z0-9-]+)*/[A-Za-z0-9]([A-Za-z0-9._-]{0,254}[A-Za-z0-9])?$"
)
"""NAMESPACE (6-50 characters, or its fully qualified name) / HUB, as Azure names them (the
chart's schema has the same pattern)."""
_SUBSCRIPTION = re2.compile(
    r"^projects/(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
    r"/subscriptions/([A-Za-z][A-Za-z0-9._~+%-]{2,254})$"
)
"""Pub/Sub's documented names (the chart's schema has the same): a project id of 6-30 characters
(domain-scoped ``example.com:proj`` too), a subscription of 3-255 starting with a letter (not
``goog``, which Google reserves)."""
_AZBLOB = re2.compile(r"^[a-z0-9]{3,24}/[a-z0-9](-?[a-z0-9]){2,62}(/[^\x00-\x1f]{1,1000})?$")
"""ACCOUNT (3-24 lowercase letters and digits) / CONTAINER (3-63, hyphens between) [/ a blob name
prefix], as Azure names them (the chart's schema has the same pattern)."""


class SourceSpecError(SetupError, ValueError):
    """A ``--source`` text that names no source we read."""


class SourceError(InputError):
    """A streamed source could not answer now; the reader backs off and tries again.

    ``kind`` says why, for the metrics and the log: ``throttled`` (the service's rate limit),
    ``unavailable`` (5xx, connection refused or timed out), ``denied`` (credentials or
    permissions), ``not-found`` (the log group or stream does not exist), ``error`` (anything
    else the service answered). ``retry_after``: seconds the service asked to wait (its
    ``Retry-After``), the least the reader backs off.
    """

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One ``--source``: a file path or a cloud location (``kind:target``)."""

    kind: SourceKind
    target: str

    @property
    def label(self) -> str:
        """The metrics' ``source`` label and the checkpoint's key (no secret is ever in it)."""
        return f"{self.kind}:{self.target}"


def parse_source(text: str) -> SourceSpec:
    """``cloudwatch:LOG_GROUP``, ``eventhub:NAMESPACE/HUB``, ``pubsub:projects/P/subscriptions/S``,
    ``azblob:ACCOUNT/CONTAINER[/PREFIX]``, ``file:PATH`` or a bare PATH."""
    match = _SCHEME.match(text)
    if match is None:
        if not text:
            raise SourceSpecError("--source: empty")
        return SourceSpec("file", text)
    scheme, rest = match.group(1), text[match.end() :]
    if scheme == "file":
        if not rest:
            raise SourceSpecError("--source file: needs a path (file:PATH)")
        return SourceSpec("file", rest)
    if scheme == "cloudwatch":
        if not _LOG_GROUP.match(rest):
            raise SourceSpecError(
                "--source cloudwatch: needs a log group name (cloudwatch:/aws/eks/CLUSTER/cluster)"
            )
        return SourceSpec("cloudwatch", rest)
    if scheme == "eventhub":
        if not _EVENT_HUB.match(rest):
            raise SourceSpecError("--source eventhub: needs NAMESPACE/HUB (eventhub:myns/aks-audit)")
        return SourceSpec("eventhub", rest)
    if scheme == "pubsub":
        match = _SUBSCRIPTION.match(rest)
        if match is None or match.group(1).startswith("goog"):
            raise SourceSpecError(
                "--source pubsub: needs a subscription's full name "
                "(pubsub:projects/PROJECT/subscriptions/NAME)"
            )
        return SourceSpec("pubsub", rest)
    if scheme == "azblob":
        if not _AZBLOB.match(rest):
            raise SourceSpecError(
                "--source azblob: needs a storage account and container"
                " (azblob:ACCOUNT/insights-logs-kube-audit[/PREFIX])"
            )
        return SourceSpec("azblob", rest)
    raise SourceSpecError(
        f"--source {scheme}: unknown kind (cloudwatch:LOG_GROUP, pubsub:projects/P/subscriptions/S, "
        "eventhub:NAMESPACE/HUB, azblob:ACCOUNT/CONTAINER, file:PATH or PATH)"
    )


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    created_ms: int
    last_ingestion_ms: int | None
    """When the service last took a record into the stream (a hint that it has news)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    timestamp_ms: int
    message: str


@dataclass(frozen=True, slots=True)
class Page:
    """Records of one stream from a token on, in the stream's order, and the token after them
    (equal to the request's token, with no records, when the stream has nothing more)."""

    records: list[LogRecord]
    next_token: str


class StreamSource(Protocol):
    """A cloud store of audit events in streams (one reader; no state of its own)."""

    @property
    def label(self) -> str: ...

    def streams(self) -> list[StreamInfo]:
        """The streams that hold audit events; raises :class:`SourceError`."""
        ...

    def page(self, stream: str, token: str | None, *, limit: int) -> Page:
        """Up to ``limit`` records from ``token`` (None: from the stream's start)."""
        ...

    def end(self, stream: str) -> str | None:
        """A token just after the stream's newest record (None when the stream is empty)."""
        ...


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One message of a queued source: ``data`` is one record in the source's ``fmt``."""

    id: str
    """The broker's id of the message: the same on every redelivery."""
    ack_id: str
    """This delivery's handle for acknowledging it (a redelivery has another)."""
    data: bytes
    publish_ms: int


class QueueSource(Protocol):
    """A broker's subscription: messages to pull, acknowledge, hold longer (one reader at a time or
    many: the broker spreads messages over readers; no state of its own)."""

    @property
    def label(self) -> str: ...

    @property
    def fmt(self) -> Literal["gke", "aks"]:
        """The shape of a message's data (``inputs.formats``), decoded by the follower."""
        ...

    def pull(self, *, limit: int, wait: float) -> list[QueueMessage]:
        """Up to ``limit`` messages, waiting up to ``wait`` seconds for the first (empty: none
        came); raises :class:`SourceError`."""
        ...

    def acknowledge(self, ack_ids: list[str]) -> None:
        """The messages are done with: the broker never delivers them again (best effort)."""
        ...

    def extend(self, ack_ids: list[str], seconds: int) -> None:
        """Keep the messages from redelivery for ``seconds`` more (they are still held)."""
        ...

    def close(self) -> None: ...
