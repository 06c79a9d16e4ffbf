"""Read audit log files (plain, gzip or stdin) line by line and feed them to a Detector.

Only lines that could matter (see :func:`webhook.detect.might_matter`) are decoded and
validated; the rest are checked for shape (one JSON object per line) so junk is still counted.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from webhook.audit import MAX_LINE_BYTES, MalformedEvent, parse_event
from webhook.detect import Detector, might_matter
from webhook.findings import Sink

__all__ = ["MalformedLine", "ReplayReport", "open_log", "read_lines", "replay"]

MAX_REPORTED_MALFORMED = 20


@dataclass(frozen=True, slots=True)
class MalformedLine:
    source: str
    line: int
    reason: str


@dataclass(slots=True)
class ReplayReport:
    lines: int = 0
    bytes: int = 0
    malformed: int = 0
    findings: int = 0
    malformed_samples: list[MalformedLine] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"ua-sentinel replay: {self.lines} lines ({self.bytes} bytes) read, "
            f"{self.malformed} malformed skipped, {self.findings} findings"
        )
        shown = [f"  {m.source}:{m.line}: {m.reason}" for m in self.malformed_samples]
        if self.malformed > len(self.malformed_samples):
            shown.append(f"  ... and {self.malformed - len(self.malformed_samples)} more")
        return "\n".join([text, *shown])


def open_log(path: str) -> IO[bytes]:
    """Open ``path`` for binary reading; ``-`` is stdin; gzip is recognised by its magic bytes."""
    if path == "-":
        return sys.stdin.buffer
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Lines without their newline; an over-long line is yielded cut (and then rejected)."""
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # drain the rest of the over-long line, keeping memory bounded
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line
            continue
        yield line.rstrip(b"\r\n")


def _shape_ok(line: bytes) -> bool:
    return line[:1] == b"{" and line[-1:] == b"}"


def replay(paths: Iterable[str], detector: Detector, sink: Sink) -> ReplayReport:
    """Feed every line of ``paths`` (in order) through ``detector``; findings go to ``sink``.

    Raises OSError when a file cannot be opened or read; malformed lines never raise.
    """
    report = ReplayReport()
    samples = report.malformed_samples

    def bad(source: str, number: int, reason: str) -> None:
        report.malformed += 1
        if len(samples) < MAX_REPORTED_MALFORMED:
            samples.append(MalformedLine(source, number, reason))

    for path in paths:
        source = "<stdin>" if path == "-" else path
        stream = open_log(path)
        try:
            for number, line in enumerate(read_lines(stream), start=1):
                report.lines += 1
                report.bytes += len(line) + 1
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_BYTES:
                    bad(source, number, f"line longer than {MAX_LINE_BYTES} bytes")
                    continue
                if not might_matter(line):
                    if not _shape_ok(line):
                        bad(source, number, "not a JSON object line")
                    continue
                try:
                    event = parse_event(line)
                except MalformedEvent as exc:
                    bad(source, number, str(exc))
                    continue
                for finding in detector.process(event):
                    sink.deliver(finding)
                    report.findings += 1
        except (EOFError, gzip.BadGzipFile) as exc:
            raise OSError(f"{source}: corrupt gzip data: {exc}") from None
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    for finding in detector.flush():
        sink.deliver(finding)
        report.findings += 1
    return report
