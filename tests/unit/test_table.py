"""The terminal table: which form stdout gets, the cluster column, cells cut by display width."""

from __future__ import annotations

import io
import json

from wcwidth import wcswidth

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import JsonLinesSink
from webhook.sinks.table import TableSink, output_sink, resolve_output


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def _finding(agent: str = "python-requests/2.31.0") -> Finding:
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "a1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/secrets",
        "verb": "list",
        "user": {"username": "mallory"},
        "sourceIPs": ["10.0.0.9"],
        "userAgent": agent,
        "objectRef": {"resource": "secrets", "apiVersion": "v1"},
        "responseStatus": {"code": 403, "reason": "Forbidden"},
        "requestReceivedTimestamp": "2026-11-27T18:10:01Z",
        "stageTimestamp": "2026-11-27T18:10:01Z",
        "annotations": {"authorization.k8s.io/decision": "forbid"},
    }
    detector = Detector(Allowlist.from_yaml('agents: ["kubectl/*"]\n'))
    (finding,) = detector.process(parse_event(json.dumps(event)))
    return finding


def test_stdout_is_a_table_on_a_terminal_and_json_lines_otherwise_unless_asked() -> None:
    assert resolve_output(None, _Terminal()) == "table"
    assert resolve_output(None, io.BytesIO()) == "json"
    assert resolve_output("json", _Terminal()) == "json"
    assert resolve_output("wide", io.BytesIO()) == "wide"
    assert isinstance(output_sink(None, io.BytesIO()), JsonLinesSink)
    assert isinstance(output_sink(None, _Terminal()), TableSink)


def test_the_cluster_column_shows_the_findings_cluster_name_or_a_dash() -> None:
    plain = _finding()
    named = plain.in_cluster("eu-1\x1b[1")  # as --cluster-name stamps it
    sink = TableSink(io.BytesIO(), columns=200)
    cluster = [c.header for c in sink.columns].index("CLUSTER")
    assert sink.row(plain).decode().split()[cluster + 1] == "-"  # TIME takes two words
    assert sink.row(named).decode().split()[cluster + 1] == "eu-1\\x1b[1"


def test_every_row_is_as_wide_as_the_header_whatever_the_agent_holds() -> None:
    sink = TableSink(io.BytesIO(), columns=120)
    header = sink.header().decode().rstrip("\n")
    for agent in ["漢字" * 50, "e\u0301" * 80, "x" * 300, "\u202e" * 10]:
        row = sink.row(_finding(agent)).decode().rstrip("\n")
        assert wcswidth(row) == wcswidth(header), agent
        assert "\u202e" not in row
