"""What ``replay --report`` gathers stays bounded and adds up: agents, refusals over time, findings."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from webhook.core.allowlist import Allowlist
from webhook.core.audit import Event, parse_event
from webhook.sinks.base import JsonLinesSink
from webhook.tools import report
from webhook.tools.replay import ReplayReport
from webhook.tools.report import OTHER_AGENTS, ReportCollector, render_replay

ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*"]\ndenied: ["curl/*"]\n')
START = dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC)


def _event(agent: str, seconds: float, *, user: str = "mallory", code: int = 403) -> Event:
    when = (START + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return parse_event(
        json.dumps(
            {
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "auditID": f"id-{seconds}",
                "stage": "ResponseComplete",
                "verb": "list",
                "requestURI": "/api/v1/secrets",
                "user": {"username": user},
                "userAgent": agent,
                "objectRef": {"resource": "secrets", "apiVersion": "v1"},
                "responseStatus": {"code": code, "reason": "Forbidden" if code == 403 else ""},
                "requestReceivedTimestamp": when,
                "stageTimestamp": when,
                "annotations": {"authorization.k8s.io/decision": "forbid" if code == 403 else "allow"},
            }
        )
    )


def _collector() -> ReportCollector:
    return ReportCollector(JsonLinesSink(io.BytesIO()), ALLOWLIST)


def test_agents_are_counted_with_their_verdict_users_and_first_and_last_seen() -> None:
    collector = _collector()
    collector.observe(_event("kubectl/v1.30.0", 5, user="alice"))
    collector.observe(_event("kubectl/v1.30.0", 1, user="bob"))
    collector.observe(_event("curl/8.0", 3, code=200))
    collector.observe(_event("evil\u202e", 2))
    kubectl = collector.agents["kubectl/v1.30.0"]
    assert (kubectl.verdict, kubectl.events, kubectl.refused) == ("listed", 2, 2)
    assert set(kubectl.users) == {"alice", "bob"}
    assert (kubectl.first, kubectl.last) == (START + dt.timedelta(seconds=1), START + dt.timedelta(seconds=5))
    assert (collector.agents["curl/8.0"].verdict, collector.agents["curl/8.0"].refused) == ("denied", 0)
    assert collector.agents["evil\\u202e"].verdict == "unlisted"  # kept escaped, never raw


def test_agents_past_the_cap_share_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "MAX_AGENTS", 3)
    collector = _collector()
    for n in range(10):
        collector.observe(_event(f"scanner/{n}", n))
    assert len(collector.agents) == 4 and collector.agents[OTHER_AGENTS].events == 7


def test_the_timeline_coarsens_past_its_cell_cap_and_keeps_every_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(report, "MAX_TIMELINE_CELLS", 100)
    collector = _collector()
    for second in range(0, 3 * 3600, 7):  # three hours, two agents
        collector.observe(_event("a/1", second))
        collector.observe(_event("b/1", second + 3))
    assert len(collector.timeline) <= 100 and collector.resolution > 1
    chart = report._timeline(collector)
    assert len(chart["labels"]) <= report.TIMELINE_BARS
    totals = {series["label"]: sum(series["data"]) for series in chart["series"]}
    assert totals == {"a/1": len(range(0, 3 * 3600, 7)), "b/1": len(range(0, 3 * 3600, 7))}


def test_the_page_holds_every_section_and_escapes_markup() -> None:
    collector = _collector()
    collector.observe(_event("<b>x</b>", 1))
    page = render_replay(collector, ReplayReport(lines=1), ["a<b>.log"])
    for section in ('id="read"', 'id="by-rule"', 'id="timeline"', 'id="agents"', 'id="findings"'):
        assert section in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "a&lt;b&gt;.log" in page
    assert "\\u003cb\\u003ex\\u003c/b\\u003e" in page  # the chart's label, inside its JSON
