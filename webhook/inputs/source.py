"""Where ``tail`` reads audit events from: ``--source`` texts, and what a streamed source offers.

A source is a file (the apiserver's audit log, followed across rotations by ``tail.follow``) or
a cloud service that stores the apiserver's events in *streams* of log records (EKS: CloudWatch
Logs, :mod:`webhook.inputs.cloudwatch`). A streamed source only lists its streams and reads one
page of a stream from a position (an opaque token); where reading stands, the merge of the
streams in time order and the checkpoint belong to the tailer (``tail.streams``), so every source
gets the file tailer's guarantees from the same code. A record's ``message`` is one audit event
as the apiserver wrote it: it goes through the one line decoder (:mod:`webhook.inputs.lines`),
so the findings equal those of the same events read from a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import re2

from webhook.errors import InputError, SetupError

__all__ = [
    "LogRecord",
    "Page",
    "SourceError",
    "SourceSpec",
    "SourceSpecError",
    "StreamInfo",
    "StreamSource",
    "parse_source",
]

SourceKind = Literal["file", "cloudwatch", "azblob"]

_SCHEME = re2.compile(r"^([a-z][a-z0-9]+):")
_LOG_GROUP = re2.compile(r"^[A-Za-z0-9_\-/.#]{1,512}$")
"""CloudWatch's documented log group name characters and length."""
_AZBLOB = re2.compile(r"^[a-z0-9]{3,24}/[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}(?:/[^\x00-\x1f]{0,1000})?$")
"""A storage account name, a container name (Azure's rules) and an optional blob name prefix."""
_LATER = ("pubsub", "eventhub")


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
    """``cloudwatch:LOG_GROUP``, ``azblob:ACCOUNT/CONTAINER[/PREFIX]``, ``file:PATH`` or a bare PATH."""
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
    if scheme == "azblob":
        if not _AZBLOB.match(rest):
            raise SourceSpecError(
                "--source azblob: needs a storage account and container"
                " (azblob:ACCOUNT/insights-logs-kube-audit[/PREFIX])"
            )
        return SourceSpec("azblob", rest)
    if scheme in _LATER:
        raise SourceSpecError(f"--source {scheme}: is not supported yet; cloudwatch:LOG_GROUP is")
    raise SourceSpecError(f"--source {scheme}: unknown kind (cloudwatch:LOG_GROUP, file:PATH or PATH)")


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
