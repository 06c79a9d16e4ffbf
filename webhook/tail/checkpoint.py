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

With a ``remote`` copy (``tail --checkpoint-configmap``, :mod:`webhook.kube.state_configmap`),
:meth:`CheckpointStore.save` also writes the whole checkpoint there, after the local file: when
``save`` returns, the checkpoint is durable in both; when the copy fails, ``save`` raises
``OSError`` (the tailer counts it and retries) and the older copy stays valid, which means lines
read again, never lost. An unchanged checkpoint (the same content, only ``written_at`` newer) is
not copied again. :meth:`CheckpointStore.load` takes the newer (``written_at``) of the local
checkpoint and the copy, so a pod rescheduled with an empty state directory resumes where the
last one stopped.
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
from typing import TYPE_CHECKING, Any

import orjson

from webhook.errors import SetupError
from webhook.logs import fields
from webhook.tail.logfiles import Position

if TYPE_CHECKING:
    from webhook.kube.state_configmap import StateConfigMap

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

    def _payload(self) -> dict[str, Any]:
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
        return payload

    def to_json(self) -> bytes:
        payload = self._payload()
        return orjson.dumps({**payload, "checksum": _checksum(payload)})

    def content_digest(self) -> str:
        """SHA-256 of everything but ``written_at``: equal digests = nothing new to copy."""
        return _checksum({**self._payload(), "written_at": 0.0})

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

    def __init__(self, state_dir: str | os.PathLike[str], *, remote: StateConfigMap | None = None) -> None:
        """``remote``: the ConfigMap copy (``--checkpoint-configmap``), read by :meth:`load`,
        written by :meth:`save`."""
        self.remote = remote
        self._remote_digest: str | None = None
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
        """The last usable checkpoint (the newer of the local one and the ConfigMap's), or None;
        see :attr:`lost` for why there is none. Raises :class:`~webhook.kube.state_configmap.StateReadError`
        when the ConfigMap cannot be read: starting without it could skip events."""
        local = self._load_local()
        if self.remote is None:
            return local
        local_lost = self.lost
        remote = self._load_remote()
        if remote is not None:
            self._remote_digest = remote.content_digest()
        newer_local = local is not None and (remote is None or local.written_at >= remote.written_at)
        chosen = local if newer_local else remote
        self.lost = chosen is None and (local_lost or self.lost)
        if self.lost:
            self._report_lost()
        logger.info(
            "checkpoint chosen",
            **fields(
                source="none" if chosen is None else "local" if chosen is local else "configmap",
                localWrittenAt=local.written_at if local else None,
                configmapWrittenAt=remote.written_at if remote else None,
                configmap=self.remote.label,
            ),
        )
        return chosen

    def _load_remote(self) -> Checkpoint | None:
        assert self.remote is not None
        self.lost = False
        try:
            data = self.remote.load()
            return Checkpoint.from_json(data) if data is not None else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.error(
                "checkpoint ConfigMap copy is corrupt; not using it",
                **fields(configmap=self.remote.label, error=str(exc)[:300]),
            )
            self.lost = True
            return None

    def _load_local(self) -> Checkpoint | None:
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
        if self.lost and self.remote is None:
            self._report_lost()
        return None

    def _report_lost(self) -> None:
        logger.error(
            "no usable checkpoint: reading the audit log and its rotated backups from the "
            "beginning (findings may repeat, none is lost)",
            **fields(state=str(self.dir)),
        )

    def save(self, checkpoint: Checkpoint) -> None:
        """Write, fsync, rename over the old checkpoint, fsync the directory; then copy it to the
        ConfigMap, when there is one (raises OSError when that copy fails: the local one stands)."""
        checkpoint.written_at = time.time()
        tmp = self.path.with_name(f".{CHECKPOINT_FILE}.tmp")
        data = checkpoint.to_json()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
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
        if self.remote is not None:
            digest = checkpoint.content_digest()
            if digest != self._remote_digest and self.remote.save(data):
                self._remote_digest = digest

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
