"""The ``file:PATH`` sink: JSON lines appended to a file, fsynced, rotated by size, deduplicated.

Delivery through an outbox is at least once, so after a crash the same finding may come again;
this sink remembers the (``event.id``, ``event.sequence``) keys it wrote and drops the repeat.
"""

from __future__ import annotations

import collections
import logging
import os
import threading

import orjson

from webhook.core.findings import Finding, dumps
from webhook.logs import fields

__all__ = ["FileSink"]

logger = logging.getLogger(__name__)


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
                logger.warning(
                    "findings file ended in a torn line (crash during a write); cut it off",
                    **fields(path=self.path, keptBytes=keep, cutBytes=size - keep),
                )
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
