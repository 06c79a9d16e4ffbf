"""An existing audit policy merged with what ua-sentinel needs, instead of replaced.

The apiserver takes one policy for all its audit backends, and the first rule that matches a
request decides. So the merge walks the original rules in order and, for a rule R that hides
something ua-sentinel needs (``audit_policy.needed``), changes only the requests R itself
matched:

- R's level is Metadata or above but it omits a needed stage: R keeps its level and stops
  omitting ``ResponseComplete``; when it omits ``RequestReceived``, a copy of R narrowed to the
  requests that reach admission (write verbs; the CONNECT subresources) goes right before it,
  same level, omitting neither. Request/RequestResponse stay Request/RequestResponse.
- R is level ``None``: the requests that reach admission get a narrowed copy at Metadata with
  ``RequestReceived`` and ``ResponseComplete`` only, and R itself becomes Metadata with
  ``ResponseComplete`` only. Any request can be refused, so a ``None`` rule cannot stay a blind
  spot; this is the one change an existing log sees (those requests now appear, at Metadata,
  one event each), and ``--check-policy`` lists them before anyone merges.
- Requests no rule matched (level None by default) get the same treatment from rules added at
  the end, unless the policy already ends in a rule that matches everything.

Why first-match-wins still holds: every added rule sits immediately before the rule R it came
from and matches a subset of what R matches (R's own fields, narrowed), so a request it catches
is one R would have caught; nothing matched by an earlier rule can reach it, and nothing R did
not match is caught. The narrowing is exact: verbs intersected with the write verbs; the
CONNECT subresources intersected with R's resources (``*``, ``*/exec``, ``pods/*``,
``pods/exec``, a group with no resources) keeping R's resourceNames; and, because non-resource
requests have the verbs ``patch`` and ``delete`` too, a rule with no resource fields gets a
guard first (``nonResourceURLs: ["*"]``, R's new treatment) so its non-resource requests are
treated as R treats them. The policy-level ``omitStages`` is folded into every rule (the
apiserver unions them), so a policy-wide ``RequestReceived`` omission stays in force for every
rule that is not widened. ``tests/unit/test_policy_merge.py`` checks all of this against the
apiserver's matching on generated policies and requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import yaml

from webhook.tools.audit_policy import (
    ALL_STAGES,
    CONNECT_SUBRESOURCES,
    WRITE_VERBS,
    GroupResources,
    Level,
    Policy,
    Rule,
    dump_rule,
)

__all__ = ["MergedRule", "admitted_parts", "connect_resources", "merge", "render"]

_ALL = frozenset(ALL_STAGES)
_KEEP_COMPLETE = _ALL - {"ResponseComplete"}
_KEEP_BOTH = _ALL - {"ResponseComplete", "RequestReceived"}
_NON_RESOURCE_WRITE_VERBS = ("patch", "delete")  # non-resource verbs are lowercase HTTP methods
_CONNECT_WILDCARDS = tuple(f"*/{s}" for s in CONNECT_SUBRESOURCES)


@dataclass(frozen=True, slots=True)
class MergedRule:
    """A rule of the merged policy, the original rule it stands for, and why it is there."""

    rule: Rule
    origin: int | None  # index in the original rules; None for the rules added at the end
    note: str


def connect_resources(rule: Rule) -> tuple[GroupResources, ...]:
    """The part of ``rule``'s resources that are CONNECT subresources of the core group."""
    if not rule.resources:
        return (GroupResources("", _CONNECT_WILDCARDS),)
    out: list[GroupResources] = []
    for gr in rule.resources:
        if gr.group != "":
            continue
        if not gr.resources:  # every resource of the group, resourceNames not looked at
            out.append(GroupResources("", _CONNECT_WILDCARDS))
            continue
        picked: list[str] = []
        for res in gr.resources:
            if res == "*":
                picked += _CONNECT_WILDCARDS
            elif res.startswith("*/"):
                picked += [res] if res[2:] in CONNECT_SUBRESOURCES else []
            elif res.endswith("/*"):
                picked += [f"{res[:-2]}/{s}" for s in CONNECT_SUBRESOURCES]
            elif res.partition("/")[2] in CONNECT_SUBRESOURCES:
                picked.append(res)
        if picked:
            out.append(GroupResources("", tuple(dict.fromkeys(picked)), gr.resource_names))
    return tuple(out)


def _write_verbs(rule: Rule) -> tuple[str, ...]:
    return tuple(v for v in (rule.verbs or WRITE_VERBS) if v in WRITE_VERBS)


def _wider(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """A field that matches everything ``inner`` matches (empty matches all)."""
    return not outer or (bool(inner) and set(inner) <= set(outer))


def _covers(earlier: Rule, rule: Rule, connect: bool) -> bool:
    """Whether ``earlier`` takes every write (or CONNECT) ``rule`` matches: then none reach ``rule``.

    Syntactic and sound (a subset of fields, never a guess): what ``merge`` added before a rule
    covers it, so a merged policy merges to itself and ``--check-policy`` finds it clean."""
    if earlier.non_resource_urls and not earlier.resource_only:
        return False
    verbs = rule.verbs if connect else _write_verbs(rule)
    same_resources = not earlier.resources or earlier.resources == rule.resources
    if connect:
        same_resources = same_resources or earlier.resources == connect_resources(rule)
    return (
        same_resources
        and _wider(earlier.users, rule.users)
        and _wider(earlier.user_groups, rule.user_groups)
        and _wider(earlier.namespaces, rule.namespaces)
        and (not earlier.verbs or (bool(verbs) and set(verbs) <= set(earlier.verbs)))
    )


def admitted_parts(rule: Rule, earlier: list[Rule]) -> tuple[bool, bool]:
    """(writes, CONNECTs): whether ``rule`` can match some that no rule in ``earlier`` covers."""
    if rule.non_resource_urls and not rule.resource_only:
        return False, False
    writes = bool(_write_verbs(rule)) and not any(_covers(e, rule, connect=False) for e in earlier)
    connects = bool(connect_resources(rule)) and not any(_covers(e, rule, connect=True) for e in earlier)
    return writes, connects


def _treat(rule: Rule, level: Level, omit: frozenset[str]) -> Rule:
    return replace(rule, level=level, omit_stages=omit)


def _merge_rule(rule: Rule, origin: int | None, what: str, earlier: list[Rule]) -> list[MergedRule]:
    """``rule`` (policy omitStages already folded in) and the narrowed copies that go before it."""
    if rule.level == "None":
        rest: tuple[Level, frozenset[str]] = ("Metadata", _KEEP_COMPLETE)
        admitted: tuple[Level, frozenset[str]] = ("Metadata", _KEEP_BOTH)
    else:
        rest = (rule.level, rule.omit_stages - {"ResponseComplete"})
        admitted = (rule.level, rule.omit_stages - {"ResponseComplete", "RequestReceived"})
    writes, connects = admitted_parts(rule, earlier) if admitted != rest else (False, False)
    if rest == (rule.level, rule.omit_stages) and not (writes or connects):
        return [MergedRule(rule, origin, f"{what}: unchanged")]
    out: list[MergedRule] = []
    if writes:
        verbs = _write_verbs(rule)
        guarded = tuple(v for v in verbs if v in _NON_RESOURCE_WRITE_VERBS)
        if guarded and not rule.resource_only:
            guard = replace(_treat(rule, *rest), verbs=guarded, non_resource_urls=("*",))
            out.append(MergedRule(guard, origin, f"added for {what}: its non-resource {'/'.join(guarded)} "
                                  "requests, treated as the rule below treats them"))  # fmt: skip
        writes_rule = replace(_treat(rule, *admitted), verbs=verbs)
        out.append(MergedRule(writes_rule, origin, f"added for {what}: its writes, with RequestReceived "
                              "(the admission join)"))  # fmt: skip
    if connects:
        connect_rule = replace(_treat(rule, *admitted), resources=connect_resources(rule))
        out.append(MergedRule(connect_rule, origin, f"added for {what}: its CONNECT subresources, with "
                              "RequestReceived (the admission join)"))  # fmt: skip
    if rule.level == "None":
        change = "level None -> Metadata, ResponseComplete only (refusals become visible)"
    else:
        change = (
            "ResponseComplete no longer omitted" if "ResponseComplete" in rule.omit_stages else "unchanged"
        )
    out.append(MergedRule(_treat(rule, *rest), origin, f"{what}: {change}"))
    return out


def merge(policy: Policy) -> list[MergedRule]:
    """The merged rules, in order (see the module docstring for how and why)."""
    out: list[MergedRule] = []
    for i, rule in enumerate(policy.rules):
        out += _merge_rule(policy.effective(rule), i, f"rules[{i}]", [m.rule for m in out])
    if not any(rule.matches_everything for rule in policy.rules):
        default = "requests no rule matched (level None by default)"
        out += _merge_rule(Rule(level="None"), None, default, [m.rule for m in out])
    return out


def render(policy: Policy, merged: list[MergedRule], source: str) -> str:
    """The merged policy as YAML, each rule under a comment saying where it comes from."""
    lines = [
        f"# {source} merged by `ua-sentinel apiserver-config --policy`: every original rule in order,",
        "# with what ua-sentinel needs added before the rules that hid it (first match wins, so each",
        "# added rule only takes requests the rule below it matched). The policy-level omitStages",
        "# is folded into each rule.",
        "apiVersion: audit.k8s.io/v1",
        "kind: Policy",
    ]
    if policy.extra:
        lines += yaml.safe_dump(dict(policy.extra), sort_keys=False).splitlines()
    lines.append("rules:")
    for entry in merged:
        lines.append(f"  # {entry.note}")
        dumped = yaml.safe_dump(
            [dump_rule(entry.rule)], sort_keys=False, width=1 << 16, default_flow_style=None
        )
        lines += [f"  {line}" for line in dumped.splitlines()]
    return "\n".join(lines) + "\n"
