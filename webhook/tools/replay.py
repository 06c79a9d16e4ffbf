"""Read audit log files (plain, gzip or stdin) and feed them to a Detector, in order.

:mod:`webhook.inputs.scan` finds the lines that can matter; only those are decoded and validated.
Every line is still checked for shape, so junk is counted with its line number.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from webhook.core.audit import MalformedEvent, parse_event
from webhook.core.findings import Sink
from webhook.detect.detector import Detector
from webhook.inputs.files import open_log
from webhook.inputs.formats import Format, decode
from webhook.inputs.scan import ScanResult, read_blocks, scan_file

__all__ = ["MalformedLine", "ReplayReport", "replay"]

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


def _decode_lines(stream: IO[bytes], fmt: Format) -> Iterator[ScanResult]:
    """Other input shapes (:mod:`webhook.inputs.formats`): every line is decoded, no fast path."""
    for buf, start, end in read_blocks(stream):
        result = ScanResult()
        for number, line in enumerate(buf[start:end].split(b"\n")[:-1], start=1):
            result.lines += 1
            result.size += len(line) + 1
            if not line.strip():
                continue
            decoded = decode(fmt, line)
            result.malformed.extend((number, error) for error in decoded.errors)
            result.events.extend((number, event) for event in decoded.events)
        yield result


def replay(
    paths: Iterable[str], detector: Detector, sink: Sink, *, workers: int = 1, fmt: Format = "k8s"
) -> ReplayReport:
    """Feed every line of ``paths`` (in order) through ``detector``; findings go to ``sink``.

    Raises OSError when a file cannot be opened or read; malformed lines never raise. With
    ``workers`` > 1 a large plain file is scanned by that many processes (same results).
    ``fmt`` selects the input shape (:mod:`webhook.inputs.formats`); ``k8s`` is the apiserver's own.
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
            plain = isinstance(stream, io.BufferedReader) and path != "-"
            results = (
                scan_file(path, stream, workers=workers if plain else 1, prefilter=detector.prefilter)
                if fmt == "k8s"
                else _decode_lines(stream, fmt)
            )
            for result in results:
                base = report.lines
                report.lines += result.lines
                report.bytes += result.size
                for number, reason in result.malformed:
                    bad(source, base + number, reason)
                items: list[tuple[int, bytes | dict[str, Any]]] = [*result.hits, *result.events]
                for number, line in items:
                    try:
                        event = parse_event(line)
                    except MalformedEvent as exc:
                        bad(source, base + number, str(exc))
                        continue
                    for finding in detector.process(event):
                        sink.deliver(finding)
                        report.findings += 1
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise OSError(f"{source}: corrupt gzip data: {exc}") from None
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    for finding in detector.flush():
        sink.deliver(finding)
        report.findings += 1
    return report
