"""Find the few audit lines that can matter, at C speed, in one process or several.

Most lines of an audit log are successful requests that can give no finding. A scan reads
~1 MiB blocks, counts lines, checks their shape block-wise (every line one JSON object) and
cuts out only the lines a :class:`webhook.detect.prefilter.Prefilter` says can matter (the Detector's
``prefilter``: refusals, webhook verdicts, agents that may be denied).
Decoding and detection stay with the caller, in order. A large regular file is split at line
boundaries into pieces scanned by worker processes (ordered results, bounded memory): the scan
is the cost that grows with the log, the detector's share is small.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from webhook.core.audit import MAX_LINE_BYTES
from webhook.detect.prefilter import Prefilter
from webhook.inputs.files import is_gzip
from webhook.inputs.longline import LongLine

__all__ = [
    "BLOCK_BYTES",
    "Block",
    "Read",
    "ScanResult",
    "read_blocks",
    "scan_block",
    "scan_file",
    "scan_stream",
    "start_scan",
    "stop_started",
]

BLOCK_BYTES = 1024 * 1024
PIECE_BYTES = 64 * 1024 * 1024
"""Largest piece a worker scans. On the 1M-line bench log (640 MiB, 2 workers) 8 and 16 MiB
pieces were slower (more results for the parent to take in); 32 and 64 MiB were within noise."""
PARALLEL_MIN_BYTES = 64 * 1024 * 1024

Block = tuple[bytes, int, int]
"""``(buffer, start, end)``: ``buffer[start:end]`` is a run of complete lines (no copy made)."""


@dataclass(slots=True)
class ScanResult:
    """What a run of lines holds. Line numbers count from 1 within the run."""

    lines: int = 0
    size: int = 0
    hits: list[tuple[int, bytes]] = field(default_factory=list)
    malformed: list[tuple[int, str]] = field(default_factory=list)
    events: list[tuple[int, bytes | dict[str, Any]]] = field(default_factory=list)
    """Already decoded events (input shapes other than the apiserver's, see webhook.inputs.formats)."""
    skipped: int = 0
    """Well-formed records that are not Kubernetes audit events (see webhook.inputs.formats)."""


Read = tuple[Block, LongLine | None]
"""A block and, when it stands for one over-long line, that line's :class:`LongLine` (the block
then holds the line read down to its fields, or is empty when it is unreadable)."""


def _long_block(long: LongLine) -> Read:
    line = long.line()
    block = (line or b"") + b"\n"
    return (block, 0, len(block)), long


def read_blocks(stream: IO[bytes], limit: int | None = None) -> Iterator[Read]:
    """Runs of complete lines, about 1 MiB each, every one ending in a newline.

    Reads at most ``limit`` bytes when given. A line longer than ``MAX_LINE_BYTES`` is read on
    through a :class:`LongLine` (memory stays bounded) and comes as its own block, read down to
    the fields that judge it. A last line without a newline gets one.
    """
    carry = b""
    long: LongLine | None = None
    remaining = limit
    while True:
        size = BLOCK_BYTES if remaining is None else min(BLOCK_BYTES, remaining)
        chunk = stream.read(size) if size else b""
        if remaining is not None:
            remaining -= len(chunk)
        if not chunk:
            if long is not None:
                yield _long_block(long)
            elif carry:
                last = carry + b"\n"
                yield (last, 0, len(last)), None
            return
        start = 0
        if long is not None:
            newline = chunk.find(b"\n")
            long.feed(chunk if newline < 0 else chunk[:newline])
            if newline < 0:
                continue
            yield _long_block(long)
            long = None
            start = newline + 1
        if carry:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                carry += chunk[start:]
                if len(carry) > MAX_LINE_BYTES:
                    long = LongLine()
                    long.feed(carry)
                    carry = b""
                continue
            head = carry + chunk[start : newline + 1]
            carry = b""
            if len(head) > MAX_LINE_BYTES + 1:
                long = LongLine()
                long.feed(head[:-1])
                yield _long_block(long)
                long = None
            else:
                yield (head, 0, len(head)), None
            start = newline + 1
        cut = chunk.rfind(b"\n", start) + 1
        if cut > start:
            yield (chunk, start, cut), None
        else:
            cut = start
        carry = chunk[cut:]
        if len(carry) > MAX_LINE_BYTES:
            long = LongLine()
            long.feed(carry)
            carry = b""


_STATIC = Prefilter()


def _careful(block: bytes, result: ScanResult, base: int, prefilter: Prefilter) -> None:
    lines = block.split(b"\n")
    lines.pop()
    for i, raw in enumerate(lines, start=base + 1):
        line = raw.strip(b" \t\r")  # JSON allows white space around the object, CRLF included
        if not line:
            continue
        if len(line) > MAX_LINE_BYTES:  # whole already (the tailer's lines): read down all the same
            long = LongLine()
            long.feed(line)
            kept = long.line()
            if kept is None:
                result.malformed.append((i, f"line longer than {MAX_LINE_BYTES} bytes: {long.error}"))
            elif prefilter.matches(kept):
                result.hits.append((i, kept))
        elif line[:1] != b"{" or line[-1:] != b"}":
            result.malformed.append((i, "not a JSON object line"))
        elif prefilter.matches(line):
            result.hits.append((i, line))


PREFIX_BYTES = 32


def _newlines(buf: bytes, start: int, end: int) -> int:
    """Newlines in ``buf[start:end]``, the outside parts (less than a line each) subtracted.

    ``bytes.count`` of one byte is a plain byte loop (~0.30 ms/MiB); ``replace`` deletes one
    byte by ``memchr`` (~0.09 ms/MiB for whole buffers of audit lines).
    """
    inside = len(buf) - len(buf.replace(b"\n", b""))
    return inside - buf.count(b"\n", 0, start) - buf.count(b"\n", end)


def _numbered_hits(
    buf: bytes, start: int, end: int, boundary: bytes, prefilter: Prefilter
) -> tuple[int, list[tuple[int, bytes]]]:
    """(``boundary`` occurrences in the block, hits numbered from 1 by the occurrences before them).

    Counting is split one byte before each hit's newline, where the next line's occurrence
    starts, so no occurrence straddles two counts. When every line boundary is an occurrence,
    the total is the line count minus one and the numbers are the hits' line numbers; the
    caller checks that equality (a miscount only sends the block down the careful path).
    """
    counted, number = start, 1
    hits: list[tuple[int, bytes]] = []
    for line_start, line_end in prefilter.hit_spans(buf, start, end):
        number += buf.count(boundary, counted, line_end - 1)
        counted = line_end - 1
        hits.append((number, buf[line_start:line_end]))
    return number - 1 + buf.count(boundary, counted, end), hits


def _fast_hits(
    buf: bytes, start: int, end: int, newlines: int, boundary: bytes, prefilter: Prefilter, base: int
) -> list[tuple[int, bytes]] | None:
    """The hits numbered from ``base + 1``, or None unless every line boundary is ``boundary``."""
    if prefilter.all_lines:  # every line a hit: one count, numbered by position
        if buf.count(boundary, start, end) != newlines - 1:
            return None
        lines = buf[start:end].split(b"\n")
        lines.pop()
        return list(enumerate(lines, start=base + 1))
    boundaries, hits = _numbered_hits(buf, start, end, boundary, prefilter)
    if boundaries != newlines - 1:
        return None
    return [(base + number, line) for number, line in hits]


def scan_block(
    block: Block, result: ScanResult, prefilter: Prefilter = _STATIC, long: LongLine | None = None
) -> None:
    """Add one block's lines, hits and malformed lines to ``result``.

    ``long``: the block is one over-long line read down to its fields (see :func:`read_blocks`);
    its bytes are counted as read, and an unreadable one is malformed.

    Fast path: every line starts like the block's first line (32 bytes, ``{"kind":"Event",...``
    for kube-apiserver) and every line before it ends in ``}``: the block holds one fewer
    ``}\n`` + prefix than newlines. Any other block is checked line by line.
    """
    buf, start, end = block
    base = result.lines
    if long is not None:
        result.size += long.size + 1 - (end - start)
        if long.error is not None:
            result.lines += 1
            result.size += end - start
            result.malformed.append((result.lines, f"line longer than {MAX_LINE_BYTES} bytes: {long.error}"))
            return
    result.size += end - start
    newlines = _newlines(buf, start, end)
    prefix = buf[start : min(start + PREFIX_BYTES, buf.find(b"\n", start, end))]
    result.lines += newlines
    shaped = (
        end - start <= MAX_LINE_BYTES
        and prefix[:1] == b"{"
        and buf[end - 2 : end - 1] == b"}"
        and (newlines <= 1 or len(prefix) == PREFIX_BYTES)
    )
    hits = _fast_hits(buf, start, end, newlines, b"}\n" + prefix, prefilter, base) if shaped else None
    if hits is None:
        _careful(buf[start:end], result, base, prefilter)
        return
    result.hits.extend(hits)


def scan_stream(
    stream: IO[bytes], limit: int | None = None, prefilter: Prefilter = _STATIC
) -> Iterator[ScanResult]:
    """Scan a stream block by block (one result per block, memory bounded by the block)."""
    for block, long in read_blocks(stream, limit):
        result = ScanResult()
        scan_block(block, result, prefilter, long)
        yield result


def _scan_piece(piece: tuple[str, int, int, Prefilter]) -> ScanResult:
    path, start, end, prefilter = piece
    result = ScanResult()
    with open(path, "rb") as handle:
        handle.seek(start)
        for block, long in read_blocks(handle, end - start):
            scan_block(block, result, prefilter, long)
    return result


def _next_line_start(handle: IO[bytes], offset: int) -> int:
    """Where the line after the one holding ``offset`` starts (read in blocks: a line may be
    longer than memory should hold); the file's end when there is none."""
    handle.seek(offset)
    while chunk := handle.read(BLOCK_BYTES):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        offset += len(chunk)
    return offset


def _pieces(path: str, size: int, workers: int = 1) -> list[tuple[str, int, int]]:
    """Split ``path`` into pieces that start right after a newline.

    A piece is ``PIECE_BYTES`` at most and a ``workers``-th of the file at most, so every
    worker gets a share of a file just above the parallel threshold.
    """
    piece = min(PIECE_BYTES, -(-size // workers))
    bounds = [0]
    with open(path, "rb") as handle:
        offset = piece
        while offset < size:
            position = _next_line_start(handle, offset)
            if position >= size:
                break
            if position > bounds[-1]:
                bounds.append(position)
            offset = position + piece
    bounds.append(size)
    return [(path, a, b) for a, b in itertools.pairwise(bounds)]


def _drain(pool: Any, results: Iterator[ScanResult]) -> Iterator[ScanResult]:
    """The pool's results in order; the pool ends with them (or is stopped if the reader stops)."""
    try:
        yield from results
    except BaseException:
        pool.terminate()  # the reader stopped early or failed: no more pieces are wanted
        raise
    else:
        pool.close()  # all pieces done: let workers exit on their own, no signals sent
    finally:
        pool.join()


def _split(path: str, size: int, count: int, prefilter: Prefilter) -> tuple[Any, Iterator[ScanResult]]:
    """Worker processes scanning ``path`` in pieces, started now (the pieces are handed out at
    once; the results wait for the reader, in file order): the pool and its results."""
    import multiprocessing  # only a file this large pays for it (a short replay starts faster)

    pieces = [(*piece, prefilter) for piece in _pieces(path, size, count)]
    pool = multiprocessing.get_context("fork").Pool(min(count, len(pieces)))
    return pool, _drain(pool, pool.imap(_scan_piece, pieces))


@dataclass(slots=True)
class _Started:
    """A scan :func:`start_scan` began: for which file (device, inode, size), workers and prefilter."""

    identity: tuple[int, int, int]
    workers: int
    prefilter: dict[str, Any]
    pool: Any
    results: Iterator[ScanResult]

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()


_STARTED: dict[str, _Started] = {}


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size


def start_scan(path: str, *, workers: int | None = None, prefilter: Prefilter = _STATIC) -> bool:
    """Start the worker processes on ``path`` now when :func:`scan_file` would split it; True if so.

    For a reader that has more to import and build before it reads (replay: the Detector, the
    audit and finding models, the sinks): the workers scan meanwhile, and fork from a smaller
    process. The next :func:`scan_file` of ``path`` takes the results if the file (device, inode,
    size), ``workers`` and ``prefilter`` are the same; otherwise it stops them and scans anew.
    :func:`stop_started` stops a scan no one took.
    """
    count = workers if workers is not None else (os.cpu_count() or 1)
    try:
        stat = os.stat(path)
    except OSError:
        return False  # the reader's own open reports it
    if path == "-" or path in _STARTED or count < 2 or not os.path.isfile(path):
        return False
    if stat.st_size < PARALLEL_MIN_BYTES:
        return False
    try:
        with open(path, "rb") as handle:
            if is_gzip(handle.read(2)):
                return False  # read through a decompressor: scan_file does not split it
    except OSError:
        return False
    pool, results = _split(path, stat.st_size, count, prefilter)
    _STARTED[path] = _Started(_identity(stat), count, prefilter.__getstate__(), pool, results)
    return True


def stop_started() -> None:
    """Stop the scans :func:`start_scan` began that no :func:`scan_file` took."""
    while _STARTED:
        _STARTED.popitem()[1].stop()


def _take_started(
    path: str, stream: IO[bytes], count: int, prefilter: Prefilter
) -> Iterator[ScanResult] | None:
    """The results of the scan started for this very file and settings, if any (others stopped)."""
    started = _STARTED.pop(path, None)
    if started is None:
        return None
    same = started.workers == count and started.prefilter == prefilter.__getstate__()
    try:
        same = same and started.identity == _identity(os.fstat(stream.fileno()))
    except (OSError, AttributeError, ValueError):
        same = False
    if same:
        return started.results
    started.stop()
    return None


def scan_file(
    path: str, stream: IO[bytes], *, workers: int | None = None, prefilter: Prefilter = _STATIC
) -> Iterator[ScanResult]:
    """Scan an opened log; a large regular, uncompressed file is scanned by worker processes.

    ``stream`` is the caller's open handle (plain or decompressing); it is read directly unless
    the file is split. Results come in file order either way. ``prefilter`` (the Detector's)
    decides which lines are hits; the default knows no allowlist (no known-bad-agent lines).
    A scan :func:`start_scan` began for the same file and settings is taken over.
    """
    count = workers if workers is not None else (os.cpu_count() or 1)
    plain = path != "-" and getattr(stream, "raw", None) is not None and os.path.isfile(path)
    started = _take_started(path, stream, count, prefilter) if plain else None
    if started is not None:
        yield from started
        return
    size = os.path.getsize(path) if plain else 0
    if count < 2 or size < PARALLEL_MIN_BYTES:
        yield from scan_stream(stream, prefilter=prefilter)
        return
    yield from _split(path, size, count, prefilter)[1]
