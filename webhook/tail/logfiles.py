"""Audit log files on disk: identity (device, inode, head fingerprint), backups, and reading.

A :class:`LogFile` reads one file (plain or gzip) forward from an offset and returns only
complete lines (see :meth:`LogFile.read`); :func:`rotated_candidates` lists a log's backups in
rotation order; :func:`same_file` tells whether a path holds the file a :class:`Position` was
reading, even after a rename or gzip. :mod:`webhook.tail.follow` strings these into a follower.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from webhook.core.audit import MAX_LINE_BYTES
from webhook.inputs.files import READ_ERRORS, decompressing, open_file
from webhook.inputs.longline import LongLine

__all__ = [
    "FP_LEN",
    "FP_MIN_TRUST",
    "READ_BYTES",
    "Batch",
    "Candidate",
    "LogFile",
    "Position",
    "fingerprint",
    "rotated_candidates",
    "same_file",
    "starts_like",
]

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
    """Backups keyed after this were rotated after the file was opened: for the live file, the
    newest backup key when it was opened (a checkpoint written before that: the wall clock)."""
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
    """Lines over ``MAX_LINE_BYTES`` that could not be read down to their audit fields (or whose
    start was read before a restart): skipped."""
    malformed: list[str] = field(default_factory=list)
    """Records a queued source could not read as audit events, one reason each (skipped)."""
    skipped: int = 0
    """Well-formed records of a queued source that are not Kubernetes audit events."""


def fingerprint(head: bytes) -> str:
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


class LogFile:
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
            self._raw = raw
            self._stream = decompressing(raw)
            self.compressed = self._stream is not raw
        except BaseException:
            raw.close()
            raise
        self.offset = 0
        self.skipping = False
        self._long: LongLine | None = None
        """The over-long line being read, down to its audit fields."""
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
        self._long = None

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

    def first_bytes(self) -> bytes:
        """The file's first :data:`FP_LEN` bytes now (read or not; a compressed file: as read)."""
        if self.compressed:
            return self._head
        return os.pread(self._raw.fileno(), FP_LEN, 0)

    def save(self) -> tuple[int, bytes, int, bool, bytes, LongLine | None]:
        long = copy.deepcopy(self._long) if self._long is not None else None  # bounded: its kept fields
        return self.offset, self._buf, self._pos, self.skipping, self._head, long

    def restore(self, state: tuple[int, bytes, int, bool, bytes, LongLine | None]) -> None:
        self.offset, self._buf, self._pos, self.skipping, self._head, self._long = state

    def _read(self, size: int) -> bytes:
        chunk = self._stream.read(size) if self.compressed else os.pread(self._raw.fileno(), size, self._pos)
        if self._pos < FP_LEN and len(self._head) == self._pos:
            self._note_head(chunk)
        self._pos += len(chunk)
        return chunk

    def last_line_end(self) -> int:
        """End of the last complete line (a partial last line is read once it is complete)."""
        start = self.size()
        fd = self._raw.fileno()
        while start > 0:
            step = min(READ_BYTES, start)
            chunk = os.pread(fd, step, start - step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start - step + newline + 1
            start -= step
        return 0

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

    def _end_long(self, batch: Batch) -> None:
        assert self._long is not None
        line = self._long.line()
        self._long = None
        if line is None:
            batch.overlong += 1
        else:
            batch.lines.append(line)

    def _cut(self, chunk: bytes) -> Batch:
        batch = Batch()
        data = self._buf + chunk if self._buf else chunk
        if self.skipping or self._long is not None:
            newline = data.find(b"\n")
            if newline < 0:
                batch.consumed = len(data)
                self.offset += len(data)
                self._buf = b""
                if self._long is not None:
                    self._long.feed(data)
                    if not chunk and self.closed:
                        self._end_long(batch)  # the last line of a rotated file
                return batch
            batch.consumed = newline + 1
            if self._long is not None:
                self._long.feed(data[:newline])
                self._end_long(batch)
            else:
                batch.overlong += 1  # the rest of a line whose start was read before a restart
            data = data[newline + 1 :]
            self.skipping = False
        cut = data.rfind(b"\n") + 1
        if cut:
            lines = data[:cut].split(b"\n")
            lines.pop()
            batch.lines += lines  # after an over-long line read down just before them
        rest = data[cut:]
        batch.consumed += cut
        if len(rest) > MAX_LINE_BYTES:
            self._long = LongLine()  # read on, down to its audit fields, in bounded memory
            self._long.feed(rest)
            batch.consumed += len(rest)
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
            fp=fingerprint(head),
            fp_len=len(head),
            offset=self.offset,
            skipping=self.skipping or self._long is not None,
            closed=self.closed,
            key=self.key,
            opened_at=self.opened_at,
        )


def _head_of(path: str, length: int) -> bytes | None:
    try:
        with open_file(path) as stream:
            return stream.read(length)
    except READ_ERRORS:
        return None


def same_file(path: str, pos: Position, *, need_inode: bool = False) -> bool:
    """Is the file at ``path`` (maybe gzipped) the one ``pos`` was reading?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    inode = (st.st_dev, st.st_ino) == (pos.dev, pos.ino)
    if (need_inode or pos.fp_len < FP_MIN_TRUST) and not inode:
        return False
    return starts_like(path, pos)


def starts_like(path: str, pos: Position) -> bool:
    """Does the file at ``path`` begin with the bytes ``pos`` read (all of them, when fewer than
    :data:`FP_MIN_TRUST`: a weak likeness, for a caller that knows more)?"""
    head = _head_of(path, pos.fp_len)
    return head is not None and len(head) == pos.fp_len and fingerprint(head) == pos.fp
