"""Read audit log files (plain, gzip or stdin) and feed them to a Detector, in order.

:mod:`webhook.inputs.scan` finds the lines that can matter; only those are decoded and validated.
Every line is still checked for shape, so junk is counted with its line number.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from webhook.core.audit import Event, parse_event
from webhook.detect.detector import Detector
from webhook.inputs.files import READ_ERRORS, open_log
from webhook.inputs.formats import Format
from webhook.inputs.lines import LineDecoder
from webhook.sinks.base import Sink

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
    cut_short: list[MalformedLine] = field(default_factory=list)
    """Files whose data broke off (a truncated or corrupt .gz): read up to there, the rest skipped."""

    def bad(self, source: str, line: int, reason: str) -> None:
        """Count a malformed line (``line`` counts from 1 in ``source``); the first few are kept."""
        self.malformed += 1
        if len(self.malformed_samples) < MAX_REPORTED_MALFORMED:
            self.malformed_samples.append(MalformedLine(source, line, reason))

    def summary(self) -> str:
        text = (
            f"ua-sentinel replay: {self.lines} lines ({self.bytes} bytes) read, "
            f"{self.malformed} malformed skipped, {self.findings} findings"
        )
        if self.cut_short:
            text += f", {len(self.cut_short)} files cut short"
        shown = [f"  {m.source}:{m.line}: {m.reason}" for m in [*self.cut_short, *self.malformed_samples]]
        if self.malformed > len(self.malformed_samples):
            shown.append(f"  ... and {self.malformed - len(self.malformed_samples)} more")
        return "\n".join([text, *shown])


def _until_broken(events: Iterator[Event], broken: Callable[[Exception], None]) -> Iterator[Event]:
    """``events`` until reading the file fails (``broken`` is told; the caller goes on)."""
    try:
        yield from events
    except READ_ERRORS as exc:
        broken(exc)


def replay(
    paths: Iterable[str], detector: Detector, sink: Sink, *, workers: int = 1, fmt: Format = "k8s"
) -> ReplayReport:
    """Feed every line of ``paths`` (in order) through ``detector``; findings go to ``sink``.

    Raises OSError when a file cannot be opened; malformed lines never raise, nor does data that
    breaks off (a truncated .gz): that file is counted in ``cut_short`` and the next is read. With
    ``workers`` > 1 a large plain file is scanned by that many processes (same results).
    ``fmt`` selects the input shape (:mod:`webhook.inputs.formats`); ``k8s`` is the apiserver's own.
    """
    report = ReplayReport()
    for path in paths:
        source = "<stdin>" if path == "-" else path
        decoder = LineDecoder(fmt, parse_event, functools.partial(report.bad, source))

        def broken(exc: Exception, source: str = source, decoder: LineDecoder[Event] = decoder) -> None:
            reason = f"data breaks off, rest of the file skipped: {exc}"
            report.cut_short.append(MalformedLine(source, decoder.lines + 1, reason))

        stream = open_log(path)
        try:
            plain = isinstance(stream, io.BufferedReader) and path != "-"
            events = decoder.read(stream, detector.prefilter, path=path, workers=workers if plain else 1)
            for event in _until_broken(events, broken):
                found = detector.process(event)
                if detector.last_rejection is not None:
                    report.bad(source, decoder.line, f"event skipped: {detector.last_rejection}")
                for finding in found:
                    sink.deliver(finding)
                    report.findings += 1
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        report.lines += decoder.lines
        report.bytes += decoder.size
    for finding in detector.flush():
        sink.deliver(finding)
        report.findings += 1
    return report
