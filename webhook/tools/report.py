"""``replay --report`` and ``suggest --report``: one self-contained HTML file to look at.

Everything the page needs is inside it (styles, Chart.js, the data), and its Content Security
Policy allows only the scripts it was rendered with (by hash) and no network at all: an agent
that got past the escaping still could not run or fetch anything. Text from audit events is
escaped twice over: :func:`~webhook.core.useragent.display` makes control and bidi characters
visible, Jinja2's autoescape makes ``<`` and ``&`` text.

Jinja2 is the optional ``report`` extra (``pip install 'ua-sentinel[report]'``), imported only
when a report is written. Chart.js is vendored in ``webhook/data/report`` (see its README).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib.resources
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from webhook.core.allowlist import VERDICT_RANK, Allowlist
from webhook.core.audit import Event
from webhook.core.findings import Finding
from webhook.core.useragent import display
from webhook.errors import SetupError
from webhook.sinks.base import Sink
from webhook.tools.replay import ReplayReport
from webhook.tools.suggest import AgentCounts, Proposal, Survey, product_of

__all__ = ["ReportCollector", "ReportError", "render_replay", "render_suggest", "require_jinja2"]

MAX_AGENTS = 10_000
"""Agents counted one by one; the rest go to one ``(other agents)`` row (attackers can invent
agents without end, and each is kept as its escaped form, at most ``AGENT_CHARS`` long)."""
AGENT_CHARS = 200
MAX_USERS = 20
MAX_FINDINGS_LISTED = 500
MAX_TIMELINE_CELLS = 50_000
"""(agent, time bucket) counts kept; past it the buckets double in length."""
TIMELINE_AGENTS = 8
TIMELINE_BARS = 60
NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
OTHER_AGENTS = "(other agents)"
CHART_LABEL_CHARS = 40
SUGGEST_COLOURS = {"allowed": "#27ae60", "forbidden": "#c0392b", "other": "#95a5a6"}
ASSETS = "data/report"


class ReportError(SetupError):
    """The report cannot be written (Jinja2 missing); one line, exit status 1."""


def _when(stamp: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if when else "-"


@dataclass(slots=True)
class _AgentRow:
    verdict: str = "listed"
    events: int = 0
    refused: int = 0
    users: Counter[str] = field(default_factory=Counter)
    first: dt.datetime | None = None
    last: dt.datetime | None = None


class ReportCollector:
    """What ``replay --report`` shows, gathered while replay runs: a :class:`Sink` that passes
    findings on to ``inner``, and :meth:`observe` for every decoded event (``replay(observe=)``).

    Agents are judged by ``allowlist`` for the event's user, groups and namespace; an agent
    judged differently for different users shows its worst verdict.
    """

    def __init__(self, inner: Sink, allowlist: Allowlist) -> None:
        self._inner = inner
        self._allowlist = allowlist
        self.agents: dict[str, _AgentRow] = {}
        self.by_rule: Counter[tuple[str, str]] = Counter()
        self.findings: dict[str, Finding] = {}
        self.findings_total = 0
        self.first: dt.datetime | None = None
        self.last: dt.datetime | None = None
        self.resolution = 1
        self.timeline: Counter[tuple[str, int]] = Counter()

    def deliver(self, finding: Finding) -> None:
        self._inner.deliver(finding)
        if finding.event.sequence == 1:  # each id is emitted once with 1; 2 only brings totals
            self.findings_total += 1
            self.by_rule[(finding.rule.name, str(finding.ua_sentinel.get("severity", "?")))] += 1
        if finding.id in self.findings or len(self.findings) < MAX_FINDINGS_LISTED:
            self.findings[finding.id] = finding

    def close(self) -> None:
        self._inner.close()

    def observe(self, event: Event) -> None:
        when = _when(event.stage_timestamp or event.request_received_timestamp)
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
        key = display(event.user_agent, AGENT_CHARS)
        row = self.agents.get(key)
        if row is None:
            if len(self.agents) >= MAX_AGENTS:
                key = OTHER_AGENTS
            row = self.agents.setdefault(key, _AgentRow())
        user = event.effective_user
        verdict = self._allowlist.decide(
            event.user_agent, user=user.username, groups=user.groups, namespace=event.namespace
        ).verdict
        if VERDICT_RANK[verdict] > VERDICT_RANK[row.verdict] or row.events == 0:
            row.verdict = verdict
        row.events += 1
        name = display(user.username, 128) if user.username else "(no user)"
        if name in row.users or len(row.users) < MAX_USERS:
            row.users[name] += 1
        if when is not None:
            row.first = when if row.first is None else min(row.first, when)
            row.last = when if row.last is None else max(row.last, when)
        if event.forbidden_by_authorization:
            row.refused += 1
            if when is not None:
                self._count_refusal(key, when)

    def _count_refusal(self, agent: str, when: dt.datetime) -> None:
        self.timeline[(agent, int(when.timestamp()) // self.resolution)] += 1
        while len(self.timeline) > MAX_TIMELINE_CELLS:
            old, self.resolution = self.resolution, self.resolution * 2
            coarser: Counter[tuple[str, int]] = Counter()
            for (name, bucket), count in self.timeline.items():
                coarser[(name, bucket * old // self.resolution)] += count
            self.timeline = coarser


def require_jinja2() -> None:
    """Raise :class:`ReportError` now, before a long read, if the page could not be written after it."""
    _environment()


def _environment() -> Any:
    try:
        import jinja2  # the optional `report` extra, needed only here
    except ImportError:
        raise ReportError("--report needs Jinja2: pip install 'ua-sentinel[report]'") from None
    return jinja2.Environment(
        loader=jinja2.PackageLoader("webhook", ASSETS),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _asset(name: str) -> str:
    return importlib.resources.files("webhook").joinpath(f"{ASSETS}/{name}").read_text(encoding="utf-8")


def _script_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _render(template: str, **context: Any) -> str:
    """The page, with its scripts inline and allowed by hash in its Content Security Policy."""
    env = _environment()
    scripts = [_asset("chart.umd.min.js"), _asset("charts.js")]
    if any("</script" in s.lower() for s in scripts):
        raise ReportError("a bundled script holds '</script': the asset is not the vendored one")
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src {' '.join(_script_hash(s) for s in scripts)}"
    )
    rendered: str = env.get_template(template).render(
        csp=csp, scripts=scripts, style=_asset("report.css"), **context
    )
    return rendered


def _short(text: str) -> str:
    """A chart label: the table beside it holds the whole (escaped) text."""
    return text if len(text) <= CHART_LABEL_CHARS else text[: CHART_LABEL_CHARS - 1] + "…"


def _bucket_seconds(span: float, resolution: int) -> int:
    for size in NICE_BUCKETS:
        if size >= resolution and span / size <= TIMELINE_BARS:
            return size
    return max(resolution, int(span // TIMELINE_BARS) + 1)


def _timeline(collector: ReportCollector) -> dict[str, Any]:
    """Stacked bars: refusals per time bucket, one series per agent (the most refused few)."""
    if not collector.timeline:
        return {"labels": [], "series": [], "bucket": 0}
    stamps = [bucket * collector.resolution for _, bucket in collector.timeline]
    start, end = min(stamps), max(stamps) + collector.resolution
    size = _bucket_seconds(end - start, collector.resolution)
    start -= start % size
    bars = (end - start + size - 1) // size
    totals: Counter[str] = Counter()
    for (agent, _), count in collector.timeline.items():
        totals[agent] += count
    top = [agent for agent, _ in totals.most_common(TIMELINE_AGENTS)]
    series: dict[str, list[int]] = {agent: [0] * bars for agent in top}
    for (agent, bucket), count in collector.timeline.items():
        name = agent if agent in series else OTHER_AGENTS
        values = series.setdefault(name, [0] * bars)
        values[(bucket * collector.resolution - start) // size] += count
    fmt = "%H:%M:%S" if end - start < 86_400 else "%m-%d %H:%M"
    labels = [dt.datetime.fromtimestamp(start + i * size, dt.UTC).strftime(fmt) for i in range(bars)]
    return {
        "labels": labels,
        "series": [{"label": _short(name), "data": values} for name, values in series.items()],
        "bucket": size,
    }


def _finding_row(finding: Finding) -> dict[str, Any]:
    aggregate = finding.ua_sentinel.get("aggregate") or {}
    return {
        "time": finding.event.start[:19].replace("T", " "),
        "rule": finding.rule.name,
        "severity": str(finding.ua_sentinel.get("severity", "?")),
        "user": display(finding.user.name, 128),
        "agent": finding.user_agent.display,
        "verbs": ", ".join(display(str(v), 32) for v in aggregate.get("verbs", [])),
        "resources": ", ".join(display(str(r), 64) for r in aggregate.get("resources", [])),
        "count": finding.event.count,
        "source": display(finding.source.ip or "-", 64),
        "id": finding.id,
    }


def render_replay(collector: ReportCollector, report: ReplayReport, files: Iterable[str]) -> str:
    """The ``replay --report`` page."""
    severities = ["critical", "high", "medium", "low"]
    rules = sorted({rule for rule, _ in collector.by_rule})
    agents = sorted(collector.agents.items(), key=lambda item: (-item[1].refused, -item[1].events))
    verdicts: Counter[str] = Counter(row.verdict for _, row in agents)
    return _render(
        "replay.html.j2",
        title="ua-sentinel replay",
        generated=_iso(dt.datetime.now(dt.UTC)),
        files=[display(name, 300) for name in files],
        report=report,
        first=_iso(collector.first),
        last=_iso(collector.last),
        severities=severities,
        by_rule=[(rule, [collector.by_rule[(rule, s)] for s in severities]) for rule in rules],
        findings_total=collector.findings_total,
        findings=[_finding_row(f) for f in collector.findings.values()],
        findings_cut=collector.findings_total > len(collector.findings),
        verdicts=verdicts,
        agents=[
            {
                "agent": agent,
                "verdict": row.verdict,
                "events": row.events,
                "refused": row.refused,
                "users": ", ".join(u for u, _ in row.users.most_common(5)),
                "more_users": max(len(row.users) - 5, 0),
                "first": _iso(row.first),
                "last": _iso(row.last),
            }
            for agent, row in agents
        ],
        charts=[{"id": "timeline", "kind": "timeline", **_timeline(collector)}],
    )


def render_suggest(
    survey: Survey,
    agents: dict[str | None, AgentCounts],
    proposal: Proposal,
    allowlist: Allowlist,
    proposed_yaml: str,
) -> str:
    """The ``suggest --report`` page: what is proposed, why the rest is not, every agent counted."""
    products: dict[str, list[tuple[str | None, AgentCounts]]] = {}
    for agent, counts in agents.items():
        products.setdefault(product_of(agent), []).append((agent, counts))
    order = sorted(products, key=lambda p: -sum(c.requests for _, c in products[p]))
    rows = []
    for product in order:
        members = sorted(products[product], key=lambda item: -item[1].requests)
        rows.append(
            {
                "product": display(product, 80),
                "note": proposal.notes.get(product, ""),
                "proposed": proposal.notes.get(product, "").startswith("proposed"),
                "requests": sum(c.requests for _, c in members),
                "allowed": sum(c.allowed for _, c in members),
                "forbidden": sum(c.forbidden for _, c in members),
                "other": sum(c.other for _, c in members),
                "agents": [
                    {
                        "agent": display(agent, AGENT_CHARS),
                        "verdict": allowlist.decide(agent).verdict if agent else "unlisted",
                        "requests": counts.requests,
                        "allowed": counts.allowed,
                        "forbidden": counts.forbidden,
                        "other": counts.other,
                        "users": ", ".join(display(u, 60) for u, _ in counts.users.most_common(5)),
                        "more_users": max(len(counts.users) - 5, 0),
                    }
                    for agent, counts in members[:50]
                ],
                "more_agents": max(len(members) - 50, 0),
            }
        )
    shown = rows[:20]
    chart = {
        "id": "products",
        "kind": "products",
        "labels": [_short(display(product, 200)) for product in order[: len(shown)]],
        "series": [
            {"label": kind, "data": [row[kind] for row in shown], "color": colour}
            for kind, colour in SUGGEST_COLOURS.items()
        ],
    }
    return _render(
        "suggest.html.j2",
        title="ua-sentinel suggest",
        generated=_iso(dt.datetime.now(dt.UTC)),
        survey=survey,
        first=_iso(dt.datetime.fromtimestamp(survey.oldest, dt.UTC)) if survey.newest else "-",
        last=_iso(dt.datetime.fromtimestamp(survey.newest, dt.UTC)) if survey.newest else "-",
        requests=sum(c.requests for c in agents.values()),
        agent_count=len(agents),
        entries=[
            {
                "glob": display(str(e.get("glob", "")), 120),
                "users": ", ".join(display(str(u), 80) for u in e.get("users", [])),
                "reason": display(str(e.get("reason", "")), 200),
            }
            for e in proposal.entries
        ],
        products=rows,
        proposed_yaml=proposed_yaml,
        charts=[chart],
    )
