"""moto's server (``moto[server]``): a real HTTP endpoint speaking the AWS APIs that boto3 reaches
through ``AWS_ENDPOINT_URL``, and an environment of fake credentials pointing at it. Shared by the
CloudWatch source tests and the chart's metric-name check (a tail reading ``--source cloudwatch:``)."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .conftest import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_env(tmp: Path, endpoint: str) -> dict[str, str]:
    """Fake credentials and a region, nothing from the developer's ~/.aws."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """moto's server on a free port (its log in ``workdir/moto.log``); yields its URL."""
    port = _free_port()
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        # moto runs on the venv's botocore, whatever boto3 the tailer is tested with (PYTHONPATH)
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    log.close()

    def up() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except OSError:
            assert proc.poll() is None, (workdir / "moto.log").read_text()
            return False

    try:
        wait_for(up, 60, "moto's server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
