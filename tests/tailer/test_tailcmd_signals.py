"""`tail` handles SIGTERM from its first checkpoint on.

The first checkpoint is what tells a supervisor (and tests/tailer/conftest.py) that the tailer has
started. A SIGTERM between it and the installation of the handler killed the process (status
-15, no drain, no last checkpoint) instead of stopping it: test_kill9 failed that way now and
then on a loaded machine (its last run is stopped as soon as it has caught up).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from webhook.tail import command as tailcmd
from webhook.tail.checkpoint import Checkpoint, CheckpointStore


def test_sigterm_is_handled_when_the_first_checkpoint_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: list[Any] = []
    save = CheckpointStore.save

    def saving(self: CheckpointStore, checkpoint: Checkpoint) -> None:
        if not handlers:
            handlers.append(signal.getsignal(signal.SIGTERM))
        save(self, checkpoint)

    class StopsAtOnce(tailcmd.Tailer):
        def run(self, stop: threading.Event) -> None:
            stop.set()
            super().run(stop)

    monkeypatch.setattr(CheckpointStore, "save", saving)
    monkeypatch.setattr(tailcmd, "Tailer", StopsAtOnce)
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text('agents: ["kubectl/*"]\n')
    before = signal.getsignal(signal.SIGTERM)
    options = tailcmd.TailOptions(path=str(log), state=str(tmp_path / "state"), allowlist=str(allowlist))
    assert tailcmd.run_tail(options) == 0
    assert handlers and callable(handlers[0]), f"SIGTERM at the first checkpoint: {handlers[0]!r}"
    assert signal.getsignal(signal.SIGTERM) == before  # restored
