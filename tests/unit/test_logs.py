"""webhook.logs: one structured style, so a log pipeline can filter on every value.

A record is a constant message (what happened and what follows) plus camelCase fields; the
fields reach the JSON line through :class:`JsonFormatter`.
"""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import log_records
from tests.tailer.conftest import wait_for
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.logs import JsonFormatter, fields
from webhook.sinks.outbox import Outbox, restore_findings
from webhook.sinks.spec import parse_sink

PACKAGE = Path(__file__).resolve().parents[2] / "webhook"
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


@pytest.fixture
def outbox_log() -> Iterator[io.StringIO]:
    """What webhook.sinks.outbox logs, as the JSON lines ``ua-sentinel`` writes on stderr."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("webhook.sinks.outbox")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def _findings(audit_lines: list[bytes]) -> list[Finding]:
    detector = Detector(Allowlist.from_yaml('agents: ["kubectl/*", "kube-*"]'))
    return [f for line in audit_lines for f in detector.process(parse_event(line))] + detector.flush()


class _Dead:
    def deliver(self, finding: Finding) -> None:
        raise OSError("connection refused")

    def close(self) -> None:
        return None


def test_fields_travel_in_extra() -> None:
    assert fields(sink="stdout", retryIn=0.5) == {"extra": {"fields": {"sink": "stdout", "retryIn": 0.5}}}


def test_the_outbox_drop_record_carries_its_values_as_fields(
    audit_lines: list[bytes], outbox_log: io.StringIO
) -> None:
    findings = _findings(audit_lines)
    assert len(findings) >= 6
    outbox = Outbox(parse_sink("stdout"), _Dead(), max_backlog=2)
    outbox.put(findings[:6])
    try:
        wait_for(lambda: outbox.dropped == 4, what="the first failure to apply the bound")
    finally:
        outbox.close()
    records = log_records(outbox_log.getvalue())
    drop = next(r for r in records if r["msg"] == "sink backlog over its bound; DROPPED the oldest findings")
    assert drop["level"] == "error" and drop["logger"] == "webhook.sinks.outbox"
    assert {k: drop[k] for k in ("sink", "backlogLimit", "dropped", "droppedTotal")} == {
        "sink": "stdout",
        "backlogLimit": 2,
        "dropped": 4,
        "droppedTotal": 4,
    }
    failed = next(r for r in records if r["msg"] == "sink delivery failed; retrying")
    assert failed["sink"] == "stdout" and failed["error"] == "connection refused" and failed["retryIn"] == 0.5


def test_a_saved_finding_that_no_longer_validates_is_logged_with_its_agent_escaped(
    outbox_log: io.StringIO,
) -> None:
    at = "2026-11-27T18:10:11Z"
    event = {"id": "f1", "severity": 47, "risk_score": 47, "count": 1, "start": at, "end": at, "sequence": 1}
    saved = {
        "@timestamp": at,
        "event": {**event, "outcome": "kubectl/v1.30.0 \u202e(evil)"},  # the error quotes a wrong literal
        "rule": {"name": "unusual-agent-forbidden", "description": "-"},
        "user": {"name": "mallory"},
        "user_agent": {"display": "kubectl/v1.30.0"},
        "source": {},
        "kubernetes": {},
    }
    assert restore_findings([saved]) == []
    (record,) = log_records(outbox_log.getvalue())
    assert record["msg"] == "a finding saved in the checkpoint backlog no longer validates; dropped"
    assert "$.event.outcome" in record["error"]  # where the saved finding is wrong
    assert "(evil)" in record["error"] and "\u202e" not in json.dumps(record, ensure_ascii=False)


def _logger_calls(tree: ast.AST) -> Iterator[tuple[int, str, list[ast.expr]]]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("logger", "log")
            and node.func.attr in LOG_METHODS | {"log"}
        ):
            args = node.args[1:] if node.func.attr == "log" else node.args
            yield node.lineno, node.func.value.id, args


def _built(message: ast.expr) -> bool:
    """A message put together from values: an f-string, ``%``, ``+`` or ``.format(...)``."""
    if isinstance(message, ast.JoinedStr | ast.BinOp):
        return True
    return (
        isinstance(message, ast.Call)
        and isinstance(message.func, ast.Attribute)
        and message.func.attr == "format"
    )


def test_every_log_call_is_a_constant_message_with_fields() -> None:
    """No %-args, no f-string: values go in fields; every module logger is named ``logger``.

    The message may be a name (a constant kept in a table); it is never built from values."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(), filename=name)
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and ast.unparse(node.value) == "logging.getLogger(__name__)"
                and [ast.unparse(t) for t in node.targets] != ["logger"]
            ):
                found.append(f"{name}:{node.lineno}: module logger not named `logger`")
        for line, owner, args in _logger_calls(tree):
            if owner != "logger":
                found.append(f"{name}:{line}: `{owner}.` instead of `logger.`")
            if len(args) != 1 or _built(args[0]):
                found.append(f"{name}:{line}: values in the message instead of in fields")
    assert found == []
