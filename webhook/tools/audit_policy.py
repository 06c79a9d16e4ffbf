"""An audit.k8s.io/v1 Policy read, checked and evaluated the way the kube-apiserver does.

``parse_policy`` reads a policy file (PyYAML) into frozen ``Rule``s and refuses what the
apiserver refuses (and typos it would silently ignore), in one line that names the rule.
``level_and_stages`` is the apiserver's rule matching (k8s.io/apiserver/pkg/audit/policy/
checker.go): the first rule whose every given field matches wins; the policy's ``omitStages``
join each rule's; no match is level ``None``. ``needed`` says what ua-sentinel needs of each
request: the merge (``policy_merge``), the lint (``policy_check``) and their tests share these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, get_args

import yaml

from webhook.errors import SetupError

__all__ = [
    "ALL_STAGES",
    "CONNECT_SUBRESOURCES",
    "LEVELS",
    "WRITE_VERBS",
    "GroupResources",
    "Level",
    "Policy",
    "PolicyError",
    "Request",
    "Rule",
    "dump_rule",
    "level_and_stages",
    "needed",
    "parse_policy",
    "rule_matches",
    "satisfies",
    "stage_list",
]

Level = Literal["None", "Metadata", "Request", "RequestResponse"]
Stage = Literal["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]
LEVELS: Final[tuple[Level, ...]] = get_args(Level)
ALL_STAGES: Final[tuple[Stage, ...]] = get_args(Stage)
RECEIVED: Final = "RequestReceived"
COMPLETE: Final = "ResponseComplete"
# What the admission join needs RequestReceived for: every request that reaches admission.
# Writes by verb, and the CONNECT subresources of the core group (exec and attach are a POST
# (verb create) from kubectl <= 1.29 and a websocket GET (verb get) since; both are CONNECT).
WRITE_VERBS: Final = ("create", "update", "patch", "delete", "deletecollection")
CONNECT_SUBRESOURCES: Final = ("exec", "attach", "portforward", "proxy")
_RULE_KEYS = frozenset(
    {"level", "users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs", "omitStages",
     "omitManagedFields"}
)  # fmt: skip
_GROUP_KEYS = frozenset({"group", "resources", "resourceNames"})


class PolicyError(SetupError, ValueError):
    """An audit policy file that the apiserver would refuse (or that says something else than meant)."""


@dataclass(frozen=True, slots=True)
class GroupResources:
    group: str = ""
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule; empty fields match everything, as in the apiserver."""

    level: Level
    users: tuple[str, ...] = ()
    user_groups: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    resources: tuple[GroupResources, ...] = ()
    namespaces: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    omit_stages: frozenset[str] = frozenset()
    extra: tuple[tuple[str, Any], ...] = ()  # omitManagedFields: kept, no effect on matching

    @property
    def resource_only(self) -> bool:
        """Matches resource requests only (checker.go: namespaces or resources given)."""
        return bool(self.namespaces or self.resources)

    @property
    def matches_everything(self) -> bool:
        return not (
            self.users or self.user_groups or self.verbs or self.resource_only or self.non_resource_urls
        )


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    omit_stages: frozenset[str] = frozenset()
    extra: tuple[tuple[str, Any], ...] = field(default=())  # omitManagedFields at policy level

    def effective(self, rule: Rule) -> Rule:
        """The rule with the policy's omitStages folded in, as NewChecker does."""
        return replace(rule, omit_stages=rule.omit_stages | self.omit_stages)


@dataclass(frozen=True, slots=True)
class Request:
    """The authorizer attributes a policy looks at."""

    user: str
    groups: tuple[str, ...]
    verb: str
    is_resource: bool = True
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""


def _strings(where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return tuple(value)


def _stages(where: str, value: object) -> frozenset[str]:
    stages = _strings(where, value)
    if bad := [s for s in stages if s not in ALL_STAGES]:
        raise PolicyError(f"{where}: {bad[0]!r} is not a stage ({', '.join(ALL_STAGES)})")
    return frozenset(stages)


def _group(where: str, value: object) -> GroupResources:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be a mapping with group, resources, resourceNames")
    if unknown := sorted(set(value) - _GROUP_KEYS):
        raise PolicyError(f"{where}: unknown field {unknown[0]!r}")
    group = value.get("group", "")
    if not isinstance(group, str):
        raise PolicyError(f'{where}.group must be a string ("" is the core group)')
    resources = _strings(f"{where}.resources", value.get("resources"))
    for res in resources:
        if res.count("/") > 1 or res.startswith("/") or res.endswith("/"):
            raise PolicyError(f"{where}.resources: {res!r} is not RESOURCE or RESOURCE/SUBRESOURCE")
    return GroupResources(group, resources, _strings(f"{where}.resourceNames", value.get("resourceNames")))


def _rule(where: str, value: object) -> Rule:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be a mapping")
    if unknown := sorted(set(value) - _RULE_KEYS):
        raise PolicyError(f"{where}: unknown field {unknown[0]!r}")
    level = value.get("level")
    if level not in LEVELS:
        raise PolicyError(f"{where}.level must be one of {', '.join(LEVELS)}, not {level!r}")
    groups = value.get("resources") or []
    if not isinstance(groups, list):
        raise PolicyError(f"{where}.resources must be a list of {{group, resources}}")
    rule = Rule(
        level=level,
        users=_strings(f"{where}.users", value.get("users")),
        user_groups=_strings(f"{where}.userGroups", value.get("userGroups")),
        verbs=_strings(f"{where}.verbs", value.get("verbs")),
        resources=tuple(_group(f"{where}.resources[{i}]", g) for i, g in enumerate(groups)),
        namespaces=_strings(f"{where}.namespaces", value.get("namespaces")),
        non_resource_urls=_strings(f"{where}.nonResourceURLs", value.get("nonResourceURLs")),
        omit_stages=_stages(f"{where}.omitStages", value.get("omitStages")),
        extra=tuple((k, value[k]) for k in ("omitManagedFields",) if k in value),
    )
    if rule.non_resource_urls and rule.resource_only:
        raise PolicyError(f"{where}: nonResourceURLs cannot be combined with resources or namespaces")
    for url in rule.non_resource_urls:
        if url != "*" and (not url.startswith("/") or "*" in url[:-1]):
            raise PolicyError(f"{where}.nonResourceURLs: {url!r} must start with / and may end with *")
    return rule


def parse_policy(text: str) -> Policy:
    """The policy in ``text``; ``PolicyError`` (one line, naming the rule) when it is not one."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("not an audit policy: expected a mapping with apiVersion, kind: Policy, rules")
    if doc.get("kind") != "Policy" or doc.get("apiVersion") != "audit.k8s.io/v1":
        raise PolicyError(
            f"not an audit.k8s.io/v1 Policy (apiVersion {doc.get('apiVersion')!r}, kind {doc.get('kind')!r})"
        )
    if unknown := sorted(
        set(doc) - {"apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields"}
    ):
        raise PolicyError(f"unknown field {unknown[0]!r}")
    rules = doc.get("rules") or []
    if not isinstance(rules, list):
        raise PolicyError("rules must be a list")
    return Policy(
        rules=tuple(_rule(f"rules[{i}]", r) for i, r in enumerate(rules)),
        omit_stages=_stages("omitStages", doc.get("omitStages")),
        extra=tuple((k, doc[k]) for k in ("omitManagedFields",) if k in doc),
    )


# ---- the apiserver's matching (checker.go) ---------------------------------------------------
def _path_matches(path: str, spec: str) -> bool:
    return spec == "*" or spec == path or (spec.endswith("*") and path.startswith(spec.rstrip("*")))


def _resource_matches(rule: Rule, req: Request) -> bool:
    if not req.is_resource:
        return False
    if rule.namespaces and req.namespace not in rule.namespaces:
        return False
    if not rule.resources:
        return True
    combined = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    for gr in rule.resources:
        if gr.group != req.api_group:
            continue
        if not gr.resources:
            return True  # resourceNames are not looked at then (checker.go)
        if gr.resource_names and req.name not in gr.resource_names:
            continue
        for res in gr.resources:
            if res in (combined, "*"):
                return True
            if req.subresource and res.startswith("*/") and req.subresource == res[2:]:
                return True
            if res.endswith("/*") and req.resource == res[:-2]:
                return True
    return False


def rule_matches(rule: Rule, req: Request) -> bool:
    if rule.users and req.user not in rule.users:
        return False
    if rule.user_groups and not any(g in rule.user_groups for g in req.groups):
        return False
    if rule.verbs and req.verb not in rule.verbs:
        return False
    if rule.resource_only:
        return _resource_matches(rule, req)
    if rule.non_resource_urls:
        return not req.is_resource and any(_path_matches(req.path, s) for s in rule.non_resource_urls)
    return True


def level_and_stages(policy: Policy, req: Request) -> tuple[Level, frozenset[str]]:
    """The level and the stages recorded for ``req``: (``None``, nothing) when no rule matches."""
    for rule in policy.rules:
        if rule_matches(rule, req):
            if rule.level == "None":
                return "None", frozenset()
            return rule.level, frozenset(ALL_STAGES) - rule.omit_stages - policy.omit_stages
    return "None", frozenset()


def needed(req: Request) -> frozenset[str]:
    """The stages ua-sentinel needs at Metadata or above: ResponseComplete for every request (any
    can be refused: detection), RequestReceived too for what reaches admission (the join)."""
    admitted = req.is_resource and (
        req.verb in WRITE_VERBS or (req.api_group == "" and req.subresource in CONNECT_SUBRESOURCES)
    )
    return frozenset({COMPLETE, RECEIVED}) if admitted else frozenset({COMPLETE})


def satisfies(level: Level, stages: frozenset[str], need: frozenset[str]) -> bool:
    return level != "None" and need <= stages


# ---- writing rules back ------------------------------------------------------------------------
def dump_rule(rule: Rule) -> dict[str, Any]:
    """The rule as the apiserver reads it (camelCase, empty fields left out, stages in order)."""
    out: dict[str, Any] = {"level": rule.level}
    for key, value in (
        ("users", rule.users),
        ("userGroups", rule.user_groups),
        ("verbs", rule.verbs),
        ("namespaces", rule.namespaces),
        ("nonResourceURLs", rule.non_resource_urls),
    ):
        if value:
            out[key] = list(value)
    if rule.resources:
        out["resources"] = [_dump_group(gr) for gr in rule.resources]
    if rule.omit_stages:
        out["omitStages"] = [s for s in ALL_STAGES if s in rule.omit_stages]
    out.update(rule.extra)
    return out


def _dump_group(gr: GroupResources) -> dict[str, Any]:
    out: dict[str, Any] = {"group": gr.group}
    if gr.resources:
        out["resources"] = list(gr.resources)
    if gr.resource_names:
        out["resourceNames"] = list(gr.resource_names)
    return out


def stage_list(stages: Sequence[str] | frozenset[str]) -> list[str]:
    return [s for s in ALL_STAGES if s in stages]
