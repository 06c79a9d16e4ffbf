"""`apiserver-config --policy`: the merged policy records, for every request, what the original did
and only adds what ua-sentinel needs (checked against the apiserver's rule matching)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.tools.audit_policy import (
    ALL_STAGES,
    LEVELS,
    GroupResources,
    Policy,
    Request,
    Rule,
    level_and_stages,
    needed,
    parse_policy,
    satisfies,
)
from webhook.tools.policy_merge import merge, render

POLICIES = Path(__file__).parents[1] / "data" / "policies"

USERS = ["alice", "system:kube-proxy", "system:apiserver"]
GROUPS = ["devs", "system:nodes", "system:authenticated"]
RESOURCE_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
HTTP_VERBS = ["get", "post", "put", "patch", "delete", "head"]
NAMESPACES = ["", "kube-system", "team"]
API_GROUPS = ["", "", "apps"]
RESOURCES = ["pods", "secrets", "deployments"]
SUBRESOURCES = ["", "", "exec", "proxy", "log", "scale"]
NAMES = ["", "a", "controller-leader"]
PATHS = ["/api", "/apis", "/version", "/healthz", "/healthz/etcd", "/logs/x"]
POLICY_RESOURCES = [
    "*",
    "pods",
    "pods/exec",
    "pods/*",
    "*/exec",
    "*/proxy",
    "*/scale",
    "*/*",
    "pods/log",
    "secrets",
]
POLICY_URLS = ["*", "/api*", "/version", "/healthz*", "/logs/*"]


def subset(values: list[str], max_size: int = 3, min_size: int = 0) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=max_size).map(
        lambda v: tuple(dict.fromkeys(v))
    )


stages = st.frozensets(st.sampled_from(ALL_STAGES))
group_resources = st.builds(
    GroupResources,
    group=st.sampled_from(["", "", "apps"]),
    resources=subset(POLICY_RESOURCES),
    resource_names=subset(NAMES[1:], 2),
)


def maybe(values: list[str], max_size: int = 2) -> st.SearchStrategy[tuple[str, ...]]:
    """Half the time no restriction: rules that narrow on every field would rarely match."""
    return st.one_of(st.just(()), subset(values, max_size, 1))


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    kind = draw(st.sampled_from(["any", "resource", "resource", "namespace", "url"]))
    return Rule(
        level=draw(st.sampled_from(LEVELS)),
        users=draw(maybe(USERS)),
        user_groups=draw(maybe(GROUPS)),
        verbs=draw(maybe(sorted(set(RESOURCE_VERBS + HTTP_VERBS)), 4)),
        resources=draw(st.lists(group_resources, min_size=1, max_size=2).map(tuple))
        if kind == "resource"
        else (),
        namespaces=draw(subset(NAMESPACES, 2, 1)) if kind == "namespace" else (),
        non_resource_urls=draw(subset(POLICY_URLS, 2, 1)) if kind == "url" else (),
        omit_stages=draw(stages),
    )


policies = st.builds(
    Policy,
    rules=st.lists(rules(), max_size=6).map(tuple),
    # the common case first: RequestReceived omitted policy-wide
    omit_stages=st.one_of(st.just(frozenset({"RequestReceived"})), stages),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    user, groups = draw(st.sampled_from(USERS)), draw(subset(GROUPS))
    if draw(st.booleans()):
        return Request(
            user,
            groups,
            draw(st.sampled_from(HTTP_VERBS)),
            is_resource=False,
            path=draw(st.sampled_from(PATHS)),
        )
    return Request(
        user,
        groups,
        draw(st.sampled_from(RESOURCE_VERBS)),
        namespace=draw(st.sampled_from(NAMESPACES)),
        api_group=draw(st.sampled_from(API_GROUPS)),
        resource=draw(st.sampled_from(RESOURCES)),
        subresource=draw(st.sampled_from(SUBRESOURCES)),
        name=draw(st.sampled_from(NAMES)),
    )


@st.composite
def requests_for(draw: st.DrawFn, policy: Policy) -> Request:
    """A request built from the policy's own users, verbs, namespaces and resources half the time,
    so that narrow rules (a user, a verb, "pods/*") are matched, not only missed."""
    if draw(st.booleans()):
        return draw(requests())
    rules = list(policy.rules) or [Rule(level="None")]
    rule = draw(st.sampled_from(rules))
    user = draw(st.sampled_from(rule.users or tuple(USERS)))
    groups = (draw(st.sampled_from(rule.user_groups)),) if rule.user_groups else draw(subset(GROUPS))
    if rule.non_resource_urls:
        path = draw(st.sampled_from(rule.non_resource_urls)).replace(
            "*", draw(st.sampled_from(["", "x", "/y"]))
        )
        # non-resource verbs are lowercase HTTP methods (never create, update, list...)
        verb = draw(st.sampled_from([v for v in rule.verbs if v in HTTP_VERBS] or HTTP_VERBS))
        return Request(user, groups, verb, is_resource=False, path=path if path.startswith("/") else "/z")
    # resource verbs only (a GET exec is a CONNECT too, so get is drawn twice as often)
    verb = draw(st.sampled_from([v for v in rule.verbs if v in RESOURCE_VERBS] or ("get", *RESOURCE_VERBS)))
    gr = (
        draw(st.sampled_from(rule.resources))
        if rule.resources
        else GroupResources(draw(st.sampled_from(API_GROUPS)))
    )
    named = draw(st.sampled_from(gr.resources)) if gr.resources else draw(st.sampled_from(RESOURCES))
    resource, _, subresource = named.partition("/")
    resource = draw(st.sampled_from(RESOURCES)) if resource == "*" else resource
    if subresource == "*" or (not subresource and draw(st.booleans())):
        subresource = draw(st.sampled_from(["exec", "proxy", *SUBRESOURCES]))  # CONNECT often
    return Request(
        user,
        groups,
        verb,
        namespace=draw(st.sampled_from(rule.namespaces or tuple(NAMESPACES))),
        api_group=gr.group,
        resource=resource,
        subresource=subresource,
        name=draw(st.sampled_from(gr.resource_names or tuple(NAMES))),
    )


def merged(policy: Policy) -> Policy:
    """The merged policy as the apiserver would read it: rendered to YAML and parsed back."""
    return parse_policy(render(policy, merge(policy), "original.yaml"))


def assert_merge_keeps_and_adds(original: Policy, result: Policy, request: Request) -> None:
    level, recorded = level_and_stages(original, request)
    new_level, new_recorded = level_and_stages(result, request)
    need = needed(request)
    if satisfies(level, recorded, need):  # ua-sentinel already sees it: nothing changes
        assert (new_level, new_recorded) == (level, recorded)
    elif level == "None":  # hidden before: now Metadata with exactly what ua-sentinel needs
        assert (new_level, new_recorded) == ("Metadata", need)
    else:  # same level (Request/RequestResponse stay), the stages it had plus the needed ones
        assert (new_level, new_recorded) == (level, recorded | need)


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_merged_policy_keeps_what_was_recorded_and_adds_only_what_is_needed(data: st.DataObject) -> None:
    original = data.draw(policies, label="policy")
    result = merged(original)
    assert not result.omit_stages  # folded into the rules
    for request in data.draw(st.lists(requests_for(original), min_size=30, max_size=60), label="requests"):
        assert_merge_keeps_and_adds(original, result, request)


@settings(max_examples=150, deadline=None)
@given(requests())
def test_the_docs_and_gke_policies_merge_soundly(request: Request) -> None:
    for name in ("k8s-docs-example.yaml", "gke-configure-helper.yaml", "realistic.yaml"):
        original = parse_policy((POLICIES / name).read_text())
        assert_merge_keeps_and_adds(original, merged(original), request)


def test_a_policy_that_hides_nothing_is_unchanged() -> None:
    text = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: RequestResponse\n"
    original = parse_policy(text)
    assert merged(original).rules == original.rules


def test_policy_wide_request_received_omission_stays_for_reads_and_goes_for_writes() -> None:
    original = parse_policy((POLICIES / "realistic.yaml").read_text())
    assert "RequestReceived" in original.omit_stages
    result = merged(original)
    read = Request("alice", ("devs",), "get", namespace="team", resource="configmaps")
    write = Request("alice", ("devs",), "create", namespace="team", resource="configmaps")
    secret = Request("alice", ("devs",), "create", namespace="team", resource="secrets")
    assert "RequestReceived" not in level_and_stages(result, read)[1]
    assert "RequestReceived" in level_and_stages(result, write)[1]
    assert level_and_stages(result, secret) == ("RequestResponse", frozenset(ALL_STAGES))


def test_each_rule_is_under_a_comment_naming_its_origin() -> None:
    original = parse_policy((POLICIES / "k8s-docs-example.yaml").read_text())
    text = render(original, merge(original), "k8s-docs-example.yaml")
    assert "# rules[2]: level None -> Metadata, ResponseComplete only" in text
    assert "# added for rules[0]: its writes, with RequestReceived" in text
    assert "# rules[8]: unchanged" in text


@pytest.mark.parametrize(
    "resources",
    ["[]", "['*']", "['*/exec']", "['pods/*']", "['pods/exec']", "['pods/exec', secrets]"],
)
@pytest.mark.parametrize("verb", ["get", "create"])
def test_connect_subresources_get_request_received_whatever_the_rule_names_them(
    resources: str, verb: str
) -> None:
    text = (
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
        f"- level: Request\n  resources: [{{group: '', resources: {resources}, resourceNames: [web]}}]\n"
    )
    original = parse_policy(text)
    exec_web = Request("alice", (), verb, namespace="team", resource="pods", subresource="exec", name="web")
    assert "RequestReceived" not in level_and_stages(original, exec_web)[1]
    assert_merge_keeps_and_adds(original, merged(original), exec_web)
    assert level_and_stages(merged(original), exec_web)[0] == "Request"
