"""The allowlist file edited under a running server: good edits apply, bad ones keep the last good."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Launch
from tests.integration.server import PKI, ServeProcess, wait_for
from tests.integration.traffic import admission, audit_batch, with_audit_id


def readyz(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    with server.client() as client:
        answer = client.get("/readyz")
    doc: dict[str, Any] = answer.json()
    return answer.status_code, doc


def verdict(server: ServeProcess, request_id: str) -> dict[str, str]:
    """A fresh python-requests/2.34.2 create by dev-alice (audit-webhook/01404, admission/01405)."""
    with server.client() as client:
        client.post("/audit", json=with_audit_id(audit_batch(1404), request_id))
        answer = client.post("/validate", json=admission(1405))
    annotations: dict[str, str] = answer.json()["response"]["auditAnnotations"]
    return annotations


def test_broken_edit_keeps_the_last_good_then_the_fix_applies(launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text('agents: ["kubectl/*"]\n')
    server = launch("--allowlist", str(path), "--allowlist-reload-interval", "0.1")
    first = verdict(server, "r1")
    assert first["user-agent-verdict"] == "unlisted"
    first_hash = readyz(server)[1]["allowlist"]["hash"]
    assert first["allowlist-hash"] == first_hash

    path.write_text('agents: ["kubectl/*", "python-requests/*"]\n')
    wait_for(lambda: readyz(server)[1]["allowlist"]["hash"] != first_hash, timeout=20, what="the edit")
    listed = verdict(server, "r2")
    assert listed["user-agent-verdict"] == "listed"
    good_hash = listed["allowlist-hash"]
    assert good_hash != first_hash

    path.write_text('agents: ["kubectl/*"]\nagnets: ["typo"]\n')
    wait_for(
        lambda: readyz(server)[1]["allowlist"]["lastError"], timeout=20, what="the broken edit to be seen"
    )
    code, doc = readyz(server)
    assert code == 200  # the last good allowlist is still loaded
    assert "unknown key(s) agnets" in doc["allowlist"]["lastError"]
    assert doc["allowlist"]["hash"] == good_hash
    kept = verdict(server, "r3")
    assert (kept["user-agent-verdict"], kept["allowlist-hash"]) == ("listed", good_hash)
    assert server.metric("ua_sentinel_allowlist_reload_errors_total") == 1
    assert server.metric("ua_sentinel_allowlist_last_reload_failed") == 1
    refused = [line for line in server.logs() if line["msg"] == "allowlist refused"]
    assert refused and "agnets" in refused[-1]["reason"] and "keeping allowlist" in refused[-1]["reason"]

    path.write_text('agents: ["kubectl/*"]\n')
    wait_for(lambda: readyz(server)[1]["allowlist"]["lastError"] is None, timeout=20, what="the fix")
    fixed = verdict(server, "r4")
    assert (fixed["user-agent-verdict"], fixed["allowlist-hash"]) == ("unlisted", first_hash)
    assert server.metric("ua_sentinel_allowlist_last_reload_failed") == 0


def test_a_deleted_file_keeps_the_last_good(launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text('agents: ["python-requests/*"]\n')
    server = launch("--allowlist", str(path), "--allowlist-reload-interval", "0.1")
    path.unlink()
    wait_for(lambda: readyz(server)[1]["allowlist"]["lastError"], timeout=20, what="the missing file")
    assert "cannot read" in readyz(server)[1]["allowlist"]["lastError"]
    assert verdict(server, "r1")["user-agent-verdict"] == "listed"


def test_a_mounted_configmap_symlink_swap_is_seen(launch: Launch, tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by re-pointing the ..data symlink."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    (first / "allowlist.yaml").write_text('agents: ["kubectl/*"]\n')
    (second / "allowlist.yaml").write_text('agents: ["python-requests/*"]\n')
    (tmp_path / "..data").symlink_to(first)
    (tmp_path / "allowlist.yaml").symlink_to(tmp_path / "..data" / "allowlist.yaml")
    server = launch("--allowlist", str(tmp_path / "allowlist.yaml"), "--allowlist-reload-interval", "0.1")
    assert verdict(server, "r1")["user-agent-verdict"] == "unlisted"
    (tmp_path / "..data_tmp").symlink_to(second)
    (tmp_path / "..data_tmp").replace(tmp_path / "..data")
    wait_for(
        lambda: verdict(server, f"r-{len(server.logs())}")["user-agent-verdict"] == "listed",
        timeout=20,
        what="the swapped ConfigMap content",
    )


def _serve_exits(pki: PKI, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "webhook", "serve", "--tls-cert", str(pki.serving.cert)]
    argv += ["--tls-key", str(pki.serving.key), "--port", "0", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_broken_allowlist_at_start_is_fatal_with_the_reason(tmp_path: Path, pki: PKI) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text("agents:\n  - {regex: '(unclosed'}\n")
    done = _serve_exits(pki, "--allowlist", str(path))
    assert done.returncode == 1
    assert "agents[0]: regex '(unclosed' is not valid RE2 syntax" in done.stderr


def test_bad_certificate_files_at_start_are_fatal(tmp_path: Path, pki: PKI) -> None:
    done = _serve_exits(pki, "--client-ca", str(tmp_path / "missing.crt"))
    assert done.returncode == 1
    assert "missing.crt: cannot read" in done.stderr
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    done = _serve_exits(pki, "--audit-client-ca", str(garbage))
    assert done.returncode == 1 and "not a PEM certificate bundle" in done.stderr


def test_flag_errors(pki: PKI) -> None:
    done = _serve_exits(pki, "--allowlist", "a.yaml", "--allowlist-configmap", "ns/cm")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    done = _serve_exits(pki, "--allowlist-configmap", "just-a-name")
    assert done.returncode == 1 and "NAMESPACE/NAME" in done.stderr
    done = _serve_exits(pki, "--join-wait", "-1")  # out of range: a usage error, found when parsed
    assert done.returncode == 2 and "--join-wait" in done.stderr
    done = _serve_exits(pki, "--join-wait", "2", "--join-ttl", "1")
    assert done.returncode == 1 and "--join-ttl must be longer than --join-wait" in done.stderr
