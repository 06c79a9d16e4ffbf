"""The ``file:PATH`` sink: JSON lines appended to a file, fsynced, rotated by size, deduplicated,
shared fairly between principals.

Delivery through an outbox is at least once, so after a crash the same finding may come again;
this sink remembers the (``event.id``, ``event.sequence``) keys it wrote and drops the repeat.

Fairness: rotation keeps ``backups`` files, so whoever writes fastest decides what is kept. A
requester flooding refusals with a fresh agent each time makes one finding per request (each
agent opens its own window), and ~130 findings of forged 2 MiB agents once rotated every real
finding out. So one principal (``user.name``, the user the apiserver authenticated) may write
at most ``max_share`` of a file between two rotations; past that, its findings are counted
(:attr:`FileSink.suppressed`, ``ua_sentinel_sink_suppressed_total``) and summed up in the log,
not written. One principal alone can then never fill a file, so never rotates anything out.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Final

import orjson

from webhook.core import useragent
from webhook.core.findings import Finding, dumps
from webhook.logs import fields

__all__ = ["DEFAULT_MAX_SHARE", "FileSink"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARE: Final = 0.25
"""Of one file, what one principal may fill between rotations: four principals at least, each
flooding, are needed to rotate a file, and a lone flood leaves three quarters to everyone else."""
_REPORTED: Final = 10
"""Principals named in the log line that sums up a file's suppressed findings."""


class FileSink:
    """JSON lines appended to a file, fsynced per finding, rotated by size, duplicates dropped.

    A duplicate is a finding whose (``event.id``, ``event.sequence``) is already in the file or
    its last backup; the keys of the last ``remember`` findings are kept. A torn last line left
    by a crash is cut off when the file is opened. A principal's findings past ``max_share`` of
    the current file are suppressed (see the module docstring): one that reaches its share still
    goes in, so ``max_share=1`` turns this off (the file rotates first).
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 3,
        remember: int = 200_000,
        max_share: float = DEFAULT_MAX_SHARE,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.remember = remember
        self.share_bytes = int(max_bytes * max_share)
        self.duplicates = 0
        self.suppressed = 0
        self._keys: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._written: dict[str, int] = {}
        """Bytes each principal wrote into the current file: only principals with a finding in
        it, so this holds no more entries (or name bytes) than the file itself."""
        self._held_back: collections.Counter[str] = collections.Counter()
        """Findings suppressed per principal since the last rotation."""
        self._lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._cut_torn_tail()
        for old in (f"{path}.1", path):
            self._learn(old, current=old == path)
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
                logger.warning(
                    "findings file ended in a torn line (crash during a write); cut it off",
                    **fields(path=self.path, keptBytes=keep, cutBytes=size - keep),
                )
        except FileNotFoundError:
            return

    def _learn(self, path: str, *, current: bool) -> None:
        """Remember the keys in ``path``; for the current file, also who filled how much of it."""
        try:
            with open(path, "rb") as handle:
                for line in handle:
                    try:
                        doc = orjson.loads(line)
                        event = doc.get("event", {})
                        self._remember((str(event["id"]), int(event["sequence"])))
                        if current:
                            user = str(doc.get("user", {}).get("name", ""))
                            self._written[user] = self._written.get(user, 0) + len(line)
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
            principal = finding.user.name
            used = self._written.get(principal, 0)
            if used >= self.share_bytes:
                self._hold_back(principal)
                return
            self._written[principal] = used + len(line)
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
            self._remember(key)
            if os.fstat(self._fd).st_size >= self.max_bytes:
                self._rotate()

    def _hold_back(self, principal: str) -> None:
        self.suppressed += 1
        if not self._held_back[principal]:
            logger.warning(
                "principal over its share of the findings file; its findings are counted, not "
                "written, until the file rotates",
                **fields(path=self.path, user=useragent.display(principal), shareBytes=self.share_bytes),
            )
        self._held_back[principal] += 1

    def _rotate(self) -> None:
        if self._held_back:
            logger.warning(
                "findings suppressed in the findings file just rotated (principals over their share)",
                **fields(
                    path=self.path,
                    suppressed=sum(self._held_back.values()),
                    principals=len(self._held_back),
                    top={useragent.display(u): n for u, n in self._held_back.most_common(_REPORTED)},
                ),
            )
        self._written.clear()
        self._held_back.clear()
        os.close(self._fd)
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
