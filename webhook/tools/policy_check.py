"""What an audit policy hides from ua-sentinel, rule by rule (``apiserver-config --check-policy``).

Two kinds of blindness, named as the security team will read them:

- **detection**: a request recorded without ``ResponseComplete`` at Metadata or above (level
  ``None``, ``ResponseComplete`` omitted, or no rule matching) can be refused without a finding;
- **join**: a write or CONNECT recorded without ``RequestReceived`` gets no user agent at
  admission: no kubectl warning, no ``enforce``, verdict ``unknown``.

Each blind spot names the rule (``rules[i]``, as in the file) and the users, groups, verbs,
namespaces, resources or non-resource URLs it covers. The report is static: a rule shadowed by
an earlier one is still listed, except that writes or CONNECTs an earlier rule visibly takes
(the same fields or wider, as ``merge`` adds them) are not counted against a later rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from webhook.core.useragent import display
from webhook.tools.audit_policy import Policy, Rule
from webhook.tools.policy_merge import admitted_parts

__all__ = ["BlindSpot", "check", "describe", "report"]

Blindness = Literal["detection", "join"]


@dataclass(frozen=True, slots=True)
class BlindSpot:
    where: str  # rules[i], or "no rule matched"
    kind: Blindness
    text: str


def _names(values: tuple[str, ...]) -> str:
    return ", ".join(display(v, 80) for v in values)


def describe(rule: Rule) -> str:
    """Who and what ``rule`` matches, in words (every field it sets; 'every request' when none)."""
    parts: list[str] = []
    if rule.users:
        parts.append(f"users {_names(rule.users)}")
    if rule.user_groups:
        parts.append(f"groups {_names(rule.user_groups)}")
    if rule.verbs:
        parts.append(f"verbs {_names(rule.verbs)}")
    if rule.namespaces:
        parts.append(f"namespaces {_names(tuple(n or '(cluster-scoped)' for n in rule.namespaces))}")
    for gr in rule.resources:
        group = display(gr.group, 80) if gr.group else "core"
        what = _names(gr.resources) if gr.resources else "every resource"
        named = f" named {_names(gr.resource_names)}" if gr.resource_names and gr.resources else ""
        parts.append(f"{what}{named} ({group} group)")
    if rule.non_resource_urls:
        parts.append(f"non-resource URLs {_names(rule.non_resource_urls)}")
    return "; ".join(parts) or "every request"


def _rule_spots(where: str, rule: Rule, earlier: list[Rule]) -> list[BlindSpot]:
    what = describe(rule)
    spots: list[BlindSpot] = []
    admits = any(admitted_parts(rule, earlier))  # writes or CONNECTs no earlier rule takes
    if rule.level == "None":
        spots.append(
            BlindSpot(where, "detection", f"level None hides {what}: a refusal there is never a finding")
        )
        if admits:
            text = f"level None hides the writes and CONNECTs of {what}: no agent at admission"
            spots.append(BlindSpot(where, "join", text))
        return spots
    if "ResponseComplete" in rule.omit_stages:
        text = f"omits ResponseComplete for {what}: refusals are not seen"
        spots.append(BlindSpot(where, "detection", text))
    if "RequestReceived" in rule.omit_stages and admits:
        text = f"omits RequestReceived for the writes and CONNECTs of {what}: no agent at admission"
        spots.append(BlindSpot(where, "join", text))
    return spots


def check(policy: Policy) -> list[BlindSpot]:
    """Every blind spot, in rule order; the policy-level omitStages counts for every rule."""
    spots: list[BlindSpot] = []
    for i, rule in enumerate(policy.rules):
        earlier = [policy.effective(r) for r in policy.rules[:i]]
        spots += _rule_spots(f"rules[{i}]", policy.effective(rule), earlier)
    if not any(rule.matches_everything for rule in policy.rules):
        spots.append(BlindSpot("no rule matched", "detection", "requests no rule matches are not recorded "
                               "(level None by default): a refusal there is never a finding"))  # fmt: skip
    return spots


def report(policy: Policy, source: str) -> str:
    """The lines ``--check-policy`` prints: one per blind spot, or one saying there is none."""
    spots = check(policy)
    if not spots:
        return f"{source}: ua-sentinel sees every request it needs (no blind spot)\n"
    head = (
        f"{source}: {len(spots)} blind spot(s); merge with `ua-sentinel apiserver-config --policy {source}`\n"
    )
    if "RequestReceived" in policy.omit_stages:
        head += "policy omitStages: RequestReceived is omitted for every rule (listed per rule below)\n"
    return head + "".join(f"{s.where}: {s.kind} blind: {s.text}\n" for s in spots)
