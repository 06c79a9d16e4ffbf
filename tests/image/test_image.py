"""The container image without a container engine: hadolint on the Dockerfile, its structure, and
its build stage replayed (wheel, then a clean venv) and run as the image runs it: uid 65532, the
runtime ENV only, a read-only root filesystem with a tmpfs at /tmp, a read-only working directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from webhook.tools import certs

from .conftest import ROOT, UID, Image, read_only_run, stages
from .dockerfile import ignored, parse_ignore

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.source",
}


@pytest.fixture
def read_only_dir(image: Image) -> Path:
    path = image.root / "ro"
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return path


# --- the Dockerfile --------------------------------------------------------------------------


def test_hadolint_is_clean(hadolint: Path) -> None:
    done = subprocess.run(
        [str(hadolint), "--config", ".hadolint.yaml", "--format", "json", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr


def test_multi_stage_from_a_slim_python() -> None:
    args, all_stages = stages()
    build, runtime = all_stages
    assert build.name == "build" and runtime.name is None
    assert build.base == runtime.base == args["PYTHON_IMAGE"]
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert build.env()["PIP_NO_CACHE_DIR"] == "1"
    (run,) = build.all("RUN")
    assert "pip wheel" in run.args and "--only-binary=:all:" in run.args


def test_final_stage_holds_the_venv_only_and_runs_unprivileged() -> None:
    _, (_, runtime) = stages()
    assert [c.args for c in runtime.all("COPY")] == ["--from=build /opt/venv /opt/venv"]
    for run in runtime.all("RUN"):  # no package manager, pip or compiler in the final image
        for word in ("pip", "apt", "gcc", "cc ", "make", "build-essential", "curl", "wget"):
            assert word not in run.args, run.args
    assert [u.args for u in runtime.all("USER")] == [f"{UID}:{UID}"]
    assert [json.loads(e.args) for e in runtime.all("ENTRYPOINT")] == [["ua-sentinel"]]
    env = runtime.env()
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing to write: the root filesystem is read-only
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert [e.args for e in runtime.all("EXPOSE")] == ["8443"]


def test_oci_labels_and_version() -> None:
    _, (_, runtime) = stages()
    labels = dict(word.split("=", 1) for label in runtime.all("LABEL") for word in label.words())
    assert set(labels) >= OCI_LABELS
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    version_args = [a.args for a in runtime.all("ARG") if a.args.startswith("VERSION=")]
    assert version_args == [f"VERSION={VERSION}"]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = parse_ignore((ROOT / ".dockerignore").read_text())
    _, (build, _) = stages()
    sources = [word for copy in build.all("COPY") for word in copy.words()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "webhook"]
    for path in [
        *sources,
        "webhook/cli.py",
        "webhook/data/default-allowlist.yaml",
        "webhook/data/default-allowlist.json",
        "webhook/py.typed",
    ]:
        assert not ignored(path, patterns), path
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "certs/tls.key", "charts/ua-sentinel"):
        assert ignored(path, patterns), path
    assert ignored("webhook/__pycache__/cli.cpython-311.pyc", patterns)


# --- the build stage, replayed ---------------------------------------------------------------


def test_wheel_carries_the_package_data_and_the_console_script(image: Image) -> None:
    assert image.wheel.name == f"ua_sentinel-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(image.wheel) as whl:
        names = set(whl.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "ua-sentinel = webhook.cli:main" in whl.read(entry_points).decode()
    assert {
        "webhook/cli.py",
        "webhook/data/default-allowlist.yaml",
        "webhook/data/default-allowlist.json",
        "webhook/py.typed",
    } <= names
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".pyc")]


def test_the_otlp_sink_the_chart_offers_opens_in_the_image(image: Image) -> None:
    code = "from webhook.sinks.spec import open_sink, parse_sink; open_sink(parse_sink('otlp:http://c:4318'))"
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_cloudwatch_source_opens_in_the_image(image: Image) -> None:
    code = (
        "from webhook.inputs.cloudwatch import CloudWatchSource; "
        "print(CloudWatchSource('/aws/eks/prod/cluster').client.meta.service_model.service_name)"
    )
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"AWS_REGION": "us-east-1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "logs"


CLOUD_SOURCES = {
    "pubsub": (
        "from webhook.inputs.pubsub import PubSubSource; PubSubSource('projects/proj-1/subscriptions/s')",
        {"PUBSUB_EMULATOR_HOST": "127.0.0.1:9"},
    ),
    "eventhub": (
        "from webhook.inputs.eventhub import EventHubSource; EventHubSource('aks-ns/audit')",
        {
            "AZURE_EVENTHUB_CONNECTION_STRING": "Endpoint=sb://aks-ns.servicebus.windows.net/;"
            "SharedAccessKeyName=listen;SharedAccessKey=a2V5;EntityPath=audit"
        },
    ),
    "azblob": (
        "from webhook.inputs.azblob import AzureBlobSource; AzureBlobSource('acct/insights-logs-kube-audit')",
        {
            "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=acct;"
            "AccountKey=a2V5;EndpointSuffix=core.windows.net"
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(CLOUD_SOURCES))
def test_each_managed_cluster_source_opens_in_the_image(image: Image, kind: str) -> None:
    """The image ships every cloud SDK the chart's source: section can name (the [gcp] and
    [azure] extras): each source builds its client there, without a network call."""
    code, env = CLOUD_SOURCES[kind]
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr


def test_venv_is_byte_compiled_ahead_of_time(image: Image) -> None:
    (package,) = image.venv.glob("lib/python3.*/site-packages/webhook")
    modules = {p.stem for p in package.glob("*.py")}
    compiled = {p.name.split(".")[0] for p in (package / "__pycache__").glob("*.pyc")}
    assert modules <= compiled


def test_the_harness_really_enforces_a_read_only_root(image: Image, read_only_dir: Path) -> None:
    probe = "id -u; touch /tmp/ok && echo tmp-writable; touch x 2>/dev/null || echo cwd-read-only;"
    probe += f" touch {image.venv}/x 2>/dev/null || echo venv-read-only"
    done = subprocess.run(
        read_only_run(image, read_only_dir, "sh", "-c", probe), capture_output=True, text=True
    )
    assert done.stdout.split() == [str(UID), "tmp-writable", "cwd-read-only", "venv-read-only"], done.stderr


def test_help_runs_as_65532_on_a_read_only_root(image: Image, read_only_dir: Path) -> None:
    done = subprocess.run(
        read_only_run(image, read_only_dir, "ua-sentinel", "--help"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "replay" in done.stdout and "apiserver-config" in done.stdout
    assert done.stderr == ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        status: int = response.status
        return status


def test_serve_answers_over_tls_as_65532_on_a_read_only_root(image: Image, read_only_dir: Path) -> None:
    tls = image.root / "certs"
    ca = certs.write_serving_set(tls, dns=["localhost"], ips=["127.0.0.1"], days=1)
    os.chown(tls / "tls.key", UID, UID)  # as a Secret volume with fsGroup makes it readable
    tls.chmod(0o755)
    allowlist = tls / "allowlist.yaml"
    allowlist.write_bytes((ROOT / "webhook" / "data" / "default-allowlist.yaml").read_bytes())
    port = free_port()
    serve = ["ua-sentinel", "serve", "--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
    serve += ["--allowlist", str(allowlist), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        read_only_run(image, read_only_dir, *serve), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}: {proc.communicate()[1][-3000:]}"
            try:
                if get(f"{base}/healthz", context) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /healthz within 60 s"
            time.sleep(0.2)
        while get(f"{base}/readyz", context) != 200:
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    # uvicorn finishes a graceful shutdown, then re-raises the signal: killed by SIGTERM is clean
    assert proc.returncode in (0, -signal.SIGTERM), stderr[-3000:]
    assert "Application shutdown complete" in stderr, stderr[-3000:]
    for problem in ("Read-only file system", "Permission denied", "Traceback"):
        assert problem not in stderr, stderr[-3000:]
