"""The checkpoint file on disk: always a whole one at its path, the one before kept beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from webhook.tail import checkpoint as checkpoint_module
from webhook.tail.checkpoint import Checkpoint, CheckpointStore


def test_the_checkpoint_never_goes_missing_while_the_next_one_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(position=None, stats={"lines": 1}))
    seen: list[bool] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        seen.append(store.path.exists())  # what a reader (or a kill -9) would find right now
        real_replace(src, dst)
        seen.append(store.path.exists())

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    store.save(Checkpoint(position=None, stats={"lines": 2}))
    monkeypatch.undo()
    assert seen and all(seen)
    assert store.load() is not None and store.load().stats == {"lines": 2}  # type: ignore[union-attr]
    assert Checkpoint.from_json(store.previous.read_bytes()).stats == {"lines": 1}
    store.close()
