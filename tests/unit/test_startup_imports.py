"""What ``ua-sentinel check`` and ``replay`` load: their start-up time is mostly imports.

Each command runs in a fresh interpreter (a real child process) and reports every module it
ended up with; a command imports only what it uses. ``check`` judges one agent: no Detector,
no audit or finding models, and no pydantic unless a mapping item of a text not validated before
needs the allowlist schema (pydantic, for its error messages).
``replay`` writes JSON lines when stdout is not a terminal: no table layout (wcwidth), and for a
small file no worker pool (multiprocessing). Neither needs the web server, the Kubernetes
client, X.509, the metrics library, the HTML report or the cloud and OTLP clients.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA

NEVER = {
    "boto3",
    "botocore",
    "cryptography",
    "fastapi",
    "h11",
    "jinja2",
    "kubernetes",
    "opentelemetry",
    "prometheus_client",
    "starlette",
    "uvicorn",
}
"""Packages no one-shot command of these needs (serve, tail, certs and --report load them)."""

_RUN = """
import json, sys
from webhook.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def loaded(tmp_path: Path, *args: str) -> set[str]:
    """The modules a fresh interpreter holds after ``ua-sentinel ARGS`` ran (exit status 0)."""
    report = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _RUN, str(report), *args], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    ran = json.loads(report.read_text())
    assert ran["code"] == 0, result.stderr
    return set(ran["modules"])


def packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def test_check_loads_the_allowlist_and_nothing_of_the_detector(tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text('agents:\n  - "kubectl/*"\n  - product: helm\n    minVersion: v3.0.0\n')
    modules = loaded(tmp_path, "check", "--allowlist", str(allowlist), "kubectl/v1.30.0")
    assert "webhook.core.allowlist" in modules  # the command really ran
    assert packages(modules) & NEVER == set()
    assert modules & {"webhook.detect.detector", "webhook.core.audit", "webhook.core.findings"} == set()


def test_check_of_the_built_in_allowlist_loads_no_pydantic(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "check", "kubectl/v1.30.0")
    assert "webhook.core.allowlist" in modules
    assert packages(modules) & (NEVER | {"pydantic", "pydantic_core"}) == set()
    # tail's source parser, the baseline's database, importlib.resources' 34 modules, and what
    # only other commands' arguments need: log levels (logging), input formats (gzip), certs
    assert (
        modules
        & {
            "yaml",  # the built-in list's parse is shipped beside it
            "webhook.inputs.source",
            "sqlite3",
            "importlib.resources",
            "webhook.logs",
            "logging",
            "webhook.inputs.formats",
            "gzip",
            "webhook.tools.certs",
        }
        == set()
    )


def test_check_of_globs_only_loads_no_pydantic(tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text('agents:\n  - "kubectl/*"\n  - "helm/v3.*"\ndenied: ["peirates/*"]\n')
    modules = loaded(tmp_path, "check", "--allowlist", str(allowlist), "kubectl/v1.30.0")
    assert packages(modules) & (NEVER | {"pydantic", "pydantic_core"}) == set()


def test_replay_of_json_lines_loads_no_server_client_or_table(tmp_path: Path) -> None:
    one_line = tmp_path / "one.log"
    recorded = (DATA / "audit" / "audit.log").read_bytes().splitlines(keepends=True)
    one_line.write_bytes(recorded[1])  # a refusal: one finding goes out
    modules = loaded(tmp_path, "replay", str(one_line))
    assert "webhook.detect.detector" in modules  # the command really ran
    assert packages(modules) & (NEVER | {"multiprocessing", "wcwidth", "pydantic", "pydantic_core"}) == set()


_SPLIT = """
import json, sys
import webhook.inputs.scan as scan
scan.PARALLEL_MIN_BYTES = 0
scan.PIECE_BYTES = 64 * 1024
split = scan._split
def recorded(*args):
    with open(sys.argv[1], "w") as out:
        json.dump(sorted(sys.modules), out)
    return split(*args)
scan._split = recorded
from webhook.cli import main
main(sys.argv[2:])
"""


def test_replay_starts_the_scan_workers_before_importing_the_detector(tmp_path: Path) -> None:
    """The workers scan a large file while the parent imports what only it needs; they fork
    from a process without the Detector, the finding model, the sinks or replay's own loop."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(path.read_bytes() for path in sorted((DATA / "audit").glob("*.log*"))))
    report = tmp_path / "modules.json"
    split = subprocess.run(
        [sys.executable, "-c", _SPLIT, str(report), "replay", "-o", "json", "--workers", "2", str(log)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert split.returncode == 0, split.stderr
    at_fork = set(json.loads(report.read_text()))
    assert "webhook.core.allowlist" in at_fork
    assert (
        at_fork
        & {
            "webhook.detect.detector",
            "webhook.core.findings",
            "webhook.tools.replay",
            "webhook.sinks.base",
        }
        == set()
    )
    one = subprocess.run(
        [sys.executable, "-m", "webhook", "replay", "-o", "json", "--workers", "1", str(log)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert split.stdout == one.stdout and split.stdout.count(b"\n") == 15


def test_the_finding_model_and_the_sinks_load_no_pydantic() -> None:
    """A finding is built, written and read back (a checkpoint's backlog) without pydantic: with
    the msgspec audit events, ``replay`` of a short log then imports none (pydantic is only the
    allowlist schema's, for a user's list with product entries)."""
    modules = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys\n"
                "import webhook.core.findings, webhook.sinks.base\n"
                "import webhook.sinks.table, webhook.sinks.outbox\n"
                "print(json.dumps(sorted(sys.modules)))",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert "webhook.sinks.outbox" in modules
    assert packages(set(modules)) & {"pydantic", "pydantic_core"} == set()
