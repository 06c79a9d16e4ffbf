"""Fuzz targets: each takes bytes, feeds a parser of attacker-reachable input, checks invariants.

A target may only raise AssertionError (an invariant broke) or let an unexpected exception
escape (a crash); expected rejections (AllowlistError, MalformedEvent) are part of the contract.
Used by hypothesis tests in ``test_fuzz.py`` and by atheris (``run_atheris.py``, ``make fuzz``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import orjson

from webhook.core import useragent
from webhook.core.allowlist import Allowlist, AllowlistError
from webhook.core.audit import AGENT_ANNOTATION, MalformedEvent, parse_event
from webhook.detect.detector import Detector
from webhook.serve import admission
from webhook.serve.join import JoinResult, Pending

UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
_SCAN_ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*", "kube-*"]\ndenied: [{product: peirates}]')


def assert_inert(text: str, cap: int) -> None:
    assert len(text) <= cap, (len(text), cap)
    assert not useragent.has_unsafe_chars(text), text  # no invisible, combining or look-alike either
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


def admission_target(data: bytes) -> None:
    """Half the input is the review body, the rest the agent the join found for it."""
    cut = len(data) // 2
    try:
        review = admission.parse_review(data[:cut] or data)
    except admission.ReviewError as exc:
        assert len(str(exc)) < 400
        return
    agent = data[cut:].decode("utf-8", "surrogateescape") or None
    pending = Pending(audit_id="a", agent=agent, key=None, arrived=0.0, shared=False)  # type: ignore[arg-type]
    for mode in ("observe", "warn", "enforce"):
        outcome = admission.decide(
            review.request, JoinResult((pending,)), _SCAN_ALLOWLIST, admission.Policy(mode=mode)
        )
        for warning in outcome.warnings:
            assert_inert(warning, admission.WARNING_MAX)
        assert_inert(outcome.annotations.get(AGENT_ANNOTATION, ""), useragent.DISPLAY_MAX)
        if outcome.verdict == "listed" or mode != "enforce":
            assert outcome.allowed
        body = admission.render(review.api_version, review.request.uid, outcome)
        rendered = orjson.loads(body)
        assert rendered["apiVersion"] == review.api_version
        assert rendered["response"]["uid"] == review.request.uid
        assert rendered["response"]["allowed"] is outcome.allowed


TARGETS: dict[str, Callable[[bytes], None]] = {
    "admission": admission_target,
    "useragent": useragent_target,
    "allowlist": allowlist_target,
    "audit_line": audit_line_target,
}
