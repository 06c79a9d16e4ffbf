"""The tailer's durable checkpoint: where reading stands, the detector's open windows, the backlog.

A checkpoint is one JSON file in the state directory, replaced atomically (write a temporary
file, fsync it, rename it over the old one, fsync the directory), so a kill -9 at any moment
leaves either the old or the new checkpoint, never a torn one. The tailer writes it only when
every finding from the lines before ``position.offset`` is either acknowledged by every sink
or saved in ``backlog`` for the sinks that have not acknowledged it: after a restart nothing
is lost, and what is delivered twice carries the same finding id.

The state directory is locked (``flock``) so that two tailers never share it; the kernel drops
the lock when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from webhook.follow import Position

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "CheckpointStore", "StateLocked"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
VERSION = 1


class StateLocked(RuntimeError):
    """Another tailer holds the state directory."""


@dataclass(slots=True)
class Checkpoint:
    position: Position | None
    detector: dict[str, Any] = field(default_factory=dict)
    backlog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per sink: findings (as JSON) produced before ``position`` and not yet acknowledged."""
    stats: dict[str, int] = field(default_factory=dict)
    """Running counters (lines, bytes, malformed, ...), kept across restarts."""
    written_at: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": VERSION,
                "position": self.position.to_json() if self.position else None,
                "detector": self.detector,
                "backlog": self.backlog,
                "stats": self.stats,
                "written_at": self.written_at,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise ValueError("not a version 1 ua-sentinel checkpoint")
        position = raw.get("position")
        return cls(
            position=Position.from_json(position) if position else None,
            detector=raw.get("detector") or {},
            backlog=raw.get("backlog") or {},
            stats={k: int(v) for k, v in (raw.get("stats") or {}).items()},
            written_at=float(raw.get("written_at") or 0.0),
        )


class CheckpointStore:
    """Loads and atomically replaces ``<state>/checkpoint.json``; holds the state lock."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CHECKPOINT_FILE
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateLocked(f"{self.dir} is in use by another ua-sentinel tail") from None
        self.last_written = 0.0
        self.writes = 0

    def load(self) -> Checkpoint | None:
        """The last checkpoint, or None. An unreadable one is set aside (loudly), never trusted."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Checkpoint.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            aside = self.path.with_name(f"{CHECKPOINT_FILE}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error(
                "checkpoint %s is unusable (%s); moved to %s, starting without it", self.path, exc, aside
            )
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        """Write, fsync, rename over the old checkpoint, fsync the directory."""
        checkpoint.written_at = time.time()
        tmp = self.path.with_name(f".{CHECKPOINT_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = checkpoint.to_json()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.last_written = checkpoint.written_at
        self.writes += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
