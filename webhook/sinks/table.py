"""Findings for people at a terminal: one row per finding in fixed columns, and the choice
between that table and JSON lines (``-o json|table|wide``; by default a table on a terminal,
JSON lines otherwise, as kubectl does).

Every cell that comes from an audit event is escaped with :func:`~webhook.core.useragent.display`
(the agent arrives escaped in ``user_agent.display``), then cut to its column's width on screen
(``wcwidth``: a CJK character takes two columns, a combining mark none) with an ellipsis.
``wcwidth`` is imported when a cell is measured: JSON lines (``replay | jq``) do not load it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Literal, get_args

from webhook.core.findings import Finding
from webhook.core.useragent import display
from webhook.sinks.base import JsonLinesSink, Sink

__all__ = ["OUTPUT_FORMATS", "Column", "OutputFormat", "TableSink", "output_sink", "resolve_output"]

OutputFormat = Literal["json", "table", "wide"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
ELLIPSIS = "…"
GAP = "  "
AGENT_MIN, AGENT_MAX, AGENT_WIDE = 24, 60, 80


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    width: int
    cell: Callable[[Finding], str]
    right: bool = False


def _cluster(finding: Finding) -> str:
    """``orchestrator.cluster.name`` (ECS) when the finding carries one, else ``-``."""
    doc: dict[str, Any] = finding.to_dict()
    orchestrator = doc.get("orchestrator")
    cluster = orchestrator.get("cluster") if isinstance(orchestrator, dict) else None
    name = cluster.get("name") if isinstance(cluster, dict) else None
    return display(name, 128) if isinstance(name, str) and name else "-"


def _time(finding: Finding) -> str:
    """First seen, to the second: ``2026-11-27 18:10:45``."""
    return finding.event.start[:19].replace("T", " ")


def _aggregate(finding: Finding) -> dict[str, Any]:
    aggregate = finding.ua_sentinel.get("aggregate")
    return aggregate if isinstance(aggregate, dict) else {}


def _verbs_resources(finding: Finding) -> str:
    aggregate = _aggregate(finding)
    verbs = ",".join(display(str(v), 32) for v in aggregate.get("verbs", []))
    resources = ",".join(display(str(r), 64) for r in aggregate.get("resources", []))
    return f"{verbs or '-'} {resources or '-'}"


def _columns(*, wide: bool, agent_width: int) -> list[Column]:
    columns = [
        Column("TIME", 19, _time),
        Column("RULE", 23, lambda f: display(f.rule.name, 64)),
        Column("SEVERITY", 8, lambda f: display(str(f.ua_sentinel.get("severity", "?")), 16)),
        Column("CLUSTER", 12, _cluster),
        Column("USER", 16, lambda f: display(f.user.name, 128)),
        Column("AGENT", agent_width, lambda f: f.user_agent.display),
        Column("VERBS/RESOURCES", 24 if not wide else 40, _verbs_resources),
        Column("COUNT", 5, lambda f: str(f.event.count), right=True),
    ]
    if wide:
        verdict = lambda f: display(str(f.ua_sentinel.get("verdict", {}).get("verdict", "?")), 16)  # noqa: E731
        columns += [
            Column("VERDICT", 8, verdict),
            Column("SOURCE", 15, lambda f: display(f.source.ip or "-", 64)),
            Column("FINDING", 32, lambda f: display(f.event.id, 64)),
            Column("SEQ", 3, lambda f: str(f.event.sequence), right=True),
        ]
    return columns


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal (escaped text has no control characters; any the
    table cannot measure count as one column)."""
    from wcwidth import wcswidth, wcwidth

    width = wcswidth(text)
    return width if width >= 0 else sum(max(wcwidth(ch), 1) for ch in text)


def _fit(text: str, width: int, *, right: bool = False) -> str:
    """``text`` cut to ``width`` columns with an ellipsis, then padded to exactly ``width``."""
    from wcwidth import wcwidth

    if _width(text) > width:
        kept: list[str] = []
        used = 0
        for ch in text:
            size = max(wcwidth(ch), 0)
            if used + size > width - 1:
                break
            kept.append(ch)
            used += size
        text = "".join(kept) + ELLIPSIS
    pad = " " * max(width - _width(text), 0)
    return pad + text if right else text + pad


def _terminal_columns(stream: IO[bytes]) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


class TableSink:
    """Rows under a header printed before the first finding, flushed per finding.

    ``table``: time, rule, severity, cluster, user, agent, verbs and resources, count; the agent
    column takes what a terminal of ``columns`` width leaves (within bounds). ``wide`` adds the
    verdict, the source IP, the finding id and its sequence (2 = the window's totals).
    """

    def __init__(
        self, stream: IO[bytes] | None = None, *, wide: bool = False, columns: int | None = None
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._lock = threading.Lock()
        self._header_written = False
        agent = AGENT_WIDE
        if not wide:
            others = sum(c.width for c in _columns(wide=False, agent_width=0)) + len(GAP) * 7
            room = (columns if columns is not None else _terminal_columns(self._stream) or 0) - others
            agent = min(max(room, AGENT_MIN), AGENT_MAX)
        self.columns = _columns(wide=wide, agent_width=agent)

    def _row(self, cells: list[str]) -> bytes:
        fitted = [_fit(text, c.width, right=c.right) for text, c in zip(cells, self.columns, strict=True)]
        return (GAP.join(fitted).rstrip() + "\n").encode("utf-8", "backslashreplace")

    def header(self) -> bytes:
        return self._row([c.header for c in self.columns])

    def row(self, finding: Finding) -> bytes:
        return self._row([c.cell(finding) for c in self.columns])

    def deliver(self, finding: Finding) -> None:
        line = self.row(finding)
        with self._lock:
            if not self._header_written:
                self._stream.write(self.header())
                self._header_written = True
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.flush()


def resolve_output(requested: OutputFormat | None, stream: IO[bytes]) -> OutputFormat:
    """``requested``, or by default ``table`` when ``stream`` is a terminal and ``json`` when not."""
    if requested is not None:
        return requested
    try:
        return "table" if stream.isatty() else "json"
    except (ValueError, AttributeError):
        return "json"


def output_sink(requested: OutputFormat | None = None, stream: IO[bytes] | None = None) -> Sink:
    """The sink for findings on stdout (or ``stream``): a table or JSON lines (:func:`resolve_output`)."""
    out = stream if stream is not None else sys.stdout.buffer
    chosen = resolve_output(requested, out)
    return JsonLinesSink(out) if chosen == "json" else TableSink(out, wide=chosen == "wide")
