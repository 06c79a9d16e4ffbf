"""observe / warn / enforce over a real server: what the apiserver (and kubectl) gets back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tests.integration.conftest import Launch
from tests.integration.server import ServeProcess
from tests.integration.traffic import admission, audit_batch, with_audit_id

ALLOWLIST = 'agents: ["kubectl/*"]\ndenied: [{product: peirates}]\n'


def _allowlist(tmp_path: Path) -> str:
    path = tmp_path / "allowlist.yaml"
    path.write_text(ALLOWLIST)
    return str(path)


def _ask(server: ServeProcess, audit_seq: int, admission_seq: int, **event_changes: Any) -> dict[str, Any]:
    """Post the recorded RequestReceived (optionally changed), then its admission call."""
    batch = audit_batch(audit_seq)
    for item in batch["items"]:
        item.update(event_changes)
    with server.client() as client:
        assert client.post("/audit", json=batch).status_code == 200
        answer = client.post("/validate", json=admission(admission_seq))
    assert answer.status_code == 200
    response: dict[str, Any] = answer.json()["response"]
    return response


def kubectl_prints(warning: str) -> str:
    """The apiserver quotes each warning into `Warning: 299 - "..."` (escaping `"` and `\\`);
    kubectl unquotes it and prints `Warning: <text>`."""
    header = '299 - "' + "".join("\\" + c if c in '"\\' else c for c in warning) + '"'
    quoted = header.removeprefix('299 - "').removesuffix('"')
    text, escaped = [], False
    for char in quoted:
        if char == "\\" and not escaped:
            escaped = True
            continue
        text.append(char)
        escaped = False
    return "Warning: " + "".join(text)


def test_warn_mode_warning_is_the_line_kubectl_prints(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "warn")
    response = _ask(server, 1404, 1405)  # s09: dev-alice, python-requests/2.34.2, create configmap
    assert response["allowed"] is True
    (warning,) = response["warnings"]
    assert kubectl_prints(warning) == (
        'Warning: user agent "python-requests/2.34.2" is not on this cluster\'s allowlist; '
        "this request was recorded"
    )
    assert len(warning) <= 120
    # The recorded kubectl output has the same shape: one `Warning: <text>` line per warning.
    recorded = (DATA / "kubectl-output" / "s02-alice-kubectl-create-cm-allowed.out").read_text().splitlines()
    assert recorded[0] == kubectl_prints("capture: user agent check (test warning)")


def test_observe_mode_annotates_without_warning(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "observe")
    response = _ask(server, 1404, 1405)
    assert response["allowed"] is True and "warnings" not in response
    assert response["auditAnnotations"]["user-agent-verdict"] == "unlisted"


def test_enforce_denies_an_unlisted_agent(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    response = _ask(server, 1404, 1405)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["message"].startswith(
        'user agent "python-requests/2.34.2" is not on this cluster\'s allowlist'
    )
    assert response["auditAnnotations"]["user-agent-verdict"] == "unlisted"
    denied = _ask(server, 1449, 1450, userAgent="peirates/v0.0.0 (linux/amd64) kubernetes/$Format")
    assert denied["allowed"] is False and denied["auditAnnotations"]["user-agent-verdict"] == "denied"
    assert (
        server.metric(
            "ua_sentinel_admission_reviews_total", verdict="unlisted", mode="enforce", allowed="false"
        )
        == 1
    )
    assert server.metric("ua_sentinel_admission_reviews_total", verdict="denied", allowed="false") == 1


@pytest.mark.parametrize(
    "agent",
    [
        "\u212aubectl/v1.30.2 (linux/amd64) kubernetes/3968350",  # KELVIN SIGN, which RE2 folds to k
        "kubectl/v1.30.2\ufe0f (linux/amd64) kubernetes/3968350",  # VARIATION SELECTOR-16
        "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350\u3164",  # HANGUL FILLER
    ],
    ids=["kelvin-sign", "variation-selector", "hangul-filler"],
)
def test_enforce_denies_a_look_alike_of_a_listed_agent(launch: Launch, tmp_path: Path, agent: str) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    response = _ask(server, 1404, 1405, userAgent=agent)
    assert response["allowed"] is False
    assert response["auditAnnotations"]["user-agent-verdict"] == "unlisted"
    assert agent not in response["status"]["message"]  # shown escaped, never as the look-alike


def test_enforce_allows_exempt_users_and_groups(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce", "--exempt-user", "dev-alice")
    # dev-alice is exempt by name.
    alice = _ask(server, 1404, 1405)
    assert alice["allowed"] is True and alice["auditAnnotations"]["user-agent-verdict"] == "unlisted"
    assert alice["warnings"]
    # admin is in system:masters, exempt by default: the recorded kubectl create, sent with curl.
    admin = _ask(server, 1373, 1374, userAgent="curl/7.88.1")
    assert admin["allowed"] is True and admin["auditAnnotations"]["user-agent"] == "curl/7.88.1"


def test_enforce_still_allows_the_listed_and_the_unknown(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    listed = _ask(server, 1378, 1379)
    assert listed["allowed"] is True and "warnings" not in listed
    with server.client() as client:
        unknown = client.post("/validate", json=admission(1455)).json()["response"]
    assert unknown["allowed"] is True and unknown["auditAnnotations"]["user-agent-verdict"] == "unknown"


def test_dry_run_gets_the_same_verdict(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path), "--mode", "enforce")
    response = _ask(server, 1469, 1470, userAgent="curl/7.88.1")  # s18, dryRun: true
    assert response["allowed"] is False
    again = with_audit_id(audit_batch(1469), "second", userAgent=None)
    with server.client() as client:
        client.post("/audit", json=again)
        no_agent = client.post("/validate", json=admission(1470)).json()["response"]
    assert no_agent["allowed"] is False
    assert no_agent["auditAnnotations"]["user-agent"] == "<none>"


def test_logs_are_json_with_escaped_agents_and_no_bodies(launch: Launch, tmp_path: Path) -> None:
    server = launch("--allowlist", _allowlist(tmp_path))
    spoof = "kubectl/v1.30.0 \u202e(evil) \u200b"
    _ask(server, 1404, 1405, userAgent=spoof)
    server.stop()
    lines = server.logs()  # every line parsed as JSON
    verdicts = [line for line in lines if line["msg"] == "admission verdict"]
    assert verdicts and verdicts[0]["agent"] == "kubectl/v1.30.0 \\u202e(evil) \\u200b"
    raw = server.stderr
    assert "\u202e" not in raw and "py-cm" in raw  # the object's name is logged...
    assert '"data"' not in raw and "managedFields" not in raw  # ...its body is not
