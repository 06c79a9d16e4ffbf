"""Opening audit logs: plain or gzip, told apart by gzip's magic bytes (never by the name), or stdin.

kube-apiserver's backups are gzipped by logrotate or copied as they are, and a file may be
renamed either way, so every reader (replay, suggest, the tailer, the EKS/GKE decoders of
base64 records) asks :func:`is_gzip` of the data itself.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from typing import IO, Final

__all__ = ["GZIP_MAGIC", "READ_ERRORS", "decompressing", "is_gzip", "open_file", "open_log"]

GZIP_MAGIC: Final = b"\x1f\x8b"
READ_ERRORS: Final[tuple[type[Exception], ...]] = (OSError, EOFError, zlib.error)
"""What reading a plain or gzip file can raise (``gzip.BadGzipFile`` is an ``OSError``)."""


def is_gzip(head: bytes) -> bool:
    """Does ``head`` (a file's or a record's first bytes) start like gzip data?"""
    return head[:2] == GZIP_MAGIC


class _GzipReader(gzip.GzipFile):
    """Decompresses ``raw`` and, unlike ``GzipFile(fileobj=...)``, closes it when closed.

    Data that breaks off (a truncated or corrupt .gz) first gives everything decompressed
    before the break, then raises on the next read: ``GzipFile.read`` would drop up to a whole
    read's worth of good lines with the error.
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw
        self._broken: Exception | None = None

    def read(self, size: int | None = -1) -> bytes:
        if self._broken is not None:
            raise self._broken
        if size is None or size < 0:
            return super().read()
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            try:
                chunk = self.read1(wanted)
            except READ_ERRORS as exc:
                if not parts:
                    raise
                self._broken = exc
                break
            if not chunk:
                break
            parts.append(chunk)
            wanted -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def decompressing(raw: io.BufferedReader) -> IO[bytes]:
    """``raw`` itself, or a reader of its uncompressed bytes when it holds gzip data."""
    if is_gzip(raw.peek(2)):
        return _GzipReader(raw)  # type: ignore[return-value]
    return raw


def open_file(path: str) -> IO[bytes]:
    """Open ``path`` for reading its (uncompressed) bytes; the caller closes it."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        return decompressing(raw)
    except BaseException:
        raw.close()
        raise


def open_log(path: str) -> IO[bytes]:
    """:func:`open_file`, where ``-`` is stdin (read as it is)."""
    return sys.stdin.buffer if path == "-" else open_file(path)
