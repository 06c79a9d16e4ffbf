"""Faults under `ua-sentinel tail`: the state directory's disk full, the checkpoint corrupted, a
sink endpoint hanging. Each injects the fault into a real process and checks the stated
behaviour, and that every finding is still delivered (at least once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import log_records
from tests.hardening.faults import TailRun, append, fill, hanging_endpoint, probe_lines, small_tmpfs
from tests.integration.server import wait_for


def _users(prefix: str, count: int) -> set[str]:
    return {f"{prefix}-{n}" for n in range(count)}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "audit.log"
    path.parent.mkdir()
    path.touch()
    return path


def test_disk_full_for_the_state_dir(tmp_path: Path, log: Path) -> None:
    """Checkpoints fail with ENOSPC: the tailer keeps reading and delivering, says so, retries;
    when space returns it checkpoints again; killed while the disk is full, it resumes from the
    last checkpoint it wrote and delivers again what came after (nothing lost)."""
    sink = tmp_path / "findings.jsonl"
    with small_tmpfs(tmp_path / "state") as state:
        tail = TailRun(tmp_path, log, state, ["stdout", f"file:{sink}"]).start()
        try:
            append(log, probe_lines("before", 5))
            tail.wait_users(_users("before", 5))
            wait_for(tail.at_end, timeout=30, what="the checkpoint to reach the end of the log")
            saved = tail.checkpoint()

            filler = fill(state)
            append(log, probe_lines("full", 5))
            tail.wait_users(_users("full", 5))  # delivered while the checkpoint cannot be written
            wait_for(
                lambda: "cannot write the checkpoint" in tail.stderr(),
                timeout=30,
                what="the tailer to say the checkpoint failed",
            )
            assert tail.alive(), tail.stderr()
            assert tail.checkpoint() == saved  # the last good checkpoint is untouched
            assert not list(state.glob(".*.tmp"))  # a partial temporary file is not left behind

            filler.unlink()
            wait_for(tail.at_end, timeout=30, what="the checkpoint to be written again")
            assert "checkpoint written again" in tail.stderr()

            filler = fill(state)
            append(log, probe_lines("crash", 5))
            tail.wait_users(_users("crash", 5))
            tail.kill9()  # a crash while the disk is still full
            filler.unlink()

            tail.start()
            append(log, probe_lines("after", 5))
            tail.wait_users(_users("crash", 5) | _users("after", 5), run=2)
            wait_for(tail.at_end, timeout=30, what="the restarted tailer to catch up")
        finally:
            tail.stop()
    everything = _users("before", 5) | _users("full", 5) | _users("crash", 5) | _users("after", 5)
    assert everything <= tail.users()
    in_file = [json.loads(line) for line in sink.read_text().splitlines()]
    keys = [(f["event"]["id"], f["event"]["sequence"]) for f in in_file]
    assert len(keys) == len(set(keys))  # the file sink dropped the repeats
    assert everything <= {f["user"]["name"] for f in in_file}


@pytest.mark.parametrize("damage", ["checksum", "garbage", "both"])
def test_corrupted_state_file_is_detected_and_the_tailer_restarts_from_a_safe_position(
    tmp_path: Path, log: Path, damage: str
) -> None:
    state = tmp_path / "state"
    tail = TailRun(tmp_path, log, state, ["stdout"])
    tail.start()
    try:
        append(log, probe_lines("first", 5))
        tail.wait_users(_users("first", 5))
        wait_for(tail.at_end, timeout=30, what="the checkpoint to reach the end of the log")
        append(log, probe_lines("second", 5))
        tail.wait_users(_users("second", 5))
        wait_for(tail.at_end, timeout=30, what="the checkpoint to reach the end of the log")
    finally:
        assert tail.stop() == 0
    assert (state / "checkpoint.prev.json").exists()

    current = state / "checkpoint.json"
    if damage == "checksum":  # valid JSON, one number changed: only the checksum can tell
        doc = json.loads(current.read_bytes())
        doc["position"]["offset"] += 7
        current.write_text(json.dumps(doc))
    elif damage == "garbage":
        current.write_bytes(b"\x00\xffnot a checkpoint" * 10)
    else:
        current.write_bytes(b'{"version": 1, "position": {')
        (state / "checkpoint.prev.json").write_bytes(b"\x00" * 64)
    append(log, probe_lines("third", 5))  # written while the tailer was down

    tail.start()
    try:
        tail.wait_users(_users("third", 5), run=2)
        wait_for(tail.at_end, timeout=30, what="the restarted tailer to catch up")
        assert tail.alive()
    finally:
        tail.stop()
    said = tail.stderr(2)
    corrupt = [r for r in log_records(said) if r["msg"] == "checkpoint is corrupt; moved aside, not using it"]
    assert corrupt and all(r["checkpoint"].startswith(str(state)) for r in corrupt)
    if damage == "checksum":
        assert [r for r in corrupt if r["checkpoint"] == str(current) and r["error"] == "checksum mismatch"]
    if damage == "both":
        assert "no usable checkpoint" in said and "from the beginning" in said
        assert _users("first", 5) | _users("second", 5) <= tail.users(2)  # read again, from the start
    else:
        assert "resuming from the previous checkpoint" in said
    assert list(state.glob("checkpoint*.corrupt-*"))  # set aside for a post-mortem
    assert _users("first", 5) | _users("second", 5) | _users("third", 5) <= tail.users()
    assert json.loads(current.read_bytes())["checksum"]  # a good checkpoint is written again


def test_a_hanging_sink_endpoint_delays_nothing_else_and_loses_nothing(tmp_path: Path, log: Path) -> None:
    """The HTTP sink's endpoint accepts and never answers: stdout gets findings at once, the
    http sink's findings wait in the checkpoint's backlog; killed meanwhile and restarted with
    the endpoint answering again, every finding reaches it."""
    with hanging_endpoint() as endpoint:
        tail = TailRun(tmp_path, log, tmp_path / "state", ["stdout", f"http:{endpoint.url}"])
        tail.start()
        try:
            endpoint.hang()
            append(log, probe_lines("hung", 8))
            tail.wait_users(_users("hung", 8))  # stdout: not held up by the hanging sink
            wait_for(
                lambda: sum(len(v) for v in tail.checkpoint().get("backlog", {}).values()) >= 8,
                timeout=30,
                what="the http sink's findings to be saved in the checkpoint backlog",
            )
            assert tail.at_end()  # reading went on
            tail.kill9()
            endpoint.release()

            tail.start()
            wait_for(
                lambda: _users("hung", 8) <= endpoint.users(),
                timeout=60,
                what="the endpoint to receive every finding after the restart",
            )
            wait_for(
                lambda: not any(tail.checkpoint().get("backlog", {}).values()),
                timeout=30,
                what="the backlog to drain",
            )
        finally:
            tail.stop()
    assert "redelivering" in tail.stderr(2)
