"""The RE2 Set pre-selection must find exactly the entries that matching each entry finds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core import allowlist as allowlist_module
from webhook.core.allowlist import Allowlist, default_allowlist

CUSTOM_TEXT = r"""
agents:
  - "kubectl/*"
  - "a?c/1.0"
  - "*(evil)*"
  - "straße/*"
  - "x.y+z(1)[2]{3}^$|\\*"
  - regex: "^helm/v3\\."
  - regex: "ctl$"
  - regex: "k|q"
  - regex: "z*"
  - regex: "(?i)ÄPFEL"
  - product: kube-scheduler
    minVersion: v1.20.0
  - product: kubectl
    maxVersion: v1.30
  - glob: "kubectl/v1.3*"
    users: ["dev-*"]
    namespaces: [team]
  - glob: "old/*"
    expires: 2020-01-01
denied:
  - product: peirates
  - "curl*"
  - regex: "sqlmap|nikto"
  - glob: "*kali*"
    groups: ["system:unauthenticated"]
"""
CUSTOM = Allowlist.from_yaml(CUSTOM_TEXT)
ONLY_PRODUCTS = Allowlist.from_yaml("agents: [{product: kubectl}]\ndenied: [{product: peirates}]")
ALLOWLISTS = [default_allowlist(), CUSTOM, ONLY_PRODUCTS, Allowlist()]

AGENTS = st.one_of(
    st.sampled_from(
        [
            "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",
            "KUBECTL/v1.29.0",
            "kubectl",
            "abc/1.0",
            "abc/1x0",
            "x (evil) y",
            "STRASSE/1",
            "straße/2",
            "x.y+z(1)[2]{3}^$|\\anything",
            "Helm/v3.14.0",
            "helm/v2.1",
            "systemctl",
            "äpfel",
            "kube-scheduler/v1.19.9 (linux/amd64) kubernetes/x",
            "kube-scheduler/v1.20.2 (linux/amd64) kubernetes/x",
            "peirates/v0.0.0 (linux/amd64) kubernetes/$Format",
            "Curl/8.4.0",
            "python-requests/2.31",
            "Mozilla/5.0 sqlmap",
            "nmap-kali-amd64",
            "old/1",
            "\u212aube-hunter",
            "line\nbreak kubectl/1",
            "",
        ]
    ),
    st.text(max_size=40),
    st.builds(
        lambda a, b: a + b,
        st.sampled_from(["kubectl/", "curl", "peirates/", "x", "Helm/v3."]),
        st.text(max_size=12),
    ),
)


def one_by_one(allow: Allowlist, agent: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The entries matching ``agent``, each entry tried on its own (the reference)."""
    return (
        tuple(i for i, c in enumerate(allow.denied) if c.matches_agent(agent)),
        tuple(i for i, c in enumerate(allow.agents) if c.matches_agent(agent)),
    )


@settings(max_examples=500, deadline=None)
@given(agent=AGENTS, index=st.sampled_from(range(len(ALLOWLISTS))))
def test_set_preselection_finds_the_entries_each_entry_finds(agent: str, index: int) -> None:
    allow = ALLOWLISTS[index]
    agent = agent.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    denied, agents, _ = allow._match_agent(agent)
    assert (denied, agents) == one_by_one(allow, agent)


def test_the_set_covers_the_glob_and_regex_entries() -> None:
    denied, agents = CUSTOM._sections
    assert denied.set is not None and agents.set is not None
    assert denied.patterned == [1, 2, 3] and denied.products == [0]
    assert ONLY_PRODUCTS._sections[1].set is None


def test_decisions_name_the_first_matching_entry() -> None:
    decision = CUSTOM.decide("kubectl/v1.30.1", user="dev-alice", namespace="team")
    assert (decision.verdict, decision.entry) == ("listed", "agents[0] (glob 'kubectl/*')")
    assert CUSTOM.decide("curl/8 kali", groups=["system:unauthenticated"]).entry == "denied[1] (glob 'curl*')"
    assert CUSTOM.decide("mykali", groups=["system:unauthenticated"]).entry == "denied[3] (glob '*kali*')"
    assert CUSTOM.decide("mykali").verdict == "listed"  # regex "k|q" lists it; the denied entry is scoped


@pytest.mark.parametrize("agent", ["kubectl/v1.32.4", "curl/8", "Helm/v3.1", "nothing", "x.y+z(1)[2]{3}^$|"])
def test_without_a_set_each_entry_is_tried(agent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_module, "_compile_set", lambda patterns: None)
    allow = Allowlist.from_yaml(CUSTOM_TEXT)
    assert allow._sections[1].set is None
    assert allow._match_agent(agent)[:2] == one_by_one(allow, agent) == CUSTOM._match_agent(agent)[:2]
