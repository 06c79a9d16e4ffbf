"""Process groups, free ports and polling for the e2e harness.

Every child runs in its own session (process group); `stop()` signals the whole group by its id,
first SIGTERM then SIGKILL, so no grandchild survives a test. Children still alive when the
interpreter exits (a crash, Ctrl-C, a failed fixture) are stopped by an atexit hook.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

__all__ = ["ManagedProcess", "ProcessDied", "free_port", "sigterm_interrupts", "wait_until"]

T = TypeVar("T")
_LIVE: set[ManagedProcess] = set()


class ProcessDied(RuntimeError):
    """A managed process exited while we were waiting for it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> T:
    """Polls `probe` until it returns something other than None/False, or raises TimeoutError.

    `alive` is called before each poll and should raise (e.g. ProcessDied) to stop waiting early.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class ManagedProcess:
    """A child process in its own process group with its output in files.

    stdout goes to `stdout_path`; stderr to `stderr_path` (or into stdout when that is None).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout_path: Path,
        stderr_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._popen.pid})")
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            out: IO[bytes] = files.enter_context(self.stdout_path.open("ab"))
            err: IO[bytes] | int = subprocess.STDOUT
            if self.stderr_path is not None:
                err = files.enter_context(self.stderr_path.open("ab"))
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raises ProcessDied (with the end of its log) if the process has exited."""
        if not self.running():
            raise ProcessDied(f"{self.name} exited with {self.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.stderr_path or self.stdout_path
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout` s; returns the exit status."""
        popen = self._popen
        _LIVE.discard(self)
        if popen is None:
            return None
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # Grandchildren may outlive the leader; the group id is still the leader's pid.
        _signal_group(popen.pid, signal.SIGKILL)
        return popen.returncode

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self._popen.pid if self._popen else None} {state}>"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_saved_at_fork: list[Callable[[int, FrameType | None], Any] | int | None] = []


def _before_fork() -> None:
    # A forked child (multiprocessing "fork") must not inherit a Python-level SIGTERM handler:
    # CPython drops a signal that arrives between fork() and its after-fork reset, so a
    # Pool.terminate() SIGTERM can be lost and the pool's join hangs forever. Seen with the
    # product's parallel replay under pytest. The child gets SIG_DFL; the parent restores ours.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _interrupt
    ):
        _saved_at_fork.append(signal.signal(signal.SIGTERM, signal.SIG_DFL))


def _after_fork_in_parent() -> None:
    if _saved_at_fork:
        signal.signal(signal.SIGTERM, _saved_at_fork.pop())


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_saved_at_fork.clear
)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within: SIGTERM (a CI timeout) raises KeyboardInterrupt in the main thread, so fixture
    finalizers still stop the children (own process groups: they would outlive pytest).

    A no-op off the main thread or when someone else already handles SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=5)
