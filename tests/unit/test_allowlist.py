from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core import allowlist
from webhook.core.allowlist import (
    VALIDATED_TEXTS,
    Allowlist,
    AllowlistError,
    default_allowlist,
    default_allowlist_text,
)

KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"


def load(text: str) -> Allowlist:
    return Allowlist.from_yaml(text)


def test_string_item_is_a_case_insensitive_glob_over_the_whole_agent() -> None:
    allow = load('agents: ["kubectl/*"]')
    assert allow.decide(KUBECTL).verdict == "listed"
    assert allow.decide("KUBECTL/v1.0").verdict == "listed"
    assert allow.decide("my-kubectl/v1.0").verdict == "unlisted"
    assert allow.decide(KUBECTL).entry == "agents[0] (glob 'kubectl/*')"


def test_question_mark_matches_one_character_and_dots_are_literal() -> None:
    allow = load('agents: ["a?c/1.0"]')
    assert allow.decide("abc/1.0").verdict == "listed"
    assert allow.decide("abc/1x0").verdict == "unlisted"


def test_regex_entry_uses_search_semantics() -> None:
    allow = load('agents: [{regex: "^helm/v3\\\\."}]')
    assert allow.decide("Helm/v3.14.0").verdict == "listed"
    assert allow.decide("helm/v2.1").verdict == "unlisted"


def test_product_entry_with_version_bounds() -> None:
    allow = load("agents: [{product: kubectl, minVersion: v1.28.0, maxVersion: v1.33}]")
    assert allow.decide(KUBECTL).verdict == "listed"
    assert allow.decide("kubectl/v1.27.9 (linux/amd64) kubernetes/x").verdict == "unlisted"
    assert allow.decide("kubectl/v1.34.0 (linux/amd64) kubernetes/x").verdict == "unlisted"
    assert allow.decide("kubectl (no version)").verdict == "unlisted"
    assert allow.decide("kc-renamed/v1.32.4 (linux/amd64) kubernetes/4cb5f07").verdict == "unlisted"


def test_scopes_limit_who_an_entry_lists() -> None:
    allow = load(
        """
agents:
  - glob: "python-requests/*"
    users: ["ci-*"]
    groups: ["automation"]
    namespaces: ["team"]
"""
    )
    assert allow.decide("python-requests/2.31.0", user="ci-bot", namespace="team").verdict == "listed"
    assert (
        allow.decide("python-requests/2.31.0", user="x", groups=["automation"], namespace="team").verdict
        == "listed"
    )
    assert allow.decide("python-requests/2.31.0", user="mallory", namespace="team").verdict == "unlisted"
    assert allow.decide("python-requests/2.31.0", user="ci-bot", namespace="default").verdict == "unlisted"
    assert allow.decide("python-requests/2.31.0", user="ci-bot").verdict == "unlisted"


def test_expired_entry_stops_matching_and_is_reported() -> None:
    allow = load('agents: [{glob: "temp-tool/*", expires: 2026-01-31, reason: migration}]')
    before = allow.decide("temp-tool/1", today=dt.date(2026, 1, 31))
    after = allow.decide("temp-tool/1", today=dt.date(2026, 2, 1))
    assert before.verdict == "listed"
    assert after.verdict == "unlisted"
    assert after.expired == ("agents[0] (glob 'temp-tool/*')",)
    assert allow.expired_entries(dt.date(2026, 2, 1)) == ["agents[0] (glob 'temp-tool/*')"]


def test_denied_wins_over_listed() -> None:
    allow = load('agents: ["*"]\ndenied: [{product: peirates}]')
    decision = allow.decide("peirates/v0.0.0 (linux/amd64) kubernetes/$Format")
    assert decision.verdict == "denied"
    assert decision.entry == "denied[0] (product 'peirates')"


@pytest.mark.parametrize(
    "agent",
    [
        "kubectl/v1.30.0 \u202e(evil) \u200b",
        "kubectl/v1.30.0\u200b",
        "kubectl/v1.30.0 \x1b[2J",
        "kubectl/v1.30.0\u2067x",
        "kubectl/v1.30.0\ufeff",
    ],
)
def test_spoofing_characters_are_never_listed(agent: str) -> None:
    allow = load('agents: ["kubectl/*", "*"]')
    decision = allow.decide(agent)
    assert decision.verdict == "unlisted"
    assert "bidi" in decision.reason


def test_missing_agent_is_unlisted() -> None:
    assert load('agents: ["*"]').decide(None).verdict == "unlisted"
    assert load('agents: ["*"]').decide("").verdict == "unlisted"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('agents: [{regex: "(a"}]', "agents[0]: regex '(a' is not valid RE2 syntax"),
        ('agents: ["ok/*", {regex: "(a)\\\\1"}]', "agents[1]: regex"),
        ("denied: [{product: x, minVersion: latest}]", "denied[0]: version bound 'latest'"),
        ("agents: [{glob: a, regex: b}]", "agents[0]: give exactly one of glob, regex or product"),
        ("agents: [{glob: a, user: [x]}]", "agents[0]: user: Extra inputs are not permitted"),
        ("agents: [{glob: a, expires: someday}]", "agents[0]: expires:"),
        ("agents: [{glob: x, minVersion: v1}]", "agents[0]: minVersion/maxVersion need product"),
        ("agents: [7]", "agents[0]: expected a glob string or a mapping, got int"),
        ('agents: [""]', "agents[0]: empty glob"),
        ("agents: kubectl", "agents: must be a list"),
        ("agent: []", "unknown key(s) agent"),
        ("- a\n- b", "top level must be a mapping"),
        ("agents: [\n", "not valid YAML at line"),
    ],
)
def test_invalid_allowlist_names_the_entry_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(AllowlistError) as info:
        Allowlist.from_yaml(text, source="cm/allowlist.yaml")
    assert str(info.value).startswith("cm/allowlist.yaml: ")
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_unreadable_file_is_an_allowlist_error(tmp_path: Path) -> None:
    with pytest.raises(AllowlistError, match="cannot read"):
        Allowlist.from_file(tmp_path / "missing.yaml")


def test_empty_file_is_an_empty_allowlist() -> None:
    assert Allowlist.from_yaml("").decide(KUBECTL).verdict == "unlisted"


def test_hash_changes_with_content_and_not_with_formatting() -> None:
    a = load('agents: ["kubectl/*"]')
    b = load('agents:\n  - "kubectl/*"   # same entry\n')
    c = load('agents: ["kubectl/*", "helm/*"]')
    assert a.hash == b.hash != c.hash


def test_hash_is_the_one_findings_already_carry() -> None:
    """``allowlist.hash`` is in every finding: how the entries are built must not move it
    (the value is the one the pydantic model's repr gave)."""
    text = (
        'agents: ["kubectl/*", {product: helm, minVersion: v3.0.0, users: ["ci-*"], expires: 2027-01-31}]\n'
        'denied: [{regex: "^evil", reason: scanner}]'
    )
    assert load(text).hash == "b1c29153c798"


def test_the_built_in_list_is_the_text_validated_before() -> None:
    """Its items are taken without pydantic only because this text passed the schema: an edit
    of the file must be validated again and its SHA-256 put in VALIDATED_TEXTS."""
    text = default_allowlist_text()
    assert hashlib.sha256(text.encode()).hexdigest() in VALIDATED_TEXTS, "update VALIDATED_TEXTS"
    cached = Allowlist.from_yaml(text)
    # The same text with a comment added is not in VALIDATED_TEXTS: every item goes through pydantic.
    checked = Allowlist.from_yaml(text + "\n# not validated before\n")
    assert [c.entry for c in cached.agents] == [c.entry for c in checked.agents]
    assert [c.entry for c in cached.denied] == [c.entry for c in checked.denied]
    assert cached.hash == checked.hash == default_allowlist().hash


def test_the_shipped_parse_is_the_built_in_lists_yaml() -> None:
    """Regenerate after an edit of the list (and put its SHA-256 in VALIDATED_TEXTS):
    python -c "import hashlib,json,yaml; t=open('webhook/data/default-allowlist.yaml').read();
    open('webhook/data/default-allowlist.json','w').write(json.dumps({'sha256':
    hashlib.sha256(t.encode()).hexdigest(), **yaml.safe_load(t)}, indent=1, default=str,
    ensure_ascii=False) + '\\n')"
    """
    text = default_allowlist_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    shipped = json.loads((Path(allowlist.__file__).parent.parent / allowlist.SHIPPED_PARSE).read_text())
    assert shipped.pop("sha256") == digest, "regenerate data/default-allowlist.json (see this test)"
    assert allowlist._shipped_parse(digest) == yaml.safe_load(text)
    assert allowlist._shipped_parse("0" * 64) is None  # only for the text it was read from


def test_the_built_in_list_is_the_same_without_its_shipped_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Allowlist.from_yaml(default_allowlist_text())
    monkeypatch.setattr(allowlist, "_shipped", lambda: None)  # not installed: the YAML is read
    parsed = Allowlist.from_yaml(default_allowlist_text())
    assert [c.entry for c in shipped.agents + shipped.denied] == [
        c.entry for c in parsed.agents + parsed.denied
    ]
    assert shipped.hash == parsed.hash


def test_a_validated_text_changed_in_one_item_is_checked_by_the_schema() -> None:
    text = default_allowlist_text().replace("    product: peirates", "    prodcut: peirates", 1)
    assert "prodcut" in text
    with pytest.raises(AllowlistError, match="prodcut: Extra inputs are not permitted"):
        Allowlist.from_yaml(text)


def test_regex_on_hostile_agent_runs_in_linear_time() -> None:
    allow = load('agents: [{regex: "(a+)+$"}]')
    # Exponential with backtracking engines; RE2 answers at once (a hang would fail the suite).
    assert allow.decide("a" * 1024 + "!").verdict == "unlisted"


@pytest.mark.parametrize(
    ("agent", "verdict"),
    [
        (KUBECTL, "listed"),
        ("kube-apiserver/v1.20.2 (linux/amd64) kubernetes/faecb19", "listed"),
        (
            "kube-controller-manager/v1.28.2 (linux/amd64) kubernetes/89a4ea3/"
            "system:serviceaccount:kube-system:deployment-controller",
            "listed",
        ),
        ("Helm/3.14.2", "listed"),
        ("kubectl-dispatcher/v1.0 (linux/amd64)", "listed"),
        ("peirates/v0.0.0 (linux/amd64) kubernetes/$Format", "denied"),
        ("python-requests/2.34.2", "denied"),
        ("curl/7.88.1", "denied"),
        ("trufflehog/3.63", "denied"),
        ("Go-http-client/1.1", "denied"),
        ("kc-renamed/v1.32.4 (linux/amd64) kubernetes/4cb5f07", "unlisted"),
        ("OpenAPI-Generator/29.0.0/python", "unlisted"),
    ],
)
def test_default_allowlist_verdicts(agent: str, verdict: str) -> None:
    assert default_allowlist().decide(agent).verdict == verdict


def test_package_never_uses_python_re_on_untrusted_input() -> None:
    package = Path(__file__).parents[2] / "webhook"
    offenders = [
        str(path)
        for path in package.rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip() in ("import re", "from re import *") or line.strip().startswith("from re import")
    ]
    assert offenders == []


# --- Only characters that look like themselves can list an agent (issue 12, item 10) ---

LISTED = (
    KUBECTL,
    "kube-scheduler/v1.30.2 (linux/amd64) kubernetes/3968350",
    "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/leader-election",
    "helm/v3.14.0",
)
LOOK_ALIKE_ALLOWLIST = 'agents: ["kubectl/*", "kube-*", {regex: "^helm/v3\\\\."}, {product: kubectl}]'


def _ascii_look_alikes() -> dict[str, list[str]]:
    """Every non-ASCII character whose NFKC form, case-folded, is one ASCII character, by that
    character: computed from the Unicode database, independently of the code under test."""
    table: dict[str, list[str]] = {}
    for code in range(0x80, sys.maxunicode + 1):
        ch = chr(code)
        folded = unicodedata.normalize("NFKC", ch).casefold()
        if len(folded) == 1 and folded.isascii() and folded.isprintable():
            table.setdefault(folded, []).append(ch)
    return table


LOOK_ALIKES = _ascii_look_alikes()
# Invisible characters named in the issue and SECURITY.md, plus every Default_Ignorable_Code_Point
# range of DerivedCoreProperties.txt written out here (not imported from the code under test).
INVISIBLE = [
    "\u00ad", "\u034f", "\u061c", "\u115f", "\u1160", "\u17b4", "\u17b5", "\u180b", "\u180e",
    "\u180f", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2060",
    "\u2064", "\u2066", "\u2069", "\u206f", "\u3164", "\ufe00", "\ufe0f", "\ufeff", "\uffa0",
    "\U0001bca0", "\U0001d173", "\U000e0001", "\U000e0020", "\U000e007f", "\U000e0100",
    "\U000e01ef", "\u2800",
]  # fmt: skip


@pytest.mark.parametrize(
    "agent",
    [
        "\u212aubectl/v1.30.2 (linux/amd64) kubernetes/3968350",  # KELVIN SIGN folds to k in RE2
        "kube-\u017fcheduler/v1.30.2 (linux/amd64) kubernetes/3968350",  # LONG S folds to s
        "kubectl/v1.30.2\u034f (linux/amd64) kubernetes/3968350",
        "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350\u3164",
        "kubectl/v1.30.2\ufe0f (linux/amd64) kubernetes/3968350",
        "kubectl/v1.30.2 (linux/amd64) kubernetes/\uff13968350",  # fullwidth 3, inside the glob's *
        "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350\u0301",  # a combining mark
        "\u212aubectl/v1.30.2",  # product entry: parse() keeps the Kelvin sign, lower() would not
    ],
)
def test_look_alike_and_invisible_characters_never_list(agent: str) -> None:
    decision = load(LOOK_ALIKE_ALLOWLIST).decide(agent)
    assert decision.verdict == "unlisted"
    assert "look-alike" in decision.reason


def test_non_ascii_text_that_looks_like_itself_is_still_listed() -> None:
    allow = load(LOOK_ALIKE_ALLOWLIST)
    agent = "kubectl/v1.30.2 (linux/amd64; Ünïcode 日本語) kubernetes/3968350"
    assert allow.decide(agent).verdict == "listed"


@pytest.mark.parametrize("agent", ["\uff50eirates/1.0", "pei\u200brates/1.0", "PEI\u212a\u017f/1"])
def test_look_alikes_of_a_denied_agent_are_denied(agent: str) -> None:
    allow = load('denied: [{product: peirates}, "peiks/*"]')
    assert allow.decide(agent).verdict == "denied"


def test_every_character_re2_folds_onto_ascii_never_lists() -> None:
    import re2

    options = re2.Options()
    options.case_sensitive = False
    letter = re2.compile("[a-z]", options)
    folded = [chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    folded = [ch for ch in folded if letter.fullmatch(ch)]
    assert folded  # U+017F and U+212A at least
    allow = load('agents: ["*"]')
    assert [ch for ch in folded if allow.decide(f"a{ch}/1").verdict == "listed"] == []


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=40),
    st.sampled_from(INVISIBLE)
    | st.characters(categories=["Cf", "Cc", "Zl", "Zp", "Zs"], exclude_characters=" "),
    st.text(max_size=40),
    st.sampled_from(LISTED),
)
def test_an_agent_holding_an_invisible_character_is_never_listed(
    head: str, invisible: str, tail: str, listed: str
) -> None:
    allow = load('agents: ["*", "kubectl/*", "kube-*"]')
    assert allow.decide(head + invisible + tail).verdict != "listed"
    cut = len(head) % (len(listed) + 1)
    assert allow.decide(listed[:cut] + invisible + listed[cut:]).verdict != "listed"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LISTED), st.data())
def test_a_non_ascii_look_alike_of_a_listed_agent_is_never_listed(listed: str, data: st.DataObject) -> None:
    allow = load(LOOK_ALIKE_ALLOWLIST)
    assert allow.decide(listed).verdict == "listed"
    positions = [i for i, ch in enumerate(listed) if ch.casefold() in LOOK_ALIKES]
    chosen = data.draw(st.sets(st.sampled_from(positions), min_size=1, max_size=4))
    chars = list(listed)
    for i in chosen:
        chars[i] = data.draw(st.sampled_from(LOOK_ALIKES[listed[i].casefold()]))
    agent = "".join(chars)
    assert not agent.isascii()
    assert unicodedata.normalize("NFKC", agent).casefold() == listed.casefold()
    assert allow.decide(agent).verdict != "listed"


@pytest.mark.parametrize(
    "text",
    ['"\\e]0;x\\a": []', 'agents: [{glob: "a/*", "\\e[2J\\u202e": 1}]'],
    ids=["top-level key", "entry key"],
)
def test_an_error_message_escapes_the_keys_the_file_chose(text: str) -> None:
    with pytest.raises(AllowlistError) as caught:
        load(text)
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message and "\u202e" not in message
    assert "\\x1b" in message
