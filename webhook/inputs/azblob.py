"""AKS audit events archived to a Storage Account (``--source azblob:ACCOUNT/CONTAINER[/PREFIX]``).

An AKS diagnostic setting with a storage destination writes category ``kube-audit`` (or
``kube-audit-admin``) to the container ``insights-logs-kube-audit`` (``-admin``), one *append
blob* per cluster and hour, ``resourceId=/SUBSCRIPTIONS/…/MANAGEDCLUSTERS/<name>/y=YYYY/m=MM/
d=DD/h=HH/m=00/PT1H.json``, appended to as the hour goes on. Since November 2018 a blob is JSON
Lines: one diagnostic record per line, ``{"time", "resourceId", "category", "operationName",
"properties": {"log": "<Event JSON>", "stream", "pod"}}``; the record goes through the AKS
decoder of :mod:`webhook.inputs.formats`, so findings equal ``replay --format aks`` of the lines.

A blob is a stream; its token is ``OFFSET:CREATED``: the byte offset after the last complete line
handed out and the blob's creation time (ms). A blob deleted and written again under the same
name has another creation time (or is shorter than the offset): it is read again from its start.
A page is one ranged GET from the offset (about ``limit`` records' worth, at most
:data:`PAGE_BYTES`; a second of :data:`PAGE_BYTES` when the first holds no whole line), cut
after its last newline (a line still being appended stays for the next poll). A line longer than a page is one
malformed record, and the token carries ``:skip`` until the rest of that line is passed.

Only the newest :data:`LOOKBACK_HOURS` hours are listed: per cluster's folder (the folders that
hold ``y=YYYY/``, found every :data:`DISCOVER_SECONDS` by walking the folders under the prefix),
the day folders those hours fall on. Older blobs are history, never read.

azure-storage-blob and azure-identity are an optional extra (``pip install 'ua-sentinel[azure]'``).
Credentials: ``AZURE_STORAGE_CONNECTION_STRING`` when set (its account must be ACCOUNT), else
``DefaultAzureCredential`` (Workload Identity's federated token, the environment, a managed
identity) against ``https://ACCOUNT.blob.core.windows.net``, or ``AZURE_STORAGE_BLOB_ENDPOINT``
(sovereign clouds, Azurite). The SDK's own retries are off: a failed call becomes a
:class:`~webhook.inputs.source.SourceError` at once and the follower's jittered backoff
(``tail.streams``) is the one retry policy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
import re2

from webhook.errors import SetupError
from webhook.inputs.formats import Decoded, aks_record
from webhook.inputs.source import LogRecord, Page, SourceError, StreamInfo

__all__ = ["DISCOVER_SECONDS", "ENDPOINT_ENV", "LOOKBACK_HOURS", "PAGE_BYTES", "AzureBlobSource"]

ENDPOINT_ENV = "AZURE_STORAGE_BLOB_ENDPOINT"
LOOKBACK_HOURS = 24
"""Hours of blobs listed (and so read): a tailer stopped for longer misses the hours before."""
PAGE_BYTES = 4 * 1024 * 1024
"""Most bytes per ranged GET: the longest audit line the tailer accepts (``MAX_LINE_BYTES``)."""
_RECORD_BYTES = 2048
"""About one diagnostic record of a Metadata-level event: a GET asks for ``limit`` of them."""
_MIN_GET = 64 * 1024
_HOUR_BLOB = re2.compile(r"/y=(\d{4})/m=(\d{2})/d=(\d{2})/h=(\d{2})/m=\d{2}/[^/]+\.json$")
_YEAR_FOLDER = re2.compile(r"(?:^|/)y=\d{4}/$")
_MAX_DEPTH = 12
"""Folders below the prefix down to a cluster's ``y=`` folders (``resourceId=/SUBSCRIPTIONS/…``: 9)."""
_MAX_FOLDERS = 1000
DISCOVER_SECONDS = 600.0
_BUSY = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
_INSTALL = "the azblob source needs azure-storage-blob and azure-identity: pip install 'ua-sentinel[azure]'"


def _client(account: str) -> Any:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise SetupError(_INSTALL) from None
    logging.getLogger("azure").setLevel(logging.WARNING)  # azure-core logs every request at INFO
    options: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": 5,
        "read_timeout": 30,
        "user_agent": "ua-sentinel",
    }
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        try:
            client = BlobServiceClient.from_connection_string(connection, **options)
        except ValueError as exc:
            raise SetupError(f"AZURE_STORAGE_CONNECTION_STRING: {exc}") from None
        if client.account_name != account:
            raise SetupError(
                f"AZURE_STORAGE_CONNECTION_STRING is for the account {client.account_name!r}, not {account!r}"
            )
        return client
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise SetupError(_INSTALL) from None
    url = os.environ.get(ENDPOINT_ENV) or f"https://{account}.blob.core.windows.net"
    return BlobServiceClient(url, credential=DefaultAzureCredential(), **options)


def _error(exc: Exception) -> SourceError:
    """The kind of a failed call, from azure-core's exception."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    text = (str(getattr(exc, "message", None) or exc).splitlines() or [""])[0][:200]
    if isinstance(exc, ClientAuthenticationError):
        return SourceError("denied", f"{type(exc).__name__}: {text}")
    if isinstance(exc, HttpResponseError):
        after = _retry_after(exc)
        status = int(exc.status_code or 0)
        raw = getattr(exc, "error_code", None) or status  # a StorageErrorCode (a str enum) or None
        code = str(getattr(raw, "value", raw))
        message = f"{code}: {text}"
        if status == 429 or (status == 503 and code in _BUSY):
            return SourceError("throttled", message, retry_after=after)
        if status in (401, 403):
            return SourceError("denied", message)
        if status == 404:
            return SourceError("not-found", message)
        if status >= 500:
            return SourceError("unavailable", message, retry_after=after)
        return SourceError("error", message)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return SourceError("unavailable", f"{type(exc).__name__}: {text}")
    if isinstance(exc, AzureError):
        return SourceError("error", f"{type(exc).__name__}: {text}")
    raise exc


def _retry_after(exc: Any) -> float | None:
    """The ``Retry-After`` seconds of a refusal (the HTTP-date form is not used by Azure Storage)."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _millis(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            return int(dt.datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class _Token:
    offset: int = 0
    created: int | None = None
    skipping: bool = False
    """Inside a line longer than a page: read on up to its newline."""

    @classmethod
    def parse(cls, text: str | None) -> _Token:
        if not text:
            return cls()
        parts = text.split(":")
        try:
            offset = max(0, int(parts[0]))
            return cls(offset, int(parts[1]) if len(parts) > 1 and parts[1] else None, "skip" in parts)
        except ValueError:
            return cls()  # not ours (an older format): the blob from its start, at least once

    def __str__(self) -> str:
        created = "" if self.created is None else str(self.created)
        return f"{self.offset}:{created}" + (":skip" if self.skipping else "")


@dataclass(frozen=True, slots=True)
class _Listed:
    size: int
    created: int | None


def _records(line: bytes, fallback_ms: int) -> tuple[list[LogRecord], int]:
    """The audit events of one diagnostic record line, and its time (``fallback_ms`` without one).

    A line that is not a usable record becomes one record whose message is not JSON: the tailer
    counts it malformed, as it would in a file, and reads on.
    """
    out = Decoded()
    stamp = fallback_ms
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return [LogRecord(stamp, "azblob: diagnostic record is not JSON")], stamp
    docs = doc["records"] if isinstance(doc, dict) and isinstance(doc.get("records"), list) else [doc]
    for item in docs:
        if isinstance(item, dict):
            stamp = _millis(item.get("time")) or stamp
        aks_record(item, out)
    records = [LogRecord(stamp, event.decode()) for event in out.events if isinstance(event, bytes)]
    records += [LogRecord(stamp, f"azblob: {error}") for error in out.errors]
    return records, stamp


class AzureBlobSource:
    """The hour blobs of one container (see :class:`~webhook.inputs.source.StreamSource`)."""

    def __init__(self, target: str, client: Any = None) -> None:
        account, _, rest = target.partition("/")
        container, _, prefix = rest.partition("/")
        self.account, self.container, self.prefix = account, container, prefix
        self.target = target
        service = client if client is not None else _client(account)
        self.client = service.get_container_client(container)
        self._listed: dict[str, _Listed] = {}
        """The last listing's size and creation time per blob: how a replaced blob shows."""
        self._resource_cache: tuple[float, list[str]] | None = None

    @property
    def label(self) -> str:
        return f"azblob:{self.target}"

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import AzureError

        try:
            return method(*args, **kwargs)
        except AzureError as exc:
            raise _error(exc) from None

    def _list(self, **kwargs: Any) -> list[Any]:
        from azure.core.exceptions import AzureError

        try:
            return list(kwargs.pop("method")(**kwargs))
        except AzureError as exc:
            raise _error(exc) from None

    # -- listing --------------------------------------------------------------------------
    def _resources(self) -> list[str]:
        """The prefixes that hold ``y=YYYY/`` folders (one per cluster), walked folder by folder.

        The delimiter is ``/``, which every Blob endpoint supports (Azurite cuts a longer one
        short); found again every :data:`DISCOVER_SECONDS`, for a cluster added meanwhile.
        """
        now = time.monotonic()
        if self._resource_cache is not None and now - self._resource_cache[0] < DISCOVER_SECONDS:
            return self._resource_cache[1]
        found: list[str] = []
        level = [self.prefix]
        for _ in range(_MAX_DEPTH):
            deeper: list[str] = []
            for folder in level:
                walked = self._list(
                    method=self.client.walk_blobs, name_starts_with=folder or None, delimiter="/"
                )
                for item in walked:
                    name = item.name
                    if not name.endswith("/"):
                        continue  # a blob, not a folder
                    if _YEAR_FOLDER.search(name):
                        found.append(name[: name.rindex("/y=") + 1])
                    elif len(deeper) < _MAX_FOLDERS:
                        deeper.append(name)
            if not deeper:
                break
            level = deeper
        resources = sorted(set(found))
        if resources:  # none yet (no record archived so far): look again at the next listing
            self._resource_cache = (now, resources)
        return resources

    def streams(self) -> list[StreamInfo]:
        """The hour blobs of the last :data:`LOOKBACK_HOURS` hours under the prefix."""
        now = dt.datetime.now(dt.UTC)
        oldest = (now - dt.timedelta(hours=LOOKBACK_HOURS)).replace(minute=0, second=0, microsecond=0)
        days = sorted({(oldest + dt.timedelta(days=n)).date() for n in range((now - oldest).days + 2)})
        days = [day for day in days if day <= now.date()]
        out: list[StreamInfo] = []
        listed: dict[str, _Listed] = {}
        for resource in self._resources():
            for day in days:
                start = f"{resource}y={day:%Y}/m={day:%m}/d={day:%d}/"
                for blob in self._list(method=self.client.list_blobs, name_starts_with=start):
                    match = _HOUR_BLOB.search(blob.name)
                    if match is None:
                        continue
                    year, month, mday, hour = (int(g) for g in match.groups())
                    try:
                        at = dt.datetime(year, month, mday, hour, tzinfo=dt.UTC)
                    except ValueError:
                        continue
                    if at < oldest:
                        continue
                    created = _millis(blob.creation_time)
                    modified = _millis(blob.last_modified)
                    listed[blob.name] = _Listed(int(blob.size or 0), created)
                    out.append(StreamInfo(blob.name, created or int(at.timestamp() * 1000), modified))
        self._listed = listed
        return out

    # -- reading --------------------------------------------------------------------------
    def _download(self, stream: str, offset: int, length: int) -> tuple[bytes, int | None]:
        """Bytes from ``offset`` (empty at the blob's end) and the blob's creation time."""
        from azure.core.exceptions import AzureError, HttpResponseError

        blob = self.client.get_blob_client(stream)
        try:
            downloader = blob.download_blob(offset=offset, length=length, max_concurrency=1)
            data: bytes = downloader.readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:  # the range starts at the blob's end: nothing new
                return b"", None
            raise _error(exc) from None
        except AzureError as exc:
            raise _error(exc) from None
        return data, _millis(downloader.properties.creation_time)

    def _read(self, stream: str, offset: int, length: int) -> tuple[bytes, int | None]:
        """``length`` bytes, or :data:`PAGE_BYTES` when they hold no whole line (a longer line)."""
        data, created = self._download(stream, offset, length)
        if length < PAGE_BYTES and len(data) == length and b"\n" not in data:
            data, created = self._download(stream, offset, PAGE_BYTES)
        return data, created

    def _replaced(self, stream: str, token: _Token, created: int | None) -> bool:
        if token.created is None:
            return False
        if created is not None:
            return created != token.created
        listed = self._listed.get(stream)
        return listed is not None and (
            (listed.created is not None and listed.created != token.created) or listed.size < token.offset
        )

    def page(self, stream: str, token: str | None, *, limit: int) -> Page:
        """Complete lines from the token's offset (at most :data:`PAGE_BYTES`, about ``limit`` events)."""
        at = _Token.parse(token)
        length = PAGE_BYTES if at.skipping else min(PAGE_BYTES, max(_MIN_GET, limit * _RECORD_BYTES))
        data, created = self._read(stream, at.offset, length)
        if self._replaced(stream, at, created):
            at = _Token()
            data, created = self._read(stream, 0, length)
        if created is None:
            listed = self._listed.get(stream)
            created = at.created if at.created is not None else listed.created if listed else None
        records: list[LogRecord] = []
        pos = 0
        if at.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return Page([], str(_Token(at.offset + len(data), created, skipping=True)))
            pos = newline + 1
        stamp = 0
        while len(records) < limit:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            line = data[pos:newline].rstrip(b"\r")
            pos = newline + 1
            if line.strip():
                found, stamp = _records(line, stamp)
                records += found
        if not records and pos == 0 and len(data) >= PAGE_BYTES:
            # One line longer than a page: malformed, as in a file; skip to its end.
            message = f"azblob: diagnostic record longer than {PAGE_BYTES} bytes"
            after = _Token(at.offset + len(data), created, skipping=True)
            return Page([LogRecord(stamp, message)], str(after))
        return Page(records, str(_Token(at.offset + pos, created)))

    def end(self, stream: str) -> str | None:
        """The offset after the blob's last complete line (None when it has none yet).

        One GET of the blob's last :data:`PAGE_BYTES`; without a newline in them, the last line
        is longer than a page: the token skips to its end (one malformed record is not read).
        """
        blob = self.client.get_blob_client(stream)
        props = self._call(blob.get_blob_properties)
        size, created = int(props.size or 0), _millis(props.creation_time)
        if size == 0:
            return None
        start = max(0, size - PAGE_BYTES)
        data, _ = self._download(stream, start, size - start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            return str(_Token(start + newline + 1, created))
        return None if start == 0 else str(_Token(start, created, skipping=True))
