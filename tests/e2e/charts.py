"""Installing the Helm chart into the real control plane with the real helm binary."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from .harness import ControlPlane

__all__ = ["CHART", "HelmError", "helm", "secret_files"]

CHART = Path(__file__).resolve().parents[2] / "charts" / "ua-sentinel"


class HelmError(RuntimeError):
    """helm exited non-zero (the message holds the command, stdout and stderr)."""


def helm(
    binary: Path, cp: ControlPlane, *args: str, check: bool = True, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Runs helm against `cp` as admin, with helm's own state inside the control plane's workdir."""
    home = cp.workdir / "helm"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(cp.kubeconfig("admin")),
    }
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def secret_files(cp: ControlPlane, namespace: str, name: str, directory: Path) -> dict[str, Path]:
    """Writes each key of Secret `namespace/name` to `directory/<key>`; returns key -> path."""
    secret = json.loads(cp.kubectl("admin", "get", "secret", name, "-n", namespace, "-o", "json").stdout)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for key, value in secret["data"].items():
        files[key] = directory / key
        files[key].write_bytes(base64.b64decode(value))
        files[key].chmod(0o600)
    return files
