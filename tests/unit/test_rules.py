"""The rules added to the Detector: forbidden-burst, known-bad-agent, new-agent-forbidden,
webhook-verdict correlation, and the per-allowlist pre-filter that must stay a superset."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.baseline import Baseline, family
from webhook.detect.config import DetectorConfig
from webhook.detect.detector import Detector
from webhook.detect.prefilter import Prefilter
from webhook.tools.replay import replay

from .test_detector import ACCEPTANCE_ALLOWLIST, _forbidden_template

T0 = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)


def stamp(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def event(template: dict[str, Any], i: int, when: dt.datetime, **changes: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(template))
    raw.update(
        auditID=f"ev-{i:05d}", stageTimestamp=stamp(when), requestReceivedTimestamp=stamp(when), **changes
    )
    return raw


def run(detector: Detector, events: list[dict[str, Any]]) -> list[Finding]:
    out = [f for raw in events for f in detector.process(parse_event(raw))]
    return out + detector.flush()


def by_rule(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule.name == rule]


def enumeration(
    template: dict[str, Any], n: int, step: dt.timedelta = dt.timedelta(milliseconds=200)
) -> list[Any]:
    return [
        event(
            template,
            i,
            T0 + i * step,
            requestURI=f"/api/v1/namespaces/ns{i % 5}/res{i}",
            objectRef={"resource": f"res{i}", "namespace": f"ns{i % 5}", "apiVersion": "v1"},
        )
        for i in range(n)
    ]


# -- forbidden-burst ---------------------------------------------------------------------
def test_forbidden_burst_fires_on_an_enumeration_of_50_resources(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    findings = by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), enumeration(template, 50)), "forbidden-burst")
    first, total = findings
    assert first.id == total.id and (first.event.sequence, total.event.sequence) == (1, 2)
    assert first.event.count == 10  # fired when the 10th distinct URI was refused
    assert total.event.count == 50 and total.ua_sentinel["burst"]["distinct"] == 32
    assert total.ua_sentinel["aggregate"]["truncated"]
    assert first.ua_sentinel["severity"] == "high"  # unlisted agent
    assert first.kubernetes["audit"]["auditID"] == "ev-00000"


def test_forbidden_burst_stays_silent_on_three_denials_or_a_slow_drip(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    assert by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), enumeration(template, 3)), "forbidden-burst") == []
    slow = enumeration(template, 50, step=dt.timedelta(seconds=10))  # 6 distinct per minute
    assert by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), slow), "forbidden-burst") == []
    same_uri = [event(template, i, T0 + dt.timedelta(seconds=i)) for i in range(50)]
    assert by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), same_uri), "forbidden-burst") == []


def test_forbidden_burst_thresholds_are_configurable_and_listed_agents_count(
    audit_lines: list[bytes],
) -> None:
    config = DetectorConfig(burst_threshold=3, burst_window=dt.timedelta(seconds=5))
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    assert (
        len(
            by_rule(
                run(Detector(ACCEPTANCE_ALLOWLIST, config=config), enumeration(template, 3)),
                "forbidden-burst",
            )
        )
        == 1
    )
    kubectl = dict(template, userAgent="kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07")
    found = run(Detector(ACCEPTANCE_ALLOWLIST), enumeration(kubectl, 20))
    assert by_rule(found, "unusual-agent-forbidden") == []
    (first, _total) = by_rule(found, "forbidden-burst")
    assert first.ua_sentinel["severity"] == "medium" and first.ua_sentinel["verdict"]["verdict"] == "listed"


# -- known-bad-agent -----------------------------------------------------------------------
def test_a_denied_agent_that_succeeds_is_a_known_bad_finding(audit_lines: list[bytes]) -> None:
    detector = Detector(default_allowlist())
    found = [f for line in audit_lines for f in detector.process(parse_event(line))] + detector.flush()
    bad = by_rule(found, "known-bad-agent")
    agents = {(f.user.name, f.user_agent.original) for f in bad}
    assert ("dev-alice", "python-requests/2.34.2") in agents  # s09: created a configmap
    assert ("dev-alice", "trufflehog/3.63") in agents  # s22: listed configmaps (reads count)
    assert ("dev-alice", "Go-http-client/1.1") in agents
    assert not any(a and a.startswith(("kubectl", "kc-renamed")) for _, a in agents)
    for finding in bad:
        assert finding.event.outcome == "success" and finding.event.type == ["allowed"]
        assert finding.ua_sentinel["severity"] == "high"
        assert finding.kubernetes["audit"]["responseStatus"]["code"] < 400
    assert (
        by_rule(
            run(Detector(ACCEPTANCE_ALLOWLIST), [json.loads(line) for line in audit_lines]), "known-bad-agent"
        )
        == []
    )


# -- new-agent-forbidden -------------------------------------------------------------------
def test_family_is_product_and_major_version_and_spoofs_stand_alone() -> None:
    assert family("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07") == "kubectl/1"
    assert family("kubectl/v1.30.0 (darwin/arm64) kubernetes/abc") == "kubectl/1"
    assert family("python-requests/2.34.2") == "python-requests/2"
    assert family(None) == "(none)"
    assert family("kubectl/v1.30.0 \u202e(evil) \u200b").startswith("exact:")
    assert family("A" * 1024 + "...TRUNCATED").startswith("exact:")


def test_a_family_is_new_once_per_baseline_window(audit_lines: list[bytes], tmp_path: Path) -> None:
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    baseline = Baseline(tmp_path / "b.sqlite", days=7)
    detector = Detector(ACCEPTANCE_ALLOWLIST, baseline=baseline)
    days = [0, 0.5, 3, 6.9, 14, 14.1]
    events = [event(template, i, T0 + dt.timedelta(days=d)) for i, d in enumerate(days)]
    events.insert(2, event(template, 99, T0 + dt.timedelta(days=1), userAgent="curl/7.1.0"))  # same family
    found = by_rule(run(detector, events), "new-agent-forbidden")
    assert [f.kubernetes["audit"]["auditID"] for f in found] == ["ev-00000", "ev-00004"]  # day 0, then day 14
    assert found[0].ua_sentinel["baseline"] == {"family": "curl/7", "days": 7}
    assert found[0].ua_sentinel["severity"] == "medium"
    baseline.close()


def test_a_restart_from_an_older_checkpoint_re_derives_the_same_new_agent_finding(
    audit_lines: list[bytes], tmp_path: Path
) -> None:
    template = _forbidden_template(audit_lines, "curl/7.88.1")
    events = [event(template, i, T0 + dt.timedelta(minutes=i)) for i in range(4)]
    path = tmp_path / "b.sqlite"
    first = Detector(ACCEPTANCE_ALLOWLIST, baseline=Baseline(path))
    snapshot = json.loads(json.dumps(first.snapshot()))
    before = by_rule(run(first, events), "new-agent-forbidden")
    assert first.baseline is not None
    first.baseline.close()  # the baseline was committed past the checkpoint: a crash after the flush
    again = Detector(ACCEPTANCE_ALLOWLIST, baseline=Baseline(path))
    again.restore(snapshot)
    after = by_rule(run(again, events), "new-agent-forbidden")
    assert [f.id for f in after] == [f.id for f in before] and len(before) == 1


# -- correlation ---------------------------------------------------------------------------
def _flagged(audit_lines: list[bytes], agent: str, verdict: str = "unlisted") -> dict[str, Any]:
    ok = next(
        json.loads(x)
        for x in audit_lines
        if b'"create"' in x and b'"ResponseComplete"' in x and b'"code":201' in x
    )
    ok["userAgent"] = agent
    ok["user"] = {"username": "mallory", "uid": "1002", "groups": ["system:authenticated"]}
    ok["annotations"]["ua-sentinel.example.com/user-agent-verdict"] = verdict
    return ok


def test_findings_carry_what_the_webhook_flagged_and_acting_plus_probing_escalates(
    audit_lines: list[bytes],
) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    flagged = _flagged(audit_lines, "python-requests/2.25.1")
    events = [event(flagged, 1, T0), event(template, 2, T0 + dt.timedelta(seconds=1))]
    (finding,) = by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), events), "unusual-agent-forbidden")
    related = finding.ua_sentinel["related"]
    assert related["count"] == 1 and related["acting"] == 1 and related["audit_ids"] == ["ev-00001"]
    assert related["verbs"] == ["create"] and related["verdicts"] == ["unlisted"]
    assert finding.ua_sentinel["severity"] == "high" and finding.ua_sentinel["escalated"]
    other = event(template, 3, T0 + dt.timedelta(seconds=2), userAgent="curl/7.88.1")
    (plain,) = by_rule(
        run(Detector(ACCEPTANCE_ALLOWLIST), [event(flagged, 1, T0), other]), "unusual-agent-forbidden"
    )
    assert "related" not in plain.ua_sentinel and plain.ua_sentinel["severity"] == "medium"


def test_a_flag_after_the_refusal_comes_out_in_the_window_total(audit_lines: list[bytes]) -> None:
    template = _forbidden_template(audit_lines, "python-requests/2.25.1")
    flagged = _flagged(audit_lines, "python-requests/2.25.1")
    events = [event(template, 1, T0), event(flagged, 2, T0 + dt.timedelta(seconds=5))]
    first, total = by_rule(run(Detector(ACCEPTANCE_ALLOWLIST), events), "unusual-agent-forbidden")
    assert "related" not in first.ua_sentinel
    assert (total.event.sequence, total.event.count) == (2, 1)
    assert total.ua_sentinel["related"]["count"] == 1 and total.ua_sentinel["severity"] == "high"


def test_correlation_memory_is_bounded(audit_lines: list[bytes]) -> None:
    detector = Detector(ACCEPTANCE_ALLOWLIST, config=DetectorConfig(max_related=10))
    for i in range(25):
        detector.process(parse_event(event(_flagged(audit_lines, f"tool-{i}/1.0"), i, T0)))
    assert len(detector.correlation) == 10 and detector.correlation.evicted == 15
    assert len(detector.snapshot()["correlation"]) == 10


# -- the pre-filter --------------------------------------------------------------------------
CUSTOM = Allowlist.from_yaml(
    'agents: ["kubectl/*"]\n'
    "denied:\n"
    '  - "*evil?tool*"\n'
    "  - {product: Sneaky}\n"
    '  - {glob: "ab*", users: [mallory]}\n'
    '  - "x<y>z*"\n'
)

agent_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "curl/8.0",
            "CURL/8",
            "python-requests/2.31.0",
            "Go-http-client/1.1",
            "kube-hunter",
            "xxevil-toolyy",
            "EVIL_TOOL",
            "  sneaky/1.0",
            "\u212aube-hunter",
            "ab",
            "x<y>z1",
            "peirates/v0.0.0 (linux/amd64) kubernetes/$Format",
            "kubectl/v1.30.0",
        ]
    ),
    st.builds(
        lambda a, b: a + b,
        st.sampled_from(["curl", "nmap", "nuclei", "evil-tool", "Sneaky/"]),
        st.text(max_size=10),
    ),
)


@settings(max_examples=300, deadline=None)
@given(agent=agent_text, ascii_json=st.booleans(), allowlist=st.sampled_from([default_allowlist(), CUSTOM]))
def test_prefilter_keeps_every_line_whose_agent_is_denied(
    agent: str, ascii_json: bool, allowlist: Allowlist
) -> None:
    raw = {
        "kind": "Event",
        "auditID": "x",
        "stage": "ResponseComplete",
        "userAgent": agent,
        "user": {"username": "mallory"},
        "responseStatus": {"code": 200},
    }
    line = json.dumps(raw, ensure_ascii=ascii_json).encode() if ascii_json else orjson.dumps(raw)
    if allowlist.decide(agent, user="mallory").verdict != "denied":
        return
    prefilter = Prefilter(allowlist)
    assert prefilter.matches(line)
    block = b"{}\n" + line + b"\n{}\n"
    spans = prefilter.hit_spans(block, 0, len(block))
    assert (3, 3 + len(line)) in spans


def test_a_regex_denied_entry_makes_every_line_count() -> None:
    prefilter = Prefilter(Allowlist.from_yaml('denied: [{regex: "^helm"}]'))
    assert prefilter.all_lines and prefilter.matches(b'{"anything": 1}')
    assert prefilter.hit_spans(b"a\nb\n", 0, 4) == [(0, 1), (2, 3)]


def test_replay_fast_path_finds_known_bad_successes_like_decoding_every_line(
    audit_lines: list[bytes], tmp_path: Path
) -> None:
    lines = []
    for n in range(40):  # many requests, a few of them by denied agents that succeed
        for line in audit_lines:
            lines.append(line.replace(b'"auditID":"', f'"auditID":"r{n}-'.encode()))
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join(lines) + b"\n")

    class Collect:
        def __init__(self) -> None:
            self.found: list[Finding] = []

        def deliver(self, finding: Finding) -> None:
            self.found.append(finding)

        def close(self) -> None:
            return None

    sink = Collect()
    replay([str(log)], Detector(default_allowlist()), sink)
    slow = Detector(default_allowlist())
    expected = [f for line in lines for f in slow.process(parse_event(line))] + slow.flush()
    assert [f.to_dict() for f in sink.found] == [f.to_dict() for f in expected]
    assert by_rule(sink.found, "known-bad-agent")
