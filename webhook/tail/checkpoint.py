"""The tailer's durable checkpoint: where reading stands, the detector's open windows, the backlog.

A checkpoint is one JSON file in the state directory, replaced atomically (write a temporary
file, fsync it, rename it over the old one, fsync the directory), so a kill -9 at any moment
leaves either the old or the new checkpoint, never a torn one. The tailer writes it only when
every finding from the lines before ``position.offset`` is either acknowledged by every sink
or saved in ``backlog`` for the sinks that have not acknowledged it: after a restart nothing
is lost, and what is delivered twice carries the same finding id.

The state directory is locked (``flock``) so that two tailers never share it; the kernel drops
the lock when the process dies, however it dies.

Corruption (a bad disk, a stray edit) is detected by a SHA-256 over the checkpoint's content,
stored in it. The previous checkpoint is kept as ``checkpoint.prev.json``: when the current one
is unusable the tailer resumes from the previous one, an *older* position, so lines are read
again and findings repeat (same ids) but none is lost; when neither is usable it reads the log
and its rotated backups from the beginning. Either way it logs an error saying what it did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from webhook.errors import SetupError
from webhook.logs import fields
from webhook.tail.logfiles import Position

__all__ = ["CHECKPOINT_FILE", "PREVIOUS_FILE", "Checkpoint", "CheckpointStore", "StateLocked"]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
PREVIOUS_FILE = "checkpoint.prev.json"
VERSION = 1


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class StateLocked(SetupError, RuntimeError):
    """Another tailer holds the state directory."""


@dataclass(slots=True)
class Checkpoint:
    position: Position | None
    detector: dict[str, Any] = field(default_factory=dict)
    backlog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per sink: findings (as JSON) produced before ``position`` and not yet acknowledged."""
    stats: dict[str, int] = field(default_factory=dict)
    """Running counters (lines, bytes, malformed, ...), kept across restarts."""
    baseline: list[tuple[str, int, float, float]] = field(default_factory=list)
    """Baseline sightings not yet committed to its SQLite file when this was written."""
    written_at: float = 0.0
    streams: dict[str, Any] = field(default_factory=dict)
    """Cloud sources instead of a file: per source, each stream's position (``tail.streams``), or
    the message ids this checkpoint counted that may come back (``tail.queues``)."""

    def to_json(self) -> bytes:
        payload = {
            "version": VERSION,
            "position": self.position.to_json() if self.position else None,
            "detector": self.detector,
            "backlog": self.backlog,
            "stats": self.stats,
            "baseline": self.baseline,
            "written_at": self.written_at,
        }
        if self.streams:
            payload["streams"] = self.streams  # absent for a file: older checkpoints stay valid
        return orjson.dumps({**payload, "checksum": _checksum(payload)})

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise ValueError("not a version 1 ua-sentinel checkpoint")
        stored = raw.pop("checksum", None)
        if stored != _checksum(raw):
            raise ValueError("checksum mismatch" if stored else "no checksum")
        position = raw.get("position")
        return cls(
            position=Position.from_json(position) if position else None,
            detector=raw.get("detector") or {},
            backlog=raw.get("backlog") or {},
            stats={k: int(v) for k, v in (raw.get("stats") or {}).items()},
            baseline=[(str(f), int(d), float(a), float(b)) for f, d, a, b in raw.get("baseline") or []],
            written_at=float(raw.get("written_at") or 0.0),
            streams=raw.get("streams") or {},
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
        self.previous = self.dir / PREVIOUS_FILE
        self.last_written = 0.0
        self.writes = 0
        self.lost = False
        """:meth:`load` found checkpoints but none usable: read from the beginning, not the end."""

    def _read(self, path: Path) -> Checkpoint | None:
        """The checkpoint in ``path``; None when absent or unusable (then set aside, loudly)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.error(
                "checkpoint cannot be read; not using it",
                **fields(checkpoint=str(path), error=str(exc)[:300]),
            )
            self.lost = True
            return None
        try:
            return Checkpoint.from_json(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            logger.error(
                "checkpoint is corrupt; moved aside, not using it",
                **fields(checkpoint=str(path), error=str(exc)[:300], movedTo=str(aside)),
            )
            self.lost = True
            return None

    def load(self) -> Checkpoint | None:
        """The last usable checkpoint, or None; see :attr:`lost` for why there is none."""
        self.lost = False
        current = self._read(self.path)
        if current is not None:
            return current
        previous = self._read(self.previous)
        if previous is not None:
            if self.lost:
                position = previous.position
                logger.error(
                    "resuming from the previous checkpoint: lines after it are read again, "
                    "findings from them may repeat (same ids), none is lost",
                    **fields(
                        checkpoint=str(self.previous),
                        path=position.path if position else None,
                        offset=position.offset if position else None,
                    ),
                )
            self.lost = False
            return previous
        if self.lost:
            logger.error(
                "no usable checkpoint: reading the audit log and its rotated backups from the "
                "beginning (findings may repeat, none is lost)",
                **fields(state=str(self.dir)),
            )
        return None

    def save(self, checkpoint: Checkpoint) -> None:
        """Write, fsync, rename over the old checkpoint, fsync the directory."""
        checkpoint.written_at = time.time()
        tmp = self.path.with_name(f".{CHECKPOINT_FILE}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                data = checkpoint.to_json()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a full disk: give back what the partial write took
            raise
        if self.path.exists():
            # The old checkpoint becomes the previous one through a hard link, so the checkpoint
            # file never goes missing: a reader (or a kill) between the two renames still finds
            # a whole checkpoint at its path. Without hard links, a rename, briefly leaving none.
            link = self.path.with_name(f".{PREVIOUS_FILE}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            try:
                os.link(self.path, link)
                os.replace(link, self.previous)
            except OSError:
                os.replace(self.path, self.previous)
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
