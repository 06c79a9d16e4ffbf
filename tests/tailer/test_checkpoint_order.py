"""The checkpoint against what happens around it: the baseline's commit, sinks' acknowledgements.

The new-agent baseline (SQLite) is never committed ahead of the checkpoint that covers it, and a
finding a sink acknowledges while a checkpoint is written does not stay in the saved backlog.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from webhook.core.allowlist import Allowlist
from webhook.core.findings import Finding
from webhook.detect.baseline import Baseline
from webhook.detect.detector import Detector
from webhook.sinks.base import Sink
from webhook.sinks.spec import open_sink, parse_sink
from webhook.tail.checkpoint import CheckpointStore
from webhook.tail.tailer import TailConfig, Tailer

from .conftest import fixture_lines

T0 = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
RULE = "new-agent-forbidden"
ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*"]\n', source="test")


def _refusal(i: int, when: dt.datetime) -> bytes:
    template = next(
        json.loads(line)
        for line in fixture_lines()
        if b'"code":403' in line and b'"ResponseComplete"' in line and b'"forbid"' in line
    )
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    template.update(
        auditID=f"ev-{i:05d}", userAgent="curl/7.88.1", stageTimestamp=stamp, requestReceivedTimestamp=stamp
    )
    return json.dumps(template).encode() + b"\n"


def _tailer(tmp_path: Path) -> tuple[Tailer, Baseline]:
    """A tailer on ``tmp_path/audit.log`` with its state (checkpoint, baseline) under ``state``."""
    state = tmp_path / "state"
    store = CheckpointStore(state)
    baseline = Baseline(state / "baseline.sqlite")
    spec = parse_sink(f"file:{tmp_path / 'findings.jsonl'}")
    tailer = Tailer(
        TailConfig(path=str(tmp_path / "audit.log"), state_dir=str(state), from_start=True),
        Detector(ALLOWLIST, baseline=baseline),
        [(spec, open_sink(spec))],
        store=store,
        baseline=baseline,
    )
    return tailer, baseline


def _read_all(tailer: Tailer) -> list[Finding]:
    found: list[Finding] = []
    while True:
        batch = tailer.follower.read()
        if not (batch.lines or batch.consumed):
            return [f for f in found if f.rule.name == RULE]
        found += tailer._detect(batch)


def _committed(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "state" / "baseline.sqlite") as db:
        return db.execute("SELECT family, first, last FROM sightings").fetchall()


def test_a_crash_at_the_checkpoint_leaves_the_baseline_behind_it_and_the_restart_re_derives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals logged out of time order: 12:05 first, then 12:03 (same agent family).

    The 12:05 refusal is new; the 12:03 one too (nothing before it). Were the 12:03 sighting
    committed before the checkpoint and the tailer killed in between, reading the lines again
    would find curl/7 seen at 12:03, before 12:05, and the 12:05 finding would never be delivered.
    """
    (tmp_path / "audit.log").write_bytes(
        _refusal(1, T0 + dt.timedelta(minutes=5)) + _refusal(2, T0 + dt.timedelta(minutes=3))
    )
    first, baseline = _tailer(tmp_path)
    derived = _read_all(first)
    assert [f.kubernetes["audit"]["auditID"] for f in derived] == ["ev-00001", "ev-00002"]

    def killed(_: object) -> None:
        raise OSError("killed while writing the checkpoint")

    monkeypatch.setattr(first.store, "save", killed)
    first.checkpoint()
    assert _committed(tmp_path) == []  # nothing past the checkpoint on disk
    monkeypatch.undo()
    first.store.close()  # killed: the baseline is not closed (closing would commit)

    again, baseline = _tailer(tmp_path)
    assert [f.id for f in _read_all(again)] == [f.id for f in derived]
    again.checkpoint()
    assert [row[0] for row in _committed(tmp_path)] == ["curl/7"]
    baseline.close()


def test_sightings_saved_in_the_checkpoint_are_committed_after_a_crash_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "audit.log").write_bytes(_refusal(1, T0))
    first, baseline = _tailer(tmp_path)
    assert len(_read_all(first)) == 1

    def killed() -> None:
        raise sqlite3.OperationalError("killed before the commit")

    monkeypatch.setattr(baseline, "flush", killed)
    first.checkpoint()
    assert first.store.load() is not None and _committed(tmp_path) == []
    monkeypatch.undo()
    first.store.close()

    again, baseline = _tailer(tmp_path)  # resumes after the refusal: not read again
    assert _read_all(again) == []
    assert [row[0] for row in _committed(tmp_path)] == ["curl/7"]  # the checkpoint's rows, committed
    with (tmp_path / "audit.log").open("ab") as log:
        log.write(_refusal(2, T0 + dt.timedelta(minutes=1)))
    assert _read_all(again) == []  # curl/7 is known: not new again
    baseline.close()


class GatedSink:
    """The real file sink, holding each delivery until the test opens the gate."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def deliver(self, finding: Finding) -> None:
        assert self.gate.wait(10)
        self.inner.deliver(finding)

    def close(self) -> None:
        self.inner.close()


def test_a_finding_acknowledged_while_the_checkpoint_is_written_leaves_the_next_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "audit.log").write_bytes(_refusal(1, T0))
    spec = parse_sink(f"file:{tmp_path / 'findings.jsonl'}")
    sink = GatedSink(open_sink(spec))
    store = CheckpointStore(tmp_path / "state")
    tailer = Tailer(
        TailConfig(path=str(tmp_path / "audit.log"), state_dir=str(tmp_path / "state"), from_start=True),
        Detector(ALLOWLIST),
        [(spec, sink)],
        store=store,
    )
    while (batch := tailer.follower.read()).lines or batch.consumed:
        tailer._deliver(tailer._detect(batch))
    (outbox,) = tailer.outboxes
    assert len(outbox) == 1
    save = store.save

    def save_while_the_sink_acknowledges(checkpoint: Any) -> None:
        save(checkpoint)
        sink.gate.set()
        assert outbox.drain(10)

    monkeypatch.setattr(store, "save", save_while_the_sink_acknowledges)
    tailer.checkpoint()
    saved = store.load()
    assert saved is not None and len(saved.backlog[spec.key]) == 1  # written before the ack
    monkeypatch.undo()
    tailer.checkpoint(force=False)  # the periodic one: the acknowledgement is news
    again = store.load()
    assert again is not None and again.backlog[spec.key] == []
    tailer.shutdown()


def test_a_batch_that_fails_is_never_passed_by_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever stops a batch half-way (here the Detector failing on its second event), the
    checkpoint written at shutdown is not past it: the restart delivers the batch's findings."""
    second = _refusal(2, T0 + dt.timedelta(seconds=1)).replace(b"curl/7.88.1", b"wget/1.21")
    (tmp_path / "audit.log").write_bytes(_refusal(1, T0) + second)
    first, _ = _tailer(tmp_path)
    process = first.detector.process

    def failing(event: Any) -> list[Finding]:
        if event.audit_id == "ev-00002":
            raise RuntimeError("a bug on the second event")
        return process(event)

    monkeypatch.setattr(first.detector, "process", failing)
    with pytest.raises(RuntimeError):
        first.run(threading.Event())
    monkeypatch.undo()

    again, _ = _tailer(tmp_path)
    while (batch := again.follower.read()).lines or batch.consumed:
        again._deliver(again._detect(batch))
    again.shutdown()  # drains the sink
    findings = [json.loads(line) for line in (tmp_path / "findings.jsonl").read_bytes().splitlines()]
    assert sorted((f["kubernetes"]["audit"]["auditID"], f["rule"]["name"]) for f in findings) == [
        ("ev-00001", RULE),
        ("ev-00001", "unusual-agent-forbidden"),
        ("ev-00002", RULE),
        ("ev-00002", "unusual-agent-forbidden"),
    ]
