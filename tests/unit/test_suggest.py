"""`ua-sentinel suggest`: counts per agent and product, and a proposal that never lists known-bad."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.tools.suggest import propose, render_report, render_yaml, survey

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"


def recorded() -> list[io.BytesIO]:
    return [io.BytesIO(path.read_bytes()) for path in AUDIT_LOGS]


def test_every_agent_is_counted_once_per_completed_request() -> None:
    result = survey(recorded())
    agents = result.agents()
    assert result.lines == 1630 and result.malformed == 0
    kubectl = agents[KUBECTL]
    assert (kubectl.requests, kubectl.forbidden) == (81, 8)
    assert kubectl.requests == kubectl.allowed + kubectl.forbidden + kubectl.other
    assert set(kubectl.users) == {"admin", "dev-alice", "mallory"}
    assert agents[None].requests == 1 and agents[None].forbidden == 1  # s17: no userAgent key
    assert agents["python-requests/2.34.2"].allowed == 2 and agents["python-requests/2.34.2"].forbidden == 1


def test_the_proposal_covers_common_benign_products_and_never_known_bad_ones() -> None:
    result = survey(recorded())
    proposal = propose(result.agents(), default_allowlist(), min_requests=1, max_forbidden_share=1.0)
    globs = {entry["glob"] for entry in proposal.entries}
    assert {"kube-apiserver/*", "kubectl/*", "kubectl-dispatcher/*", "kc-renamed/*"} <= globs
    for bad in ("python-requests", "curl", "peirates", "go-http-client", "trufflehog"):
        assert f"{bad}/*" not in globs
        assert proposal.notes[bad].startswith("never proposed: known-bad")
    assert "(no agent)" not in {g.split("/")[0] for g in globs}
    assert "spoofed/malformed agent(s) left out" in proposal.notes["kubectl"]
    # Even an allowlist that lists a scripting client cannot make suggest propose it.
    lax = Allowlist.from_yaml('agents: ["python-requests/*", "curl/*"]')
    assert not {"python-requests/*", "curl/*"} & {
        e["glob"] for e in propose(result.agents(), lax, min_requests=1).entries
    }


def test_rare_or_often_refused_products_are_not_proposed() -> None:
    result = survey(recorded())
    proposal = propose(result.agents(), default_allowlist(), min_requests=20, max_forbidden_share=0.05)
    assert proposal.notes["kc-renamed"].startswith("not common")
    assert proposal.notes["kubectl"].startswith("not benign: 8 of 81")
    assert [e["glob"] for e in proposal.entries] == ["kube-apiserver/*", "kubectl-dispatcher/*"]


def test_proposed_yaml_is_a_valid_allowlist_that_keeps_the_denied_list() -> None:
    result = survey(recorded())
    text = render_yaml(propose(result.agents(), default_allowlist(), min_requests=5), default_allowlist())
    allowlist = Allowlist.from_yaml(text)
    assert len(allowlist.denied) == len(default_allowlist().denied)
    assert allowlist.decide(KUBECTL).verdict == "listed"
    assert allowlist.decide("peirates/v0.0.0 (linux/amd64) kubernetes/$Format").verdict == "denied"
    assert allowlist.decide("kubectl/v1.30.0 \u202e(evil) \u200b").verdict == "unlisted"


def _line(agent: str, user: str, when: dt.datetime, code: int = 200) -> bytes:
    stamp = when.isoformat().replace("+00:00", "Z")
    return json.dumps(
        {
            "kind": "Event",
            "auditID": f"{agent}-{when.timestamp()}",
            "stage": "ResponseComplete",
            "userAgent": agent,
            "user": {"username": user},
            "responseStatus": {"code": code},
            "stageTimestamp": stamp,
            "annotations": {"authorization.k8s.io/decision": "allow"},
        }
    ).encode()


def test_a_product_of_one_service_account_is_scoped_to_it_and_days_cut_old_traffic() -> None:
    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    sa = "system:serviceaccount:argocd:argocd-application-controller"
    lines = [
        _line("argocd-application-controller/v2.10.1 (linux/amd64) kubernetes/a2b3c4d", sa, now)
        for _ in range(30)
    ]
    lines += [_line("old-tool/1.0", "bob", now - dt.timedelta(days=20)) for _ in range(30)]
    result = survey([io.BytesIO(b"\n".join(lines) + b"\n")])
    recent = result.agents(days=7)
    assert "old-tool/1.0" not in recent and "old-tool/1.0" in result.agents()
    (entry,) = propose(recent, default_allowlist()).entries
    assert entry["glob"] == "argocd-application-controller/*" and entry["users"] == [sa]
    report = render_report(result, recent, propose(recent, default_allowlist()), default_allowlist())
    assert "proposed (scoped to its service accounts)" in report


def test_cli_prints_escaped_agents_and_writes_the_proposal(tmp_path: Path) -> None:
    out = tmp_path / "proposed.yaml"
    args = [sys.executable, "-m", "webhook", "suggest", "--min-requests", "5", "--write", str(out)]
    for path in AUDIT_LOGS:
        args += ["--audit-log", str(path)]
    result = subprocess.run(args, capture_output=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert "\u202e" not in text and "\\u202e" in text
    assert "python-requests: 5 requests - never proposed: known-bad" in text
    assert "--- proposed allowlist.yaml ---" in text
    assert yaml.safe_load(out.read_text())["agents"][0]["glob"] == "kube-apiserver/*"
    missing = subprocess.run(
        [sys.executable, "-m", "webhook", "suggest", "--audit-log", str(tmp_path / "nope.log")],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1 and "nope.log" in missing.stderr.decode()


def test_a_request_padded_past_the_line_limit_is_counted_with_its_agent() -> None:
    forbid = json.loads(
        next(line for path in AUDIT_LOGS for line in path.read_bytes().splitlines() if b'"forbid"' in line)
    )
    forbid.update(userAgent="padder/1.0", requestURI="/api/v1/secrets?PAD")
    padded = json.dumps(forbid).replace("PAD", "\\u0026" * 700_000).encode()
    result = survey([io.BytesIO(padded + b"\n")])
    assert result.lines == 1 and result.malformed == 0
    assert result.agents()["padder/1.0"].forbidden == 1
