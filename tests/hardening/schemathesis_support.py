"""Schemathesis for the hardening suite: installed into the venv on first use when missing.

(Add ``schemathesis`` to the dev extras in pyproject.toml to make this a no-op.)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType


def ensure_schemathesis() -> ModuleType:
    try:
        return importlib.import_module("schemathesis")
    except ImportError:
        pass
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "schemathesis>=4.0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install schemathesis failed:\n{done.stdout}\n{done.stderr}")
    importlib.invalidate_caches()
    return importlib.import_module("schemathesis")
