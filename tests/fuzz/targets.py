"""Fuzz targets: each takes bytes, feeds a parser of attacker-reachable input, checks invariants.

A target may only raise AssertionError (an invariant broke) or let an unexpected exception
escape (a crash); expected rejections (AllowlistError, MalformedEvent) are part of the contract.
Used by hypothesis tests in ``test_fuzz.py`` and by atheris (``run_atheris.py``, ``make fuzz``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from webhook import useragent
from webhook.allowlist import Allowlist, AllowlistError
from webhook.audit import MalformedEvent, parse_event
from webhook.detect import Detector

UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
_SCAN_ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*", "kube-*"]\ndenied: [{product: peirates}]')


def assert_inert(text: str, cap: int) -> None:
    assert len(text) <= cap, (len(text), cap)
    for ch in text:
        assert ch == " " or (unicodedata.category(ch) not in UNSAFE and ch != "\ufffd"), repr(ch)


def useragent_target(data: bytes) -> None:
    agent = data.decode("utf-8", errors="surrogateescape" if len(data) % 2 else "replace")
    parsed = useragent.parse(agent)
    assert parsed.raw == agent
    assert_inert(useragent.display(agent), useragent.DISPLAY_MAX)
    assert_inert(useragent.display(agent, max_len=120), 120)
    if useragent.has_unsafe_chars(agent):
        assert _SCAN_ALLOWLIST.decide(agent).verdict != "listed"


def allowlist_target(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        allow = Allowlist.from_yaml(text, source="fuzz.yaml")
    except AllowlistError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        assert "\n" not in str(exc).split(": ", 1)[0]
        return
    for agent in ("kubectl/v1.30.2 (linux/amd64) kubernetes/3968350", "a" * 1024 + "!", "", "x\u202e"):
        decision = allow.decide(agent, user="u", groups=["g"], namespace="n")
        assert decision.verdict in ("listed", "unlisted", "denied")
        if "\u202e" in agent:
            assert decision.verdict != "listed"


def audit_line_target(data: bytes) -> None:
    try:
        event = parse_event(data)
    except MalformedEvent as exc:
        assert len(str(exc)) < 300
        return
    detector = Detector(_SCAN_ALLOWLIST)
    for finding in [*detector.process(event), *detector.flush()]:
        assert_inert(finding.user_agent.display, useragent.DISPLAY_MAX)
        assert finding.user_agent.original == event.user_agent


TARGETS: dict[str, Callable[[bytes], None]] = {
    "useragent": useragent_target,
    "allowlist": allowlist_target,
    "audit_line": audit_line_target,
}
