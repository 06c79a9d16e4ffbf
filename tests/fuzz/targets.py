"""Fuzz targets: each takes bytes, feeds a parser of attacker-reachable input, checks invariants.

A target may only raise AssertionError (an invariant broke) or let an unexpected exception
escape (a crash); expected rejections (AllowlistError, MalformedEvent) are part of the contract.
Used by hypothesis tests in ``test_fuzz.py`` and by atheris (``run_atheris.py``, ``make fuzz``).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable
from pathlib import Path

import orjson

from webhook.core import useragent
from webhook.core.allowlist import Allowlist, AllowlistError
from webhook.core.audit import AGENT_ANNOTATION, MAX_LINE_BYTES, MalformedEvent, parse_event
from webhook.detect.detector import Detector
from webhook.inputs import scan
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


_AUDIT_LOG = Path(__file__).parents[1] / "data" / "audit" / "audit.log"
_REFUSAL = orjson.loads(next(line for line in _AUDIT_LOG.read_bytes().splitlines() if b'"forbid"' in line))
_EXTREME_TIMES = (
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "1970-01-01T00:00:00Z",
    "",
    "2026-13-01T00:00:00Z",
    "2999-01-01T00:00:00Z",
)
_T0 = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
_SCAN_PREFILTER = Detector(_SCAN_ALLOWLIST).prefilter


def _time_of(record: bytes) -> str:
    """Any event time: a structured one (any year, offset, microsecond), one near the others,
    raw text, or a known extreme."""
    mode, rest = record[0] % 4, record[1:].ljust(6, b"\0")
    if mode == 0:
        offset = dt.timedelta(minutes=int.from_bytes(rest[4:6], "big") % (2 * 1439 + 1) - 1439)
        when = dt.datetime(
            1 + int.from_bytes(rest[0:2], "big") % 9999,
            1 + rest[2] % 12,
            1 + rest[3] % 28,
            rest[4] % 24,
            rest[5] % 60,
            rest[0] % 60,
            int.from_bytes(rest[1:4], "big") % 1_000_000,
            tzinfo=dt.timezone(offset),
        )
        return when.isoformat()
    if mode == 1:
        seconds = int.from_bytes(rest[0:3], "big", signed=True)
        return (_T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    if mode == 2:
        return rest.decode("latin-1")
    return _EXTREME_TIMES[rest[0] % len(_EXTREME_TIMES)]


def detector_times_target(data: bytes) -> None:
    """Refusals of a few unlisted agents at arbitrary times (8 bytes each: the agent, the time).

    The Detector never raises, rejects only events whose time no datetime holds, gives a finding
    to every agent one of whose refusals it took, never moves its clock backwards nor past the
    newest time it took, and keeps no window after a flush.
    """
    detector = Detector(_SCAN_ALLOWLIST)
    accepted: set[str] = set()
    found: set[str | None] = set()
    newest = float("-inf")
    clock = detector.watermark
    for start in range(0, len(data), 8):
        record = data[start : start + 8]
        agent = f"curl/{record[0] % 4}"
        stamp = _time_of(record[1:] or b"\0")
        event = parse_event(
            dict(_REFUSAL, userAgent=agent, stageTimestamp=stamp, requestReceivedTimestamp=stamp)
        )
        found.update(f.user_agent.original for f in detector.process(event))
        usable: bool | None = None  # None: no parseable time, judged all the same
        epoch = 0.0
        try:
            parsed = dt.datetime.fromisoformat(stamp)
        except ValueError:
            parsed = None
        if parsed is not None:
            try:
                epoch = parsed.timestamp()
                dt.datetime.fromtimestamp(epoch, dt.UTC)
                usable = True
            except (ValueError, OverflowError, OSError):
                usable = False
        if usable is False:
            assert detector.last_rejection is not None
            continue
        assert detector.last_rejection is None, detector.last_rejection
        accepted.add(agent)
        if usable:
            newest = max(newest, epoch)
        now = detector.watermark
        if clock is not None:
            assert now is not None and now >= clock
        if now is not None and newest != float("-inf"):
            assert now <= newest
        clock = now
    found.update(f.user_agent.original for f in detector.flush())
    assert accepted <= found, (accepted, found)
    assert detector.open_windows == 0


def _shaped(line: bytes) -> bool:
    return line[:1] == b"{" and line[-1:] == b"}"


def scan_target(data: bytes) -> None:
    """The block scanner against a line-by-line reference: every line counted, every line of the
    wrong shape malformed with its number, every line the Detector flags on its own a hit."""
    block = data if data.endswith(b"\n") else data + b"\n"
    result = scan.ScanResult()
    scan.scan_block((block, 0, len(block)), result, _SCAN_PREFILTER)
    lines = block.split(b"\n")[:-1]
    assert result.lines == len(lines) and result.size == len(block)
    hits = {number: line for number, line in result.hits}
    malformed = {number for number, _ in result.malformed}
    assert len(hits) == len(result.hits) and not (hits.keys() & malformed)
    for number, raw in enumerate(lines, start=1):
        line = raw.strip(b" \t\r")
        if not line:
            assert number not in hits and number not in malformed
            continue
        if len(line) <= MAX_LINE_BYTES and not _shaped(line):
            assert number in malformed, (number, line[:80])
            continue
        try:
            event = parse_event(line)
        except MalformedEvent:
            continue
        if Detector(_SCAN_ALLOWLIST).process(event):
            assert number in hits, (number, line[:200])
            assert parse_event(hits[number]) == event


TARGETS: dict[str, Callable[[bytes], None]] = {
    "admission": admission_target,
    "useragent": useragent_target,
    "allowlist": allowlist_target,
    "audit_line": audit_line_target,
    "detector_times": detector_times_target,
    "scan": scan_target,
}
