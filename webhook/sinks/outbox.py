"""Where the tailer's findings go, and the per-sink outbox that keeps a slow sink from stalling it.

Sinks (``--sink``, repeatable): ``stdout`` (JSON lines, the default), ``file:PATH`` (JSON lines,
size-rotated, duplicates dropped by finding id + sequence), ``k8s-events[:NAMESPACE]`` (one
Kubernetes Event per finding, see :mod:`webhook.sinks.kube_events`), ``http:URL`` (POST the finding as
JSON) and ``slack:URL`` (POST ``{"text": ...}`` for Slack-compatible incoming webhooks).

Every sink sits behind an :class:`Outbox`: a bounded queue drained by its own thread, retrying
with exponential backoff. Reading never waits for a sink. Undelivered findings are saved in
the checkpoint; past ``max_backlog`` the oldest are dropped, counted and logged as errors.

Delivery is at least once: after a crash a finding may be delivered again, always with the same
``event.id`` and ``event.sequence``, so a consumer can drop what it has already seen.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from webhook import __version__
from webhook.core.findings import Finding, JsonLinesSink, Sink, dumps

__all__ = [
    "DEFAULT_MAX_BACKLOG",
    "FileSink",
    "HttpSink",
    "Outbox",
    "SinkError",
    "SinkSpec",
    "open_sink",
    "parse_sink",
    "slack_text",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG = 10_000
"""Undelivered findings kept per sink (in memory and in the checkpoint) before dropping."""
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0

SinkKind = Literal["stdout", "file", "k8s-events", "http", "slack"]


class SinkError(Exception):
    """A finding could not be handed over; the outbox keeps it and retries."""


@dataclass(frozen=True, slots=True)
class SinkSpec:
    kind: SinkKind
    target: str = ""

    @property
    def key(self) -> str:
        """Stable name for the checkpoint's backlog (no secret in it: URLs are hashed)."""
        return f"{self.kind}:{hashlib.sha256(self.target.encode()).hexdigest()[:12]}"

    @property
    def label(self) -> str:
        """For logs and metrics: webhook URLs are secrets, so only scheme and host are shown."""
        if self.kind in ("http", "slack"):
            parts = urllib.parse.urlsplit(self.target)
            return f"{self.kind}:{parts.scheme}://{parts.hostname or '?'}/..."
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_sink(text: str) -> SinkSpec:
    """``stdout`` | ``file:PATH`` | ``k8s-events[:NAMESPACE]`` | ``http:URL`` | ``slack:URL``."""
    kind, _, target = text.partition(":")
    if kind == "stdout" and not target:
        return SinkSpec("stdout")
    if kind == "file" and target:
        return SinkSpec("file", target)
    if kind == "k8s-events":
        return SinkSpec("k8s-events", target)
    if kind in ("http", "slack"):
        scheme = urllib.parse.urlsplit(target).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"{kind} sink needs an http(s) URL, e.g. {kind}:https://example.com/hook")
        return SinkSpec(kind, target)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown sink {text.split(':', 1)[0]!r}: use stdout, file:PATH, k8s-events[:NAMESPACE], "
        "http:URL or slack:URL"
    )


def open_sink(spec: SinkSpec) -> Sink:
    if spec.kind == "stdout":
        return JsonLinesSink()
    if spec.kind == "file":
        return FileSink(spec.target)
    if spec.kind == "k8s-events":
        from webhook.sinks.kube_events import KubernetesEventsSink

        return KubernetesEventsSink(default_namespace=spec.target or None)
    return HttpSink(spec.target, slack=spec.kind == "slack")


class FileSink:
    """JSON lines appended to a file, fsynced per finding, rotated by size, duplicates dropped.

    A duplicate is a finding whose (``event.id``, ``event.sequence``) is already in the file or
    its last backup; the keys of the last ``remember`` findings are kept. A torn last line left
    by a crash is cut off when the file is opened.
    """

    def __init__(
        self, path: str, *, max_bytes: int = 64 * 1024 * 1024, backups: int = 3, remember: int = 200_000
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.remember = remember
        self.duplicates = 0
        self._keys: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._cut_torn_tail()
        for old in (f"{path}.1", path):
            self._learn(old)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _cut_torn_tail(self) -> None:
        try:
            with open(self.path, "rb+") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size == 0:
                    return
                handle.seek(max(0, size - 1))
                if handle.read(1) == b"\n":
                    return
                keep = 0
                step = 64 * 1024
                end = size
                while end > 0:
                    start = max(0, end - step)
                    handle.seek(start)
                    newline = handle.read(end - start).rfind(b"\n")
                    if newline >= 0:
                        keep = start + newline + 1
                        break
                    end = start
                handle.truncate(keep)
                log.warning("%s ended in a torn line (crash during a write); cut it off", self.path)
        except FileNotFoundError:
            return

    def _learn(self, path: str) -> None:
        try:
            with open(path, "rb") as handle:
                for line in handle:
                    try:
                        event = orjson.loads(line).get("event", {})
                        self._remember((str(event["id"]), int(event["sequence"])))
                    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                        continue
        except FileNotFoundError:
            return

    def _remember(self, key: tuple[str, int]) -> None:
        self._keys[key] = None
        if len(self._keys) > self.remember:
            self._keys.popitem(last=False)

    def deliver(self, finding: Finding) -> None:
        key = (finding.event.id, finding.event.sequence)
        line = dumps(finding) + b"\n"
        with self._lock:
            if key in self._keys:
                self.duplicates += 1
                return
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
            self._remember(key)
            if os.fstat(self._fd).st_size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def slack_text(finding: Finding) -> str:
    """One line for Slack: the escaped agent only (never the raw one), mrkdwn-escaped."""
    doc = finding.to_dict()
    severity = doc.get("ua_sentinel", {}).get("severity", "?")
    audit = doc.get("kubernetes", {}).get("audit", {})
    text = (
        f"ua-sentinel {finding.rule.name} ({severity}): user {finding.user.name} "
        f'with agent "{finding.user_agent.display}", {finding.event.count} request(s) '
        f"({audit.get('verb', '?')} {audit.get('requestURI', '?')}), "
        f"from {finding.source.ip or '?'} at {finding.timestamp}; id {finding.id}"
    )
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class HttpSink:
    """POST each finding (JSON, or Slack's ``{"text": ...}``); non-2xx raises :class:`SinkError`."""

    def __init__(self, url: str, *, slack: bool = False, timeout: float = 10.0) -> None:
        self.url = url
        self.slack = slack
        self.timeout = timeout

    def deliver(self, finding: Finding) -> None:
        body = orjson.dumps({"text": slack_text(finding)}) if self.slack else dumps(finding)
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"ua-sentinel/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            raise SinkError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(str(reason)) from None

    def close(self) -> None:
        return None


class Outbox:
    """A sink's queue: delivered in order by one thread, retried with backoff, bounded.

    :meth:`pending` (what the checkpoint saves) includes the finding being delivered, so a
    crash mid-delivery redelivers it rather than losing it.
    """

    def __init__(
        self,
        spec: SinkSpec,
        sink: Sink,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        on_failure: Callable[[str], None] | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.max_backlog = max_backlog
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
        self._on_failure = on_failure
        self._on_drop = on_drop
        self._items: collections.deque[Finding] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=f"sink {spec.label}", daemon=True)
        self._thread.start()

    def put(self, findings: Iterable[Finding]) -> None:
        with self._cond:
            self._items.extend(findings)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Drop the oldest past the bound: while the sink fails, or past 10x the bound anyway.

        A healthy sink may briefly hold more than the bound (one read can yield a burst of
        findings); it is drained in moments, so nothing it could deliver is dropped.
        """
        limit = self.max_backlog if self._failing else 10 * self.max_backlog
        over = len(self._items) - limit
        if over <= 0:
            return
        for _ in range(over):
            self._items.popleft()
        self.dropped += over
        log.error(
            "sink %s: backlog over %d findings; DROPPED the %d oldest (%d dropped so far)",
            self.spec.label,
            limit,
            over,
            self.dropped,
        )
        if self._on_drop:
            self._on_drop(self.spec.label, over)

    def pending(self) -> list[Finding]:
        with self._cond:
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                finding = self._items[0]
            try:
                self.sink.deliver(finding)
            except Exception as exc:  # a sink failure must never kill the outbox
                self.failures += 1
                with self._cond:
                    self._failing = True
                    self._trim()
                if self._on_failure:
                    self._on_failure(self.spec.label)
                log.warning(
                    "sink %s: delivery failed (%s); retrying in %.1f s", self.spec.label, exc, backoff
                )
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, timeout=backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_START
            with self._cond:
                self._failing = False
                if self._items and self._items[0] is finding:
                    self._items.popleft()
                self.delivered += 1
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued is delivered (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.1))
            return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=2)
        try:
            self.sink.close()
        except Exception as exc:
            log.warning("sink %s: close failed: %s", self.spec.label, exc)


def restore_findings(raw: Iterable[dict[str, Any]]) -> list[Finding]:
    """Findings saved in a checkpoint's backlog, skipping any that no longer validate."""
    out: list[Finding] = []
    for item in raw:
        try:
            out.append(Finding.model_validate(item))
        except ValueError as exc:
            log.error("checkpoint backlog: a saved finding no longer validates, dropped: %s", exc)
    return out
