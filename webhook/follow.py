"""Follow an audit log across the apiserver's rotations, never reading a line twice or half.

kube-apiserver rotates its audit log with lumberjack: the live file is renamed to
``<stem>-<UTC time>.<ext>`` (``audit-2026-11-27T18-10-45.450.log``), a new file is created at
the path, and older backups may later be gzipped (``.log.gz``, the plain one then removed).
logrotate's ``copytruncate`` instead copies the file and truncates it in place. This module
follows both:

- a file is known by device + inode **and** a fingerprint of its first bytes (inodes are reused;
  a copied or gzipped backup has a new inode but the same first bytes);
- after a rename the old file is read to its end before the new one is opened, and any backup
  rotated in between (several rotations while we were slow or down) is read in order;
- a truncated live file is finished from its copy (found by fingerprint), then read from 0;
- only complete lines are returned; a partial last line waits for its newline, except at the
  end of a file that was rotated away (no more writes will come), where it counts as a line;
- a line longer than ``MAX_LINE_BYTES`` is skipped (memory stays bounded) and counted.

:class:`Follower` never raises for a vanished or unreadable backup: it logs, counts and moves on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

from webhook.audit import MAX_LINE_BYTES

__all__ = ["FP_LEN", "READ_BYTES", "Batch", "FollowStats", "Follower", "Position", "rotated_candidates"]

log = logging.getLogger(__name__)

FP_LEN = 1024
"""Bytes of a file's head that identify it (the first audit line holds a unique auditID)."""
FP_MIN_TRUST = 256
"""A fingerprint over fewer bytes is trusted only together with the same device + inode."""
READ_BYTES = 1024 * 1024


@dataclass(slots=True)
class Position:
    """Where reading stands: checkpointed as JSON, enough to resume after kill -9."""

    path: str
    dev: int
    ino: int
    fp: str
    fp_len: int
    offset: int
    skipping: bool = False
    closed: bool = False
    key: float | None = None
    """Sort key of a rotated backup (time in its name, else mtime); None for the live file."""
    opened_at: float = 0.0
    finished: bool = False
    """Read to its end and left; or, with ``dev == 0``, "no file open since ``key``"."""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Position:
        return cls(**{k: raw[k] for k in cls.__slots__ if k in raw})


@dataclass(slots=True)
class Batch:
    """Complete lines (without their newline) and the bytes they consumed."""

    lines: list[bytes] = field(default_factory=list)
    consumed: int = 0
    overlong: int = 0


@dataclass(slots=True)
class FollowStats:
    rotations: int = 0
    truncations: int = 0
    unreadable: int = 0
    lost: int = 0
    """Files (or parts of files) known to be gone before they were read."""


def _fingerprint(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def _lumberjack_time(name: str, stem: str, ext: str) -> float | None:
    """``audit-2026-11-27T18-10-45.450.log[.gz]`` → epoch seconds (UTC), else None."""
    base = name[: -len(".gz")] if name.endswith(".gz") else name
    if not (base.startswith(stem + "-") and base.endswith(ext)):
        return None
    stamp = base[len(stem) + 1 : len(base) - len(ext)]
    try:
        when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H-%M-%S.%f")
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    key: float
    compressed: bool


def rotated_candidates(live: str) -> list[Candidate]:
    """Backups of ``live`` in its directory, oldest first.

    lumberjack names sort by the time in the name; other names (``audit.log.1``,
    ``audit.log-20261127.gz``) by modification time. When both ``X`` and ``X.gz`` exist (gzip in
    progress), only ``X`` is listed: the ``.gz`` may be incomplete.
    """
    directory, base = os.path.split(os.path.abspath(live))
    stem, ext = os.path.splitext(base)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    present = set(names)
    out: list[Candidate] = []
    for name in names:
        if name == base:
            continue
        plain = name[: -len(".gz")] if name.endswith(".gz") else name
        if name != plain and plain in present:
            continue
        stamp = _lumberjack_time(name, stem, ext)
        if stamp is None and not (name.startswith(base + ".") or name.startswith(base + "-")):
            continue
        path = os.path.join(directory, name)
        if stamp is None:
            try:
                stamp = os.stat(path).st_mtime
            except OSError:
                continue
        out.append(Candidate(path, stamp, name.endswith(".gz")))
    out.sort(key=lambda c: (c.key, c.path))
    return out


class _Source:
    """One open file, plain or gzip, read forward from an offset in its uncompressed bytes."""

    def __init__(self, path: str, *, closed: bool, key: float | None, opened_at: float) -> None:
        self.path = path
        self.closed = closed
        self.key = key
        self.opened_at = opened_at
        raw = open(path, "rb")  # noqa: SIM115 - owned by this object, closed in close()
        try:
            st = os.fstat(raw.fileno())
            self.dev, self.ino = st.st_dev, st.st_ino
            self.compressed = raw.peek(2)[:2] == b"\x1f\x8b"
            self._raw = raw
            self._stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw  # type: ignore[assignment]
        except BaseException:
            raw.close()
            raise
        self.offset = 0
        self.skipping = False
        self._buf = b""
        self._head = b""
        self._pos = 0
        """Uncompressed bytes read from the stream so far (offset + len(_buf))."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(OSError):
            self._raw.close()

    def seek(self, offset: int, skipping: bool = False) -> None:
        """Start reading at ``offset`` (gzip: by decompressing and discarding)."""
        if self.compressed:
            left = offset
            while left > 0:
                chunk = self._stream.read(min(left, READ_BYTES))
                if not chunk:
                    break
                self._note_head(chunk)
                left -= len(chunk)
                self._pos += len(chunk)
        else:
            # The caller checked that this file is the one ``offset`` belongs to.
            self._head = os.pread(self._raw.fileno(), min(FP_LEN, offset), 0)
            self._pos = offset
        self.offset = self._pos
        self.skipping = skipping

    def _note_head(self, chunk: bytes) -> None:
        if len(self._head) < FP_LEN:
            self._head += chunk[: FP_LEN - len(self._head)]

    def head(self) -> bytes:
        """The file's first bytes as this reader saw them (never re-read: a truncation changes them)."""
        return self._head

    def head_intact(self) -> bool:
        """Does the file still start with the bytes we read? (False: truncated, maybe rewritten.)"""
        if self.compressed or not self._head:
            return True
        return os.pread(self._raw.fileno(), len(self._head), 0) == self._head

    def save(self) -> tuple[int, bytes, int, bool, bytes]:
        return self.offset, self._buf, self._pos, self.skipping, self._head

    def restore(self, state: tuple[int, bytes, int, bool, bytes]) -> None:
        self.offset, self._buf, self._pos, self.skipping, self._head = state

    def _read(self, size: int) -> bytes:
        chunk = self._stream.read(size) if self.compressed else os.pread(self._raw.fileno(), size, self._pos)
        if self._pos < FP_LEN and len(self._head) == self._pos:
            self._note_head(chunk)
        self._pos += len(chunk)
        return chunk

    def size(self) -> int:
        return os.fstat(self._raw.fileno()).st_size

    @property
    def read_so_far(self) -> int:
        return self._pos

    def read(self) -> Batch:
        """Complete lines from the current offset; consumes nothing while a line is partial.

        Reads on until it has a line, a skipped over-long line or the end of the file, so an
        empty batch always means "nothing more for now".
        """
        while True:
            chunk = self._read(READ_BYTES)
            batch = self._cut(chunk)
            if batch.lines or batch.consumed or not chunk:
                return batch

    def _cut(self, chunk: bytes) -> Batch:
        batch = Batch()
        data = self._buf + chunk if self._buf else chunk
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                batch.consumed = len(data)
                self.offset += len(data)
                self._buf = b""
                return batch
            batch.consumed = newline + 1
            data = data[newline + 1 :]
            self.skipping = False
        cut = data.rfind(b"\n") + 1
        if cut:
            batch.lines = data[:cut].split(b"\n")
            batch.lines.pop()
        rest = data[cut:]
        batch.consumed += cut
        if len(rest) > MAX_LINE_BYTES:
            batch.overlong += 1
            batch.consumed += len(rest)
            self.skipping = True
            rest = b""
        elif rest and not chunk and self.closed:
            batch.lines.append(rest)  # the last line of a rotated file: no newline will come
            batch.consumed += len(rest)
            rest = b""
        self._buf = rest
        self.offset += batch.consumed
        return batch

    def position(self) -> Position:
        head = self.head()[: max(0, min(FP_LEN, self._pos))]
        return Position(
            path=self.path,
            dev=self.dev,
            ino=self.ino,
            fp=_fingerprint(head),
            fp_len=len(head),
            offset=self.offset,
            skipping=self.skipping,
            closed=self.closed,
            key=self.key,
            opened_at=self.opened_at,
        )


def _head_of(path: str, length: int) -> bytes | None:
    try:
        with open(path, "rb") as raw:
            if raw.peek(2)[:2] == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    return unzipped.read(length)
            return raw.read(length)
    except (OSError, EOFError, zlib.error):
        return None


def _same(path: str, pos: Position, *, need_inode: bool = False) -> bool:
    """Is the file at ``path`` (maybe gzipped) the one ``pos`` was reading?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    inode = (st.st_dev, st.st_ino) == (pos.dev, pos.ino)
    if (need_inode or pos.fp_len < FP_MIN_TRUST) and not inode:
        return False
    head = _head_of(path, pos.fp_len)
    return head is not None and len(head) == pos.fp_len and _fingerprint(head) == pos.fp


class Follower:
    """Yields batches of complete lines from ``path`` and its rotations, in write order.

    Create it with the checkpointed :class:`Position` (or None for a first start), call
    :meth:`read` in a loop (an empty batch with nothing consumed means: at the end, wait) and
    checkpoint :meth:`position` after the lines returned so far are handled.
    """

    def __init__(self, path: str, resume: Position | None = None, *, from_start: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.stats = FollowStats()
        self._current: _Source | None = None
        self._queue: list[Candidate] = []
        self._done: list[Position] = []
        self._gap: Position | None = None
        self.idle = False
        """True after a read found nothing new at the end of the live file."""
        if resume is not None and resume.dev == 0:
            self._queue = [c for c in rotated_candidates(self.path) if resume.key and c.key > resume.key]
            self._open_next()
        elif resume is not None:
            self._resume(resume)
        elif from_start:
            self._queue = rotated_candidates(self.path)
            self._open_next()
        else:
            self._open_live(at_end=True)

    # -- start-up -------------------------------------------------------------------------
    def _resume(self, pos: Position) -> None:
        live = not pos.closed and _same(self.path, pos, need_inode=True)
        if live and self._open_live(offset=pos.offset, skipping=pos.skipping, opened_at=pos.opened_at):
            return
        found = next((c for c in rotated_candidates(self.path) if _same(c.path, pos)), None)
        if found is not None:
            log.info("resuming %s at offset %d (rotated since the checkpoint)", found.path, pos.offset)
            self._open(found, offset=pos.offset, skipping=pos.skipping)
            return
        if pos.offset > 0 and not pos.finished:
            self.stats.lost += 1
            log.error(
                "the checkpointed file %s (inode %d) is gone: what followed offset %d is lost; "
                "reading the backups rotated after it",
                pos.path,
                pos.ino,
                pos.offset,
            )
        after = pos.key if pos.key is not None else pos.opened_at
        self._queue = [c for c in rotated_candidates(self.path) if c.key > after]
        self._open_next()

    # -- opening --------------------------------------------------------------------------
    def _open(self, cand: Candidate, *, offset: int = 0, skipping: bool = False) -> bool:
        try:
            source = _Source(cand.path, closed=True, key=cand.key, opened_at=time.time())
            try:
                source.seek(offset, skipping)
            except BaseException:
                source.close()
                raise
        except (OSError, EOFError, zlib.error) as exc:
            self.stats.unreadable += 1
            log.error("cannot read rotated audit log %s, skipped: %s", cand.path, exc)
            return False
        self._switch(source)
        return True

    def _open_live(
        self, *, at_end: bool = False, offset: int = 0, skipping: bool = False, opened_at: float | None = None
    ) -> bool:
        try:
            source = _Source(self.path, closed=False, key=None, opened_at=opened_at or time.time())
        except FileNotFoundError:
            self._switch(None)
            return False
        except OSError as exc:
            log.error("cannot open %s: %s", self.path, exc)
            self._switch(None)
            return False
        if at_end:
            offset = self._last_line_end(source)
        source.seek(offset, skipping)
        self._switch(source)
        return True

    @staticmethod
    def _last_line_end(source: _Source) -> int:
        """End of the last complete line: a partial last line is read once it is complete."""
        size = source.size()
        start = size
        fd = source._raw.fileno()
        while start > 0:
            step = min(READ_BYTES, start)
            chunk = os.pread(fd, step, start - step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start - step + newline + 1
            start -= step
        return 0

    def _switch(self, source: _Source | None) -> None:
        previous = self._current
        if previous is not None:
            self._done.append(previous.position())
            self._done = self._done[-64:]
            previous.close()
        if previous is not None:
            log.debug("left %s at offset %d (closed=%s)", previous.path, previous.offset, previous.closed)
        self._current = source
        if source is not None:
            log.debug("reading %s from offset %d (closed=%s)", source.path, source.offset, source.closed)
            self._gap = None
        else:
            # Nothing open: remember where we stood so a checkpoint can resume after it.
            if previous is not None and previous.closed:
                self._gap = previous.position()
                self._gap.finished = True
                if self._gap.key is None:
                    self._gap.key = previous.opened_at
            elif self._gap is None:
                now = time.time()
                self._gap = Position(
                    self.path, 0, 0, "", 0, 0, closed=True, key=now, opened_at=now, finished=True
                )

    def _open_next(self) -> None:
        while self._queue:
            if self._open(self._queue.pop(0)):
                return
        self._open_live()

    # -- reading --------------------------------------------------------------------------
    def read(self) -> Batch:
        """The next lines; an empty batch with ``consumed == 0`` means nothing new yet.

        :attr:`idle` tells whether that is because the live file is read to its end.
        """
        self.idle = False
        for _ in range(64):
            source = self._current
            if source is None:
                if not self._open_live():
                    self.idle = True
                    return Batch()
                source = self._current
                assert source is not None
            before = source.save()
            try:
                batch = source.read()
            except (OSError, EOFError, zlib.error) as exc:
                self.stats.unreadable += 1
                log.error("reading %s failed, rest of file skipped: %s", source.path, exc)
                self._after_closed(source)
                continue
            if (batch.lines or batch.consumed) and not source.closed and not source.head_intact():
                source.restore(before)  # truncated under us: what we just read may be new content
                self._truncated(source)
                continue
            if batch.lines or batch.consumed:
                return batch
            if source.closed:
                self._after_closed(source)
                continue
            if not self._check_live(source):
                self.idle = True
                return Batch()
        return Batch()

    def _after_closed(self, source: _Source) -> None:
        """A rotated file is finished: read what was rotated after it, then the live file."""
        if not self._queue:
            after = source.key
            if after is None:
                own = next((c for c in rotated_candidates(self.path) if self._is(c.path, source)), None)
                after = own.key if own is not None else source.opened_at
            self._queue = [
                c
                for c in rotated_candidates(self.path)
                if c.key > after and not self._is(c.path, source) and not self._was_read(c.path)
            ]
        self._open_next()

    def _is(self, path: str, source: _Source) -> bool:
        return _same(path, source.position())

    def _was_read(self, path: str) -> bool:
        return any(_same(path, done) for done in self._done)

    def _check_live(self, source: _Source) -> bool:
        """At the end of the live file: has it been rotated? True when there is more to read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, the new file not created yet: wait
        except OSError as exc:
            log.warning("cannot stat %s: %s", self.path, exc)
            return False
        if (st.st_dev, st.st_ino) != (source.dev, source.ino):
            self.stats.rotations += 1
            log.info("%s was rotated; finishing the old file before switching", self.path)
            source.closed = True
            return True
        if st.st_size >= source.read_so_far and source.head_intact():
            return False
        self._truncated(source)
        return True

    def _truncated(self, source: _Source) -> None:
        """copytruncate: finish the old content from its copy (found by fingerprint), then read from 0."""
        pos = source.position()
        self.stats.truncations += 1
        self.stats.rotations += 1
        copy = next(
            (
                c
                for c in reversed(rotated_candidates(self.path))
                if _same(c.path, pos) and not self._was_read(c.path)
            ),
            None,
        )
        if copy is None:
            self.stats.lost += 1
            log.error(
                "%s was truncated and no copy of it was found: lines after offset %d may be lost",
                self.path,
                source.offset,
            )
            self._switch(None)
            self._open_live()
            return
        log.info("%s was copied to %s and truncated; finishing the copy", self.path, copy.path)
        self._switch(None)
        self._queue = []
        if not self._open(copy, offset=pos.offset, skipping=pos.skipping):
            self._open_live()

    def position(self) -> Position:
        """Where the lines returned so far end (when no file is open: what to resume after)."""
        if self._current is not None:
            return self._current.position()
        if self._gap is None:
            now = time.time()
            self._gap = Position(
                self.path, 0, 0, "", 0, 0, closed=True, key=now, opened_at=now, finished=True
            )
        return self._gap

    def pending_bytes(self) -> int:
        """Bytes written but not yet returned, in the current file (for the lag metric)."""
        source = self._current
        if source is None or source.compressed:
            return 0
        try:
            return max(0, source.size() - source.offset)
        except OSError:
            return 0

    def close(self) -> None:
        self._switch(None)
