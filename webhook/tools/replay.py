"""Read audit log files (plain, gzip or stdin) and feed them to a Detector, in order.

:mod:`webhook.inputs.scan` finds the lines that can matter; only those are decoded and validated.
Every line is still checked for shape, so junk is counted with its line number.
"""

from __future__ import annotations

import functools
import io
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from webhook.core.audit import Event, parse_event
from webhook.core.useragent import display
from webhook.detect.detector import Detector
from webhook.inputs.files import READ_ERRORS, open_log
from webhook.inputs.formats import Format
from webhook.inputs.lines import LineDecoder
from webhook.sinks.base import ClusterSink, Sink

__all__ = ["MalformedLine", "Progress", "ReplayReport", "replay"]

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
    cluster_name: str | None = None
    malformed_samples: list[MalformedLine] = field(default_factory=list)
    cut_short: list[MalformedLine] = field(default_factory=list)
    """Files whose data broke off (a truncated or corrupt .gz): read up to there, the rest skipped."""

    def bad(self, source: str, line: int, reason: str) -> None:
        """Count a malformed line (``line`` counts from 1 in ``source``); the first few are kept."""
        self.malformed += 1
        if len(self.malformed_samples) < MAX_REPORTED_MALFORMED:
            self.malformed_samples.append(MalformedLine(source, line, reason))

    def summary(self) -> str:
        cluster = f" in cluster {display(self.cluster_name)}" if self.cluster_name else ""
        text = (
            f"ua-sentinel replay{cluster}: {self.lines} lines ({self.bytes} bytes) read, "
            f"{self.malformed} malformed skipped, {self.findings} findings"
        )
        if self.cut_short:
            text += f", {len(self.cut_short)} files cut short"
        # A reason quotes the line (pydantic's error location is a key the line chose: an
        # annotation key holding ESC]0;...BEL would retitle the terminal); both are escaped.
        shown = [
            f"  {display(m.source, 1024)}:{m.line}: {display(m.reason, 300)}"
            for m in [*self.cut_short, *self.malformed_samples]
        ]
        if self.malformed > len(self.malformed_samples):
            shown.append(f"  ... and {self.malformed - len(self.malformed_samples)} more")
        return "\n".join([text, *shown])


class Progress:
    """One status line on a terminal (files, MB read, MB/s, findings so far), redrawn at most
    every ``interval`` seconds and at each new file, erased by :meth:`clear`.

    Replay calls :meth:`update` per decoded event and per file; bytes are counted per block read,
    so a long stretch with nothing to decode shows as one step.
    """

    def __init__(self, stream: TextIO, files: int, *, interval: float = 0.25) -> None:
        self._stream = stream
        self._files = files
        self._interval = interval
        self._started = time.monotonic()
        self._last = float("-inf")
        self._drawn = False

    def update(self, file: int, size: int, findings: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        mb = size / 1e6
        rate = mb / max(now - self._started, 1e-6)
        self._stream.write(
            f"\r\x1b[Kreplay: file {file}/{self._files}, {mb:.1f} MB read, {rate:.1f} MB/s, "
            f"{findings} findings"
        )
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line: before a finding is printed (stdout may be the same terminal) and
        before the summary. The next :meth:`update` draws it again."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _until_broken(events: Iterator[Event], broken: Callable[[Exception], None]) -> Iterator[Event]:
    """``events`` until reading the file fails (``broken`` is told; the caller goes on)."""
    try:
        yield from events
    except READ_ERRORS as exc:
        broken(exc)


def replay(
    paths: Iterable[str],
    detector: Detector,
    sink: Sink,
    *,
    workers: int = 1,
    fmt: Format = "k8s",
    progress: Progress | None = None,
    observe: Callable[[Event], None] | None = None,
    cluster_name: str | None = None,
) -> ReplayReport:
    """Feed every line of ``paths`` (in order) through ``detector``; findings go to ``sink``.

    Raises OSError when a file cannot be opened; malformed lines never raise, nor does data that
    breaks off (a truncated .gz): that file is counted in ``cut_short`` and the next is read. With
    ``workers`` > 1 a large plain file is scanned by that many processes (same results).
    ``fmt`` selects the input shape (:mod:`webhook.inputs.formats`); ``k8s`` is the apiserver's own.
    ``progress`` is told how far the reading got; ``observe`` sees every decoded event before the
    detector does (the HTML report counts refusals per agent with it).
    ``cluster_name`` stamps every finding (``orchestrator.cluster.name``) and names the summary.
    """
    report = ReplayReport(cluster_name=cluster_name or None)
    if cluster_name:
        sink = ClusterSink(sink, cluster_name)
    for number, path in enumerate(paths, start=1):
        source = "<stdin>" if path == "-" else path
        decoder = LineDecoder(fmt, parse_event, functools.partial(report.bad, source))
        if progress is not None:
            progress.update(number, report.bytes, report.findings, force=True)

        def broken(exc: Exception, source: str = source, decoder: LineDecoder[Event] = decoder) -> None:
            reason = f"data breaks off, rest of the file skipped: {exc}"
            report.cut_short.append(MalformedLine(source, decoder.lines + 1, reason))

        stream = open_log(path)
        try:
            plain = isinstance(stream, io.BufferedReader) and path != "-"
            events = decoder.read(stream, detector.prefilter, path=path, workers=workers if plain else 1)
            for event in _until_broken(events, broken):
                if observe is not None:
                    observe(event)
                found = detector.process(event)
                if detector.last_rejection is not None:
                    report.bad(source, decoder.line, f"event skipped: {detector.last_rejection}")
                for finding in found:
                    if progress is not None:
                        progress.clear()
                    sink.deliver(finding)
                    report.findings += 1
                if progress is not None:
                    progress.update(number, report.bytes + decoder.size, report.findings)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        report.lines += decoder.lines
        report.bytes += decoder.size
    if progress is not None:
        progress.clear()
    for finding in detector.flush():
        sink.deliver(finding)
        report.findings += 1
    return report
