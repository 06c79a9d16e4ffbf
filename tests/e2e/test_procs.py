"""The harness's process plumbing must not disturb the product code tested in the same pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORK_POOLS = """
import importlib.util, multiprocessing, signal, sys
spec = importlib.util.spec_from_file_location("procs", sys.argv[1])
procs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(procs)
with procs.sigterm_interrupts():
    for _ in range(300):
        with multiprocessing.get_context("fork").Pool(2) as pool:  # terminate() SIGTERMs the workers
            assert pool.map(abs, [-1, -2, -3, -4]) == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGTERM) is procs._interrupt
print("ok")
"""


def test_sigterm_handler_does_not_hang_fork_pools() -> None:
    """A Python-level SIGTERM handler inherited by fork()ed pool workers made Pool.terminate()
    hang (the signal is lost in the child); the product's parallel replay forks such a pool."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_POOLS, str(Path(__file__).with_name("procs.py"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
