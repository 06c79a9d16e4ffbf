"""Read audit log files (plain, gzip or stdin) and feed them to a Detector, in order.

:mod:`webhook.inputs.scan` finds the lines that can matter; only those are decoded and validated.
Every line is still checked for shape, so junk is counted with its line number.
"""

from __future__ import annotations

import functools
import gzip
import io
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from webhook.core.audit import parse_event
from webhook.core.useragent import display
from webhook.detect.detector import Detector
from webhook.inputs.files import open_log
from webhook.inputs.formats import Format
from webhook.inputs.lines import LineDecoder
from webhook.sinks.base import ClusterSink, Sink

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
    cluster_name: str | None = None
    malformed_samples: list[MalformedLine] = field(default_factory=list)

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
        shown = [f"  {m.source}:{m.line}: {m.reason}" for m in self.malformed_samples]
        if self.malformed > len(self.malformed_samples):
            shown.append(f"  ... and {self.malformed - len(self.malformed_samples)} more")
        return "\n".join([text, *shown])


def replay(
    paths: Iterable[str],
    detector: Detector,
    sink: Sink,
    *,
    workers: int = 1,
    fmt: Format = "k8s",
    cluster_name: str | None = None,
) -> ReplayReport:
    """Feed every line of ``paths`` (in order) through ``detector``; findings go to ``sink``.

    Raises OSError when a file cannot be opened or read; malformed lines never raise. With
    ``workers`` > 1 a large plain file is scanned by that many processes (same results).
    ``fmt`` selects the input shape (:mod:`webhook.inputs.formats`); ``k8s`` is the apiserver's own.
    ``cluster_name`` stamps every finding (``orchestrator.cluster.name``) and names the summary.
    """
    report = ReplayReport(cluster_name=cluster_name or None)
    if cluster_name:
        sink = ClusterSink(sink, cluster_name)
    for path in paths:
        source = "<stdin>" if path == "-" else path
        decoder = LineDecoder(fmt, parse_event, functools.partial(report.bad, source))
        stream = open_log(path)
        try:
            plain = isinstance(stream, io.BufferedReader) and path != "-"
            events = decoder.read(stream, detector.prefilter, path=path, workers=workers if plain else 1)
            for event in events:
                for finding in detector.process(event):
                    sink.deliver(finding)
                    report.findings += 1
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise OSError(f"{source}: corrupt gzip data: {exc}") from None
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        report.lines += decoder.lines
        report.bytes += decoder.size
    for finding in detector.flush():
        sink.deliver(finding)
        report.findings += 1
    return report
