from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from webhook.core.allowlist import Allowlist, Decision, default_allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.config import DetectorConfig
from webhook.detect.detector import Detector
from webhook.detect.prefilter import Prefilter

ACCEPTANCE_ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*", "kube-*"]')

EXPECTED = {
    ("mallory", "python-requests/2.34.2"),
    ("mallory", "python-requests/2.25.1"),
    ("mallory", "curl/7.88.1"),
    ("mallory", "peirates/v0.0.0 (linux/amd64) kubernetes/$Format"),
    ("mallory", None),
    ("mallory", "A" * 1024 + "...TRUNCATED"),
    ("mallory", "kubectl/v1.30.0 \u202e(evil) \u200b"),
    ("system:anonymous", "curl/7.88.1"),
    ("dev-alice", "kc-renamed/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),
}


def run(lines: list[bytes], allowlist: Allowlist = ACCEPTANCE_ALLOWLIST, **config: Any) -> list[Finding]:
    detector = Detector(allowlist, config=DetectorConfig(**config))
    out: list[Finding] = []
    for line in lines:
        out.extend(detector.process(parse_event(line)))
    out.extend(detector.flush())
    return out


def test_recorded_traffic_gives_exactly_the_expected_findings(audit_lines: list[bytes]) -> None:
    findings = run(audit_lines)
    assert {(f.user.name, f.user_agent.original) for f in findings} == EXPECTED
    assert len(findings) == len(EXPECTED)
    assert all(f.rule.name == "unusual-agent-forbidden" for f in findings)


def test_genuine_kubectl_refusals_give_nothing_even_impersonated(audit_lines: list[bytes]) -> None:
    kubectl = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
    assert [f for f in run(audit_lines) if f.user_agent.original == kubectl] == []


def test_finding_carries_ecs_fields_and_threat(audit_lines: list[bytes]) -> None:
    (finding,) = [f for f in run(audit_lines) if f.user_agent.original == "python-requests/2.34.2"]
    doc = json.loads(orjson.dumps(finding.to_dict()))
    assert doc["event"]["kind"] == "alert"
    assert doc["rule"]["name"] == "unusual-agent-forbidden"
    assert doc["user"]["name"] == "mallory"
    assert doc["source"]["ip"] == "127.0.0.1"
    assert doc["kubernetes"]["audit"]["verb"] == "list"
    assert doc["kubernetes"]["audit"]["objectRef"]["resource"] == "secrets"
    assert doc["kubernetes"]["audit"]["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert {t["tactic"]["id"] for t in doc["threat"]} == {"TA0002", "TA0007"}
    assert all(t["technique"][0]["id"] == "T1613" for t in doc["threat"])
    assert doc["event"]["count"] == 1 and doc["event"]["start"] == doc["event"]["end"] == doc["@timestamp"]
    assert doc["event"]["severity"] == 47 and doc["ua_sentinel"]["severity"] == "medium"


def test_display_form_of_a_bidi_agent_is_escaped(audit_lines: list[bytes]) -> None:
    (finding,) = [f for f in run(audit_lines) if f.user_agent.original and "\u202e" in f.user_agent.original]
    assert finding.user_agent.display == "kubectl/v1.30.0 \\u202e(evil) \\u200b"
    reason = finding.ua_sentinel["verdict"]["reason"]
    assert reason == "agent holds control, bidi, invisible or look-alike characters"


def test_denied_agent_is_high_severity(audit_lines: list[bytes]) -> None:
    allow = Allowlist.from_yaml('agents: ["kubectl/*"]\ndenied: [{product: peirates}]')
    (finding,) = [f for f in run(audit_lines, allow) if f.user_agent.name == "peirates"]
    assert finding.ua_sentinel["severity"] == "high"
    assert finding.event.severity == 73
    assert finding.ua_sentinel["verdict"]["entry"] == "denied[0] (product 'peirates')"


def _forbidden_template(audit_lines: list[bytes], agent: str) -> dict[str, Any]:
    for line in audit_lines:
        raw: dict[str, Any] = json.loads(line)
        if (
            raw.get("userAgent") == agent
            and raw["stage"] == "ResponseComplete"
            and raw.get("responseStatus", {}).get("code") == 403
        ):
            return raw
    raise AssertionError(agent)


def _scan(template: dict[str, Any], n: int, start: dt.datetime, step: dt.timedelta) -> list[bytes]:
    out = []
    for i in range(n):
        raw = json.loads(json.dumps(template))
        raw["auditID"] = f"scan-{i:05d}"
        raw["objectRef"] = {"resource": f"res{i % 7}", "apiVersion": "v1"}
        raw["stageTimestamp"] = (start + i * step).isoformat().replace("+00:00", "Z")
        out.append(orjson.dumps(raw))
    return out


def test_a_scanner_is_one_finding_then_one_total(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.34.2")
    start = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    lines = _scan(template, 500, start, dt.timedelta(milliseconds=100))
    findings = run(lines)
    assert [f.event.sequence for f in findings] == [1, 2]
    first, total = findings
    assert first.id == total.id
    assert first.event.count == 1 and total.event.count == 500
    assert total.event.start == "2026-11-27T12:00:00Z"
    assert len(total.ua_sentinel["aggregate"]["resources"]) == 7
    assert len(total.ua_sentinel["aggregate"]["audit_ids"]) == 20
    assert total.ua_sentinel["aggregate"]["truncated"]


def test_a_new_window_opens_after_the_window_ends(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    start = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    lines = _scan(template, 4, start, dt.timedelta(minutes=4))  # 0, 4, 8, 12 min
    findings = run(lines, window=dt.timedelta(minutes=10))
    assert [(f.event.sequence, f.event.count) for f in findings] == [(1, 1), (2, 3), (1, 1)]
    assert findings[0].id == findings[1].id != findings[2].id


def test_window_bound_evicts_the_oldest_and_counts_it(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    detector = Detector(ACCEPTANCE_ALLOWLIST, config=DetectorConfig(max_windows=10))
    for i in range(25):
        raw = dict(template, auditID=f"a{i}", userAgent=f"scanner-{i}/1.0")
        detector.process(parse_event(raw))
    assert detector.open_windows == 10
    assert detector.stats.windows_evicted == 15
    assert detector.stats.findings == 25


def test_finding_ids_are_stable_across_snapshot_and_restore(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    start = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    lines = _scan(template, 10, start, dt.timedelta(seconds=1))
    whole = run(lines)
    first = Detector(ACCEPTANCE_ALLOWLIST)
    part = [f for line in lines[:4] for f in first.process(parse_event(line))]
    state = json.loads(json.dumps(first.snapshot()))
    second = Detector(ACCEPTANCE_ALLOWLIST)
    second.restore(state)
    part += [f for line in lines[4:] for f in second.process(parse_event(line))]
    part += second.flush()
    assert [(f.id, f.event.count, f.event.sequence) for f in part] == [
        (f.id, f.event.count, f.event.sequence) for f in whole
    ]


def test_prefilter_keeps_every_line_that_gives_a_finding(audit_lines: list[bytes]) -> None:
    static = Prefilter(None)  # the allowlist-independent needles only
    kept = [line for line in audit_lines if static.matches(line)]
    assert len(kept) < len(audit_lines) / 5
    assert run(kept) == run(audit_lines)


T0 = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)


def _at(template: dict[str, Any], agent: str, when: dt.datetime, audit_id: str) -> bytes:
    stamp = when.isoformat().replace("+00:00", "Z")
    raw = dict(
        template, auditID=audit_id, userAgent=agent, stageTimestamp=stamp, requestReceivedTimestamp=stamp
    )
    return orjson.dumps(raw)


def _unusual(findings: list[Finding]) -> list[tuple[str | None, int, int]]:
    return [
        (f.user_agent.original, f.event.sequence, f.event.count)
        for f in findings
        if f.rule.name == "unusual-agent-forbidden"
    ]


def test_windows_close_in_time_order_not_in_the_order_they_opened(audit_lines: list[bytes]) -> None:
    """Events of several apiservers arrive out of order: a window opened later may start earlier."""
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    detector = Detector(ACCEPTANCE_ALLOWLIST)
    seen: list[Finding] = []
    for line in (
        _at(template, "late/1", T0 + dt.timedelta(minutes=5), "a1"),  # opens first, ends at 12:15
        _at(template, "early/1", T0, "b1"),  # opens second, ends at 12:10
        _at(template, "early/1", T0 + dt.timedelta(minutes=1), "b2"),
        _at(template, "other/1", T0 + dt.timedelta(minutes=12), "c1"),  # 12:12: early's window is over
    ):
        seen.extend(detector.process(parse_event(line)))
    assert ("early/1", 2, 2) in _unusual(seen), "early's total comes out at 12:12, before the flush"
    assert ("late/1", 2, 1) not in _unusual(seen)


def test_one_event_dated_far_ahead_holds_back_no_window(audit_lines: list[bytes]) -> None:
    """A refusal stamped in the year 2999 (forged, or a broken clock) neither moves the clock
    there nor opens a window that never closes: the same principal's later refusals still come
    out as totals and new findings while the log is read, not only at the end."""
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    detector = Detector(ACCEPTANCE_ALLOWLIST)
    seen: list[Finding] = []
    lines = [
        _at(template, "other/1", T0, "o1"),
        _at(template, "curl/7", dt.datetime(2999, 1, 1, tzinfo=dt.UTC), "f1"),
        *(_at(template, "curl/7", T0 + dt.timedelta(minutes=m), f"r{m}") for m in range(1, 31)),
    ]
    for line in lines:
        seen.extend(detector.process(parse_event(line)))
    watermark = detector.watermark
    assert watermark is not None and watermark <= (T0 + dt.timedelta(minutes=40)).timestamp()
    curl = [(sequence, count) for agent, sequence, count in _unusual(seen) if agent == "curl/7"]
    # the forged refusal and the next 19 close at 12:20 (the clock held 10 minutes past 12:00),
    # then the windows of 12:20 and 12:30
    assert curl == [(1, 1), (2, 20), (1, 1), (2, 10), (1, 1)]


def test_an_event_the_detector_cannot_take_is_counted_and_skipped(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    detector = Detector(ACCEPTANCE_ALLOWLIST)
    seen: list[Finding] = []
    for stamp, agent in (
        ("2026-11-27T12:00:00Z", "curl/1"),
        ("9999-12-31T23:59:59.999999Z", "curl/2"),
        ("0001-01-01T00:00:00+01:00", "curl/3"),
        ("2026-11-27T12:00:01Z", "curl/4"),
    ):
        raw = dict(template, userAgent=agent, stageTimestamp=stamp, requestReceivedTimestamp=stamp)
        seen.extend(detector.process(parse_event(raw)))
        assert (detector.last_rejection is None) == (agent in {"curl/1", "curl/4"})
    assert [agent for agent, _, _ in _unusual(seen)] == ["curl/1", "curl/4"]
    assert detector.stats.rejected == 2


class _CountingAllowlist(Allowlist):
    """The built-in list, counting the verdicts asked of it."""

    def __init__(self) -> None:
        base = default_allowlist()
        super().__init__([c.entry for c in base.agents], [c.entry for c in base.denied])
        self.decided = 0

    def decide(self, agent: str | None, **scope: Any) -> Decision:
        self.decided += 1
        return super().decide(agent, **scope)


def _success(agent: str, audit_id: str) -> bytes:
    return orjson.dumps(
        {
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "verb": "list",
            "requestURI": "/api/v1/pods",
            "user": {"username": "alice"},
            "userAgent": agent,
            "responseStatus": {"code": 200},
            "stageTimestamp": "2026-11-27T10:00:00.000001Z",
            "annotations": {"authorization.k8s.io/decision": "allow"},
        }
    )


def test_a_success_from_an_agent_no_denied_entry_matches_asks_no_verdict() -> None:
    """Per-event work proportional to what the event can change: a 200 can only be a
    known-bad-agent finding, so without a denied pattern matching its agent nothing is decided."""
    allowlist = _CountingAllowlist()
    detector = Detector(allowlist)
    for n in range(50):
        assert detector.process(parse_event(_success("kubectl/v1.30.0 (linux/amd64)", f"ok-{n}"))) == []
    assert allowlist.decided == 0
    (finding,) = detector.process(parse_event(_success("peirates/v1.1.0", "bad-1")))
    assert finding.rule.name == "known-bad-agent" and allowlist.decided == 1


@given(
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.integers(0, 3),
)
def test_the_clock_reads_the_apiservers_timestamps_as_datetime_does(when: dt.datetime, repeat: int) -> None:
    """The whole second parsed once and the microseconds added give fromisoformat's float."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    expected = dt.datetime.fromisoformat(text).timestamp()
    detector = Detector(ACCEPTANCE_ALLOWLIST)
    for n in range(repeat + 1):
        event = parse_event({"auditID": f"a{n}", "stage": "RequestReceived", "stageTimestamp": text})
        detector.process(event)
        assert detector.watermark == expected
