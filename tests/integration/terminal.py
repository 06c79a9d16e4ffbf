"""The real CLI with its stdout and/or stderr on a pseudo-terminal, as a person runs it."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = 200
DEADLINE = 120.0


def _pty(columns: int) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    return master, slave


class Terminal:
    """``ua-sentinel ARGS`` with stdout and stderr each on a terminal or a pipe, read as it runs."""

    def __init__(
        self,
        *args: str,
        stdout_tty: bool = True,
        stderr_tty: bool = True,
        same_tty: bool = False,
        columns: int = COLUMNS,
    ) -> None:
        """``same_tty``: stdout and stderr on one terminal, as in a shell (all in :attr:`stdout`)."""
        ends: list[tuple[int, int]] = []
        for tty in (stdout_tty, stderr_tty)[: 1 if same_tty else 2]:
            ends.append(_pty(columns) if tty else os.pipe())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", *args],
            stdin=subprocess.DEVNULL,
            stdout=ends[0][1],
            stderr=ends[-1][1],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
        )
        for _, child_end in ends:
            os.close(child_end)
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._drain, args=(fd, into), daemon=True)
            for (fd, _), into in zip(ends, (self._out, self._err), strict=False)
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self, fd: int, into: bytearray) -> None:
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    if self.proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                        return
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    return
                if not chunk:
                    return
                with self._lock:
                    into.extend(chunk)
        finally:
            os.close(fd)

    @property
    def stdout(self) -> str:
        """What reached the screen, with the terminal's CRLF turned back into LF."""
        with self._lock:
            return bytes(self._out).replace(b"\r\n", b"\n").decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._lock:
            return bytes(self._err).replace(b"\r\n", b"\n").decode("utf-8", "replace")

    def wait_for(self, predicate: Callable[[Terminal], bool], what: str) -> None:
        """Until ``predicate`` holds (the process may have exited meanwhile), or fail."""
        end = time.monotonic() + DEADLINE
        while not predicate(self):
            exited = self.proc.poll() is not None
            if exited:
                self.finish()
            if exited and predicate(self):
                return
            if exited or time.monotonic() > end:
                raise AssertionError(f"no {what}; stdout:\n{self.stdout}\nstderr:\n{self.stderr}")
            time.sleep(0.05)

    def finish(self) -> int:
        """Wait for the exit (SIGTERM first if asked by :meth:`stop`) and for the last output."""
        code = self.proc.wait(timeout=DEADLINE)
        for thread in self._threads:
            thread.join(timeout=DEADLINE)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish()


def run(*args: str, stdout_tty: bool = True, stderr_tty: bool = True) -> tuple[int, str, str]:
    """Run to the end: (exit status, stdout, stderr)."""
    term = Terminal(*args, stdout_tty=stdout_tty, stderr_tty=stderr_tty)
    code = term.finish()
    return code, term.stdout, term.stderr
