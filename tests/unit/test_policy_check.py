"""`apiserver-config --check-policy`: each blind spot named with its rule, exit status 1 when any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webhook.tools import apiserver_config as ac
from webhook.tools.audit_policy import parse_policy
from webhook.tools.policy_check import check
from webhook.tools.policy_merge import merge, render

POLICIES = Path(__file__).parents[1] / "data" / "policies"


def spots(name: str) -> set[tuple[str, str]]:
    return {(s.where, s.kind) for s in check(parse_policy((POLICIES / name).read_text()))}


def test_kubernetes_docs_example_policy() -> None:
    assert spots("k8s-docs-example.yaml") == {
        # policy-wide omitStages RequestReceived: every rule that can see a write loses the join
        *((f"rules[{i}]", "join") for i in (0, 1, 2, 5, 6, 7, 8)),
        ("rules[2]", "detection"),  # None: configmap controller-leader
        ("rules[3]", "detection"),  # None: kube-proxy's watches (no write among them: no join spot)
        ("rules[4]", "detection"),  # None: /api*, /version for every authenticated user
    }


def test_gke_default_policy() -> None:
    found = spots("gke-configure-helper.yaml")
    assert {w for w, k in found if k == "detection"} == {f"rules[{i}]" for i in range(10)}  # the None rules
    # writes hidden by None (update on endpoints/configmaps, events) and every RequestReceived omission
    assert {w for w, k in found if k == "join"} == {f"rules[{i}]" for i in (4, 6, 9, *range(10, 17))}
    # it ends with a catch-all, so no request goes unmatched
    assert not [w for w, _ in found if w == "no rule matched"]


def test_the_report_names_who_is_hidden() -> None:
    text = (POLICIES / "gke-configure-helper.yaml").read_text()
    lines = run("--check-policy", "-", stdin=text).stdout.splitlines()
    assert (
        "rules[9]: detection blind: level None hides events (core group): a refusal there is never a finding"
        in lines
    )
    assert any(
        line.startswith("rules[0]: detection blind: level None hides users system:kube-proxy; verbs watch;")
        for line in lines
    )


def test_no_rule_matched_is_a_blind_spot() -> None:
    text = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  users: [alice]\n"
    assert ("no rule matched", "detection") in {(s.where, s.kind) for s in check(parse_policy(text))}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "apiserver-config", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", ["k8s-docs-example.yaml", "gke-configure-helper.yaml", "realistic.yaml"])
def test_exit_1_when_blind_and_0_once_merged(name: str, tmp_path: Path) -> None:
    blind = run("--check-policy", str(POLICIES / name))
    assert blind.returncode == 1, blind.stderr
    merged = run("--policy", str(POLICIES / name))
    assert merged.returncode == 0, merged.stderr
    (tmp_path / "merged.yaml").write_text(merged.stdout)
    clean = run("--check-policy", str(tmp_path / "merged.yaml"))
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.endswith("no blind spot)\n")


def test_our_own_policy_is_not_blind() -> None:
    assert check(parse_policy(ac.AUDIT_POLICY)) == []


def test_merge_of_the_merged_policy_changes_nothing() -> None:
    original = parse_policy((POLICIES / "gke-configure-helper.yaml").read_text())
    once = parse_policy(render(original, merge(original), "gke"))
    twice = parse_policy(render(once, merge(once), "merged"))
    assert twice.rules == once.rules


def test_a_bad_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n")
    result = run("--check-policy", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    levels = "None, Metadata, Request, RequestResponse"
    expected = (
        f"ua-sentinel apiserver-config: {bad}: rules[0].level must be one of {levels}, not 'Everything'\n"
    )
    assert result.stderr == expected
    missing = run("--policy", str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 1 and "nowhere.yaml" in missing.stderr and "Traceback" not in missing.stderr
