"""The audit policy reader and the apiserver's rule matching (k8s.io/apiserver audit/policy/checker.go)."""

from __future__ import annotations

import pytest

from webhook.tools.audit_policy import PolicyError, Request, level_and_stages, needed, parse_policy

ALICE = ("alice", ("devs", "system:authenticated"))


def req(verb: str = "get", **kw: object) -> Request:
    user, groups = ALICE
    return Request(user=user, groups=groups, verb=verb, **kw)  # type: ignore[arg-type]


def policy(rules: str, head: str = "") -> str:
    return f"apiVersion: audit.k8s.io/v1\nkind: Policy\n{head}rules:\n{rules}"


@pytest.mark.parametrize(
    ("resources", "request_", "matches"),
    [
        ('["pods"]', req(resource="pods"), True),
        ('["pods"]', req(resource="pods", subresource="log"), False),  # subresources named apart
        ('["pods/log"]', req(resource="pods", subresource="log"), True),
        ('["*/scale"]', req(api_group="apps", resource="deployments", subresource="scale"), False),
        ('["*/scale"]', req(resource="replicationcontrollers", subresource="scale"), True),
        ('["pods/*"]', req(resource="pods", subresource="exec"), True),
        ('["pods/*"]', req(resource="pods"), True),  # "resource/*" matches the resource itself too
        ('["*"]', req(resource="secrets", subresource="x"), True),
        ('["*/*"]', req(resource="pods", subresource="exec"), False),
    ],
)
def test_resources_match_as_in_checker_go(resources: str, request_: Request, matches: bool) -> None:
    p = parse_policy(policy(f"- level: Metadata\n  resources: [{{group: '', resources: {resources}}}]\n"))
    assert (level_and_stages(p, request_)[0] == "Metadata") is matches


def test_resource_names_apply_only_when_resources_are_named() -> None:
    named = "- level: Request\n  resources: [{group: '', resources: [configmaps], resourceNames: [a]}]\n"
    assert level_and_stages(parse_policy(policy(named)), req(resource="configmaps", name="a"))[0] == "Request"
    assert level_and_stages(parse_policy(policy(named)), req(resource="configmaps", name="b"))[0] == "None"
    whole_group = "- level: Request\n  resources: [{group: '', resourceNames: [a]}]\n"
    assert level_and_stages(parse_policy(policy(whole_group)), req(resource="pods", name="b"))[0] == "Request"


def test_first_match_wins_and_policy_omit_stages_join_each_rule() -> None:
    text = policy(
        "- level: None\n  users: [alice]\n  verbs: [watch]\n"
        "- level: RequestResponse\n  userGroups: [devs]\n  omitStages: [Panic]\n"
        "- level: Metadata\n",
        head="omitStages: [RequestReceived]\n",
    )
    p = parse_policy(text)
    assert level_and_stages(p, req("watch", resource="pods")) == ("None", frozenset())
    assert level_and_stages(p, req("get", resource="pods")) == (
        "RequestResponse",
        frozenset({"ResponseStarted", "ResponseComplete"}),
    )
    bob = Request(user="bob", groups=(), verb="get", resource="pods")
    assert level_and_stages(p, bob)[0] == "Metadata"


def test_non_resource_urls_match_only_non_resource_requests_with_a_trailing_star() -> None:
    p = parse_policy(policy("- level: None\n  nonResourceURLs: ['/healthz*', /version]\n- level: Metadata\n"))
    assert level_and_stages(p, req(is_resource=False, path="/healthz/etcd"))[0] == "None"
    assert level_and_stages(p, req(is_resource=False, path="/version"))[0] == "None"
    assert level_and_stages(p, req(is_resource=False, path="/versions"))[0] == "Metadata"
    assert level_and_stages(p, req(resource="healthz"))[0] == "Metadata"


def test_no_rule_matched_is_level_none() -> None:
    p = parse_policy(policy("- level: Metadata\n  users: [bob]\n"))
    assert level_and_stages(p, req(resource="pods")) == ("None", frozenset())


def test_what_ua_sentinel_needs() -> None:
    assert needed(req("get", resource="pods")) == {"ResponseComplete"}
    assert needed(req("create", resource="configmaps")) == {"ResponseComplete", "RequestReceived"}
    assert needed(req("get", resource="pods", subresource="exec")) == {"ResponseComplete", "RequestReceived"}
    assert needed(req("delete", is_resource=False, path="/logs")) == {"ResponseComplete"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [", "not YAML at line"),
        ("- a\n", "not an audit policy"),
        ("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: []\n", "not an audit.k8s.io/v1 Policy"),
        (policy("- level: Everything\n"), r"rules\[0\]\.level must be one of None, Metadata"),
        (policy("- level: None\n  user: [alice]\n"), r"rules\[0\]: unknown field 'user'"),
        (policy("- level: None\n  omitStages: [Received]\n"), r"'Received' is not a stage"),
        (policy("- level: None\n  verbs: get\n"), r"rules\[0\]\.verbs must be a list of strings"),
        (
            policy("- level: None\n  namespaces: [a]\n  nonResourceURLs: [/x]\n"),
            "cannot be combined",
        ),
        (policy("- level: None\n  nonResourceURLs: [x*]\n"), "must start with /"),
        (policy("- level: None\n  resources: [{group: '', resources: [a/b/c]}]\n"), "RESOURCE/SUBRESOURCE"),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        parse_policy(text)
    assert "\n" not in str(caught.value)
