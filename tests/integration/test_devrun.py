"""`make run` (python -m webhook.tools.devrun): certificates on first run, the snippets, a serving webhook."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.integration.server import wait_for
from tests.integration.traffic import audit_batch


def test_devrun_writes_certificates_prints_snippets_and_serves(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook.tools.devrun", "--certs", str(certs_dir), "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:

        def listening() -> str | None:
            text = stderr.read_text()
            return text if '"msg":"listening"' in text else None

        text = wait_for(listening, timeout=30, what="devrun to serve")
        port = int(text.split('"msg":"listening"', 1)[1].split('"port":', 1)[1].split(",", 1)[0])
        for name in ("ca.crt", "ca.key", "tls.crt", "tls.key", "audit-client.crt", "audit-client.key"):
            assert (certs_dir / name).exists(), name
        assert (certs_dir / "audit-client.key").stat().st_mode & 0o077 == 0
        assert (certs_dir / "audit-webhook.kubeconfig").stat().st_mode & 0o077 == 0
        webhook = yaml.safe_load((certs_dir / "validating-webhook.yaml").read_text())
        assert webhook["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:8443/validate"
        assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
        assert f"kubectl apply -f {certs_dir}/validating-webhook.yaml" in text
        assert "--audit-webhook-mode=batch" in text
        url = f"https://127.0.0.1:{port}"
        anonymous = ssl.create_default_context(cafile=certs_dir / "ca.crt")
        apiserver = ssl.create_default_context(cafile=certs_dir / "ca.crt")
        apiserver.load_cert_chain(certs_dir / "audit-client.crt", certs_dir / "audit-client.key")
        assert httpx.get(f"{url}/readyz", verify=anonymous).status_code == 200
        assert httpx.post(f"{url}/audit", json=audit_batch(1404), verify=anonymous).status_code == 403
        assert httpx.post(f"{url}/audit", json=audit_batch(1404), verify=apiserver).status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: the exit shows it was asked to stop.
        assert process.wait(60) == -signal.SIGTERM
    assert '"msg":"Application shutdown complete."' in stderr.read_text()
    # A second run reuses the certificates.
    before = (certs_dir / "tls.crt").read_bytes()
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, webhook.tools.devrun as d; d.os.execv = lambda *a: sys.exit(0); "
            f"d.main(['--certs', {str(certs_dir)!r}])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert (certs_dir / "tls.crt").read_bytes() == before
