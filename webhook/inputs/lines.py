"""Lines of an audit log → audit events: the one decoder behind replay, tail and suggest.

A run of complete lines is read in its input shape (:mod:`webhook.inputs.formats`). The
apiserver's own JSON lines go through the block scanner (:mod:`webhook.inputs.scan`): every
line's shape is checked, and only the lines a :class:`~webhook.detect.prefilter.Prefilter` lets
through (all of them with :data:`EVERY_LINE`) are decoded. The cloud shapes are decoded line by
line. The caller's ``parse`` turns each event into what it works on (an :class:`Event` for
detection, a plain object for counting), and a :class:`LineDecoder` reports every malformed
line or event once, with its line number, so all readers count junk the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Final, Generic, TypeVar

from webhook.core.audit import MAX_LINE_BYTES, MalformedEvent
from webhook.detect.prefilter import Prefilter
from webhook.inputs.formats import AuditInput, Format, decode
from webhook.inputs.longline import LongLine
from webhook.inputs.scan import Block, ScanResult, read_blocks, scan_block, scan_file

__all__ = ["EVERY_LINE", "LineDecoder"]

T = TypeVar("T")


def _every_line() -> Prefilter:
    prefilter = Prefilter()
    prefilter.all_lines = True
    return prefilter


EVERY_LINE: Final = _every_line()
"""A prefilter that lets every well-formed line through (for readers that count every request)."""


def _decode_block(
    block: Block, fmt: Format, result: ScanResult, prefilter: Prefilter, long: LongLine | None = None
) -> None:
    """Add one block's lines to ``result``: its hits (``k8s``, the lines ``prefilter`` passes) or
    its decoded events (other shapes), its malformed lines and skipped records.

    ``long``: the block is one over-long line read down to its top-level audit fields; only the
    apiserver's own shape is read that way (a cloud record wraps the event: it stays malformed).
    """
    if fmt == "k8s":
        scan_block(block, result, prefilter, long)
        return
    if long is not None:
        result.lines += 1
        result.size += long.size + 1
        result.malformed.append((result.lines, f"line longer than {MAX_LINE_BYTES} bytes"))
        return
    buf, start, end = block
    lines = buf[start:end].split(b"\n")
    lines.pop()
    for number, raw in enumerate(lines, start=result.lines + 1):
        result.lines += 1
        result.size += len(raw) + 1
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        decoded = decode(fmt, line)
        result.skipped += decoded.skipped
        result.malformed.extend((number, error) for error in decoded.errors)
        result.events.extend((number, event) for event in decoded.events)


def _decode_stream(
    stream: IO[bytes], fmt: Format, prefilter: Prefilter, *, path: str = "-", workers: int = 1
) -> Iterator[ScanResult]:
    """:func:`_decode_block` over an open log, one result per block, in order (line numbers count
    from 1 in each). ``k8s`` input of a large plain file at ``path`` is scanned by ``workers``
    processes (:func:`~webhook.inputs.scan.scan_file`)."""
    if fmt == "k8s":
        yield from scan_file(path, stream, workers=workers, prefilter=prefilter)
        return
    for block, long in read_blocks(stream):
        result = ScanResult()
        _decode_block(block, fmt, result, prefilter, long)
        yield result


class LineDecoder(Generic[T]):
    """Audit events of the lines read, parsed by ``parse``; malformed lines and events (``parse``
    raising :class:`MalformedEvent`) go to ``malformed(line number, reason)`` instead.

    Line numbers count from 1 across everything this decoder reads; :attr:`lines`, :attr:`size`
    and :attr:`skipped` count it too, and :attr:`line` is the number of the last event yielded
    (for a caller that skips it later, such as an event the Detector rejects).
    """

    def __init__(
        self, fmt: Format, parse: Callable[[AuditInput], T], malformed: Callable[[int, str], None]
    ) -> None:
        self.fmt = fmt
        self.parse = parse
        self.malformed = malformed
        self.lines = self.size = self.skipped = self.line = 0

    def _events(self, results: Iterable[ScanResult]) -> Iterator[T]:
        """The events of ``results`` (as :func:`_decode_stream` yields them), in line order."""
        parse, malformed = self.parse, self.malformed
        for result in results:
            base = self.lines
            self.lines += result.lines
            self.size += result.size
            self.skipped += result.skipped
            for number, reason in result.malformed:
                malformed(base + number, reason)
            for number, item in itertools.chain(result.hits, result.events):
                try:
                    event = parse(item)
                except MalformedEvent as exc:
                    malformed(base + number, str(exc))
                    continue
                self.line = base + number
                yield event

    def read(
        self, stream: IO[bytes], prefilter: Prefilter, *, path: str = "-", workers: int = 1
    ) -> Iterator[T]:
        """The events of an open log (see :func:`_decode_stream` for ``path`` and ``workers``)."""
        return self._events(_decode_stream(stream, self.fmt, prefilter, path=path, workers=workers))

    def lines_of(self, lines: list[bytes], prefilter: Prefilter) -> Iterator[T]:
        """The events of complete lines (without their newlines), such as a follower returns."""
        block = b"\n".join([*lines, b""])
        result = ScanResult()
        _decode_block((block, 0, len(block)), self.fmt, result, prefilter)
        return self._events((result,))
