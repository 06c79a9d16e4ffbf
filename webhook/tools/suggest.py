"""``ua-sentinel suggest``: what talks to the API server, and an allowlist that fits it.

For tuning before turning the webhook on. Every agent in the audit logs is counted (completed
requests only: one per request), grouped by product (the first product token, lower-cased),
with its users and its allowed / forbidden / other-error counts. The proposal lists a product
(``<product>/*``) when it is *common* (at least ``min_requests`` requests) and *benign*: never
refused more than ``max_forbidden_share`` of the time, a well-formed agent without control or
bidi characters, and matched by no ``denied:`` entry (the given allowlist's and the built-in
list's): known-bad agents are never proposed. A product used only by a few service accounts is
scoped to them (``users:``). The proposal keeps the given allowlist's ``denied:`` section.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import yaml

from webhook.core import useragent
from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.audit import DECISION_ANNOTATION, audit_object, forbidden_by_authorization
from webhook.inputs.formats import Format
from webhook.inputs.lines import EVERY_LINE, LineDecoder

__all__ = [
    "AgentCounts",
    "Proposal",
    "Survey",
    "product_of",
    "propose",
    "render_report",
    "render_yaml",
    "survey",
]

DAY = 86_400.0
MAX_USERS_SHOWN = 5
SCOPE_MAX_USERS = 3


@dataclass(slots=True)
class AgentCounts:
    requests: int = 0
    allowed: int = 0
    forbidden: int = 0
    other: int = 0
    users: Counter[str] = field(default_factory=Counter)

    def add(self, other: AgentCounts) -> None:
        self.requests += other.requests
        self.allowed += other.allowed
        self.forbidden += other.forbidden
        self.other += other.other
        self.users.update(other.users)


@dataclass(slots=True)
class Survey:
    """Counts per agent and UTC day (so ``--days`` can cut by the newest event)."""

    lines: int = 0
    malformed: int = 0
    by_day: dict[tuple[str | None, int], AgentCounts] = field(
        default_factory=lambda: defaultdict(AgentCounts)
    )
    newest: float = 0.0
    oldest: float = float("inf")

    def agents(self, days: int | None = None) -> dict[str | None, AgentCounts]:
        cutoff = int((self.newest - days * DAY) // DAY) if days else None
        out: dict[str | None, AgentCounts] = defaultdict(AgentCounts)
        for (agent, day), counts in self.by_day.items():
            if cutoff is None or day > cutoff:
                out[agent].add(counts)
        return dict(out)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def survey(streams: Iterable[IO[bytes]], fmt: Format = "k8s") -> Survey:
    """Count completed requests per agent and day in the given (open, binary) logs."""
    result = Survey()

    def malformed(_line: int, _reason: str) -> None:
        result.malformed += 1

    decoder = LineDecoder(fmt, audit_object, malformed)
    for stream in streams:
        for doc in decoder.read(stream, EVERY_LINE):
            if doc.get("stage") != "ResponseComplete":
                continue
            stamp = str(doc.get("stageTimestamp") or doc.get("requestReceivedTimestamp") or "")
            try:
                when = dt.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                result.malformed += 1
                continue
            result.newest = max(result.newest, when)
            result.oldest = min(result.oldest, when)
            agent = doc.get("userAgent")
            counts = result.by_day[(agent if isinstance(agent, str) and agent else None, int(when // DAY))]
            status = _obj(doc.get("responseStatus"))
            raw_code = status.get("code")
            code = raw_code if isinstance(raw_code, int) else 0
            counts.requests += 1
            if forbidden_by_authorization(
                stage=doc["stage"],
                code=code,
                decision=_obj(doc.get("annotations")).get(DECISION_ANNOTATION),
                reason=status.get("reason"),
            ):
                counts.forbidden += 1
            elif 0 < code < 400:
                counts.allowed += 1
            else:
                counts.other += 1
            user = _obj(doc.get("user"))
            counts.users[str(user.get("username", ""))] += 1
    result.lines = decoder.lines
    return result


def product_of(agent: str | None) -> str:
    if agent is None:
        return "(no agent)"
    primary = useragent.parse(agent).primary
    return primary.name.lower() if primary is not None else "(unparseable)"


@dataclass(slots=True)
class Proposal:
    entries: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    """Per product: why it is or is not proposed."""


def propose(
    agents: dict[str | None, AgentCounts],
    allowlist: Allowlist,
    *,
    min_requests: int = 20,
    max_forbidden_share: float = 0.25,
) -> Proposal:
    """Entries for products that are common and benign (see the module docstring)."""
    builtin = default_allowlist()
    grouped: dict[str, dict[str | None, AgentCounts]] = defaultdict(dict)
    for agent, counts in agents.items():
        grouped[product_of(agent)][agent] = counts
    proposal = Proposal()
    for product in sorted(grouped):
        members = grouped[product]
        total = AgentCounts()
        for agent, counts in members.items():
            if _clean(agent):
                total.add(counts)
        unclean = sum(1 for agent in members if not _clean(agent))
        skipped = f"; {unclean} spoofed/malformed agent(s) left out (never listed)" if unclean else ""
        why = _refusal(product, members, total, allowlist, builtin, min_requests, max_forbidden_share)
        if why:
            proposal.notes[product] = why + skipped
            continue
        entry: dict[str, Any] = {"glob": f"{product}/*"}
        users = sorted(u for u in total.users if u)
        if (
            users
            and len(users) <= SCOPE_MAX_USERS
            and all(u.startswith("system:serviceaccount:") for u in users)
        ):
            entry["users"] = users
        entry["reason"] = (
            f"suggested: {total.requests} requests, {len(users)} user(s), {total.forbidden} forbidden"
        )
        proposal.entries.append(entry)
        scoped = " (scoped to its service accounts)" if "users" in entry else ""
        proposal.notes[product] = "proposed" + scoped + skipped
    return proposal


def _clean(agent: str | None) -> bool:
    """Could an allowlist ever list this agent? (It never lists spoofed or cut agents.)"""
    if agent is None or useragent.has_unsafe_chars(agent):
        return False
    parsed = useragent.parse(agent)
    return parsed.well_formed and not parsed.truncated


def _refusal(
    product: str,
    members: dict[str | None, AgentCounts],
    total: AgentCounts,
    allowlist: Allowlist,
    builtin: Allowlist,
    min_requests: int,
    max_forbidden_share: float,
) -> str | None:
    if product.startswith("(") or "*" in product or "?" in product:
        return "never proposed: no usable product token"
    for agent in members:
        for source in (allowlist, builtin):
            decision = source.decide(agent, user=None)
            if decision.verdict == "denied":
                return f"never proposed: known-bad ({decision.entry} of {source.source})"
    if total.requests < min_requests:
        return f"not common: {total.requests} requests (< {min_requests})"
    if total.forbidden > max_forbidden_share * total.requests:
        return f"not benign: {total.forbidden} of {total.requests} requests forbidden"
    return None


def render_report(
    survey: Survey, agents: dict[str | None, AgentCounts], proposal: Proposal, allowlist: Allowlist
) -> str:
    """Human-readable report; agents are shown escaped (``useragent.display``)."""
    grouped: dict[str, list[tuple[str | None, AgentCounts]]] = defaultdict(list)
    for agent, counts in agents.items():
        grouped[product_of(agent)].append((agent, counts))
    span = ""
    if survey.newest:
        first = dt.datetime.fromtimestamp(survey.oldest, dt.UTC).isoformat(timespec="seconds")
        last = dt.datetime.fromtimestamp(survey.newest, dt.UTC).isoformat(timespec="seconds")
        span = f", events {first} .. {last}"
    lines = [
        f"ua-sentinel suggest: {survey.lines} lines, {sum(c.requests for c in agents.values())} requests, "
        f"{len(agents)} agents in {len(grouped)} products, {survey.malformed} malformed{span}",
        "",
    ]
    order = sorted(grouped, key=lambda p: -sum(c.requests for _, c in grouped[p]))
    for product in order:
        members = sorted(grouped[product], key=lambda item: -item[1].requests)
        requests = sum(c.requests for _, c in members)
        lines.append(
            f"{useragent.display(product, 80)}: {requests} requests - {proposal.notes.get(product, '')}"
        )
        for agent, counts in members:
            verdict = allowlist.decide(agent).verdict if agent else "unlisted"
            users = ", ".join(useragent.display(u, 60) for u, _ in counts.users.most_common(MAX_USERS_SHOWN))
            more = len(counts.users) - MAX_USERS_SHOWN
            lines.append(
                f'  "{useragent.display(agent, 120)}" [{verdict}] requests={counts.requests} '
                f"allowed={counts.allowed} forbidden={counts.forbidden} other={counts.other} "
                f"users={len(counts.users)} ({users}{f', +{more}' if more > 0 else ''})"
            )
    return "\n".join(lines)


def render_yaml(proposal: Proposal, allowlist: Allowlist) -> str:
    """The proposed allowlist.yaml: the proposed ``agents:`` and the given ``denied:``."""
    denied = [c.entry.item() for c in allowlist.denied]
    doc = {"agents": proposal.entries, "denied": denied}
    header = (
        "# Proposed by `ua-sentinel suggest` from your audit logs: review every entry before use.\n"
        "# Products refused often, known-bad or malformed agents are never proposed.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=100)
