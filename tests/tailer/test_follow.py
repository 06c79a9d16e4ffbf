"""The rotation-safe follower on real files: renames, gzip, copy-truncate, partial and huge lines."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from webhook.tail.follow import Follower
from webhook.tail.logfiles import Position

from .conftest import fixture_lines

LINES = fixture_lines()


def backup(log: Path, seconds: int) -> Path:
    """A lumberjack backup name, ``seconds`` after a fixed time (UTC)."""
    when = dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return log.with_name(f"audit-{when.strftime('%Y-%m-%dT%H-%M-%S')}.000.log")


def drain(follower: Follower) -> list[bytes]:
    out: list[bytes] = []
    while True:
        batch = follower.read()
        if not (batch.lines or batch.consumed):
            return out
        out += batch.lines


def strip(lines: list[bytes]) -> list[bytes]:
    return [line.rstrip(b"\n") for line in lines]


def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    line = LINES[0]
    with open(log, "ab") as handle:
        handle.write(line[:100])
        handle.flush()
        assert drain(follower) == [] and follower.idle
        handle.write(line[100:])
    assert drain(follower) == strip([line])
    assert follower.position().offset == len(line)


def test_starts_at_the_end_of_the_live_file_by_default_and_at_a_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(LINES[:3]) + LINES[3][:50])
    follower = Follower(str(log))
    assert drain(follower) == []
    with open(log, "ab") as handle:
        handle.write(LINES[3][50:] + LINES[4])
    assert drain(follower) == strip(LINES[3:5])


def test_from_start_reads_backups_oldest_first_then_the_live_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    backup(log, 2).write_bytes(b"".join(LINES[10:20]))
    with gzip.open(backup(log, 1).with_suffix(".log.gz"), "wb") as gz:
        gz.write(b"".join(LINES[0:10]))
    log.write_bytes(b"".join(LINES[20:25]))
    (tmp_path / "unrelated.log").write_bytes(b"{}\n")
    assert drain(Follower(str(log), from_start=True)) == strip(LINES[:25])


def test_a_rename_is_followed_after_finishing_the_old_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    with open(log, "ab") as old:
        old.write(b"".join(LINES[:5]))
        old.flush()
        assert drain(follower) == strip(LINES[:5])
        old.write(b"".join(LINES[5:8]))  # written before the rename, not yet read
        old.flush()
        os.rename(log, backup(log, 1))
        log.write_bytes(b"".join(LINES[8:12]))
        old.write(b"".join(LINES[12:13]))  # still reaches the old file: read before switching
        old.flush()
    assert drain(follower) == strip(LINES[5:8] + LINES[12:13] + LINES[8:12])
    assert follower.stats.rotations == 1


def test_several_rotations_between_reads_are_all_read_in_order(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    expected: list[bytes] = []
    for n in range(4):
        chunk = LINES[n * 7 : n * 7 + 7]
        with open(log, "ab") as handle:
            handle.write(b"".join(chunk))
        expected += chunk
        if n < 3:
            name = backup(log, n + 1)
            os.rename(log, name)
            if n == 1:  # lumberjack's later compression
                with open(name, "rb") as src, gzip.open(name.with_suffix(".log.gz"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                name.unlink()
            log.touch()
    assert drain(follower) == strip(expected)


def test_resume_in_a_backup_that_was_renamed_and_gzipped_while_down(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(LINES[:10]))
    first = Follower(str(log), from_start=True)
    assert drain(first) == strip(LINES[:10])
    saved = Position.from_json(first.position().to_json())
    first.close()
    with open(log, "ab") as handle:
        handle.write(b"".join(LINES[10:15]))
    name = backup(log, 1)
    os.rename(log, name)
    with open(name, "rb") as src, gzip.open(name.with_suffix(".log.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    name.unlink()
    log.write_bytes(b"".join(LINES[15:20]))
    assert drain(Follower(str(log), saved)) == strip(LINES[10:20])


def test_copy_truncate_is_finished_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    log.write_bytes(b"".join(LINES[:10]))
    assert drain(follower) == strip(LINES[:10])
    with open(log, "ab") as handle:
        handle.write(b"".join(LINES[10:14]))
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    with open(log, "ab") as handle:  # new content, longer than what we had read
        handle.write(b"".join(LINES[20:40]))
    assert drain(follower) == strip(LINES[10:14] + LINES[20:40])
    assert follower.stats.truncations == 1 and follower.stats.lost == 0


def test_copy_truncate_before_anything_was_read_is_read_from_the_copy(tmp_path: Path) -> None:
    """Nothing read yet: the first bytes cannot tell the old content from the new one. The copy
    comes first (the Detector works in arrival order: the same ids as replay need the same order)."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    assert drain(follower) == []
    log.write_bytes(b"".join(LINES[:6]))  # written, copied and truncated between two reads
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    with open(log, "ab") as handle:
        handle.write(b"".join(LINES[20:23]))
    assert drain(follower) == strip(LINES[:6] + LINES[20:23])
    assert follower.stats.lost == 0
    with open(log, "ab") as handle:  # and the live file goes on where it was
        handle.write(LINES[30])
    assert drain(follower) == strip(LINES[30:31])


def test_copy_truncate_of_a_live_file_still_empty_when_we_look_is_read_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    log.write_bytes(b"".join(LINES[:6]))
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    assert drain(follower) == strip(LINES[:6])
    assert follower.stats.lost == 0


def test_copy_truncate_after_a_few_bytes_is_finished_from_the_copy(tmp_path: Path) -> None:
    """A short first line (garbage): too few bytes to find the copy by its first bytes."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    log.write_bytes(b"garbage\n")
    assert drain(follower) == [b"garbage"]
    with open(log, "ab") as handle:
        handle.write(b"".join(LINES[:6]))
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    lines = drain(follower)
    assert lines[-6:] == strip(LINES[:6]) and set(lines[:-6]) <= {b"garbage"}
    assert follower.stats.truncations == 1 and follower.stats.lost == 0


def test_truncation_without_a_copy_is_counted_as_loss(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    log.write_bytes(b"".join(LINES[:10]))
    drain(follower)
    os.truncate(log, 0)
    log.write_bytes(b"".join(LINES[30:32]))
    assert drain(follower) == strip(LINES[30:32])
    assert follower.stats.lost == 1


def _padded_refusal() -> bytes:
    """``GET .../secrets?`` + 1,000,000 ``&`` (written ``\\u0026``), refused: a 6 MB line."""
    event = json.loads(next(line for line in LINES if b'"forbid"' in line))
    event["requestURI"] = "/api/v1/namespaces/default/secrets?PAD"
    return json.dumps(event, separators=(",", ":")).replace("PAD", "\\u0026" * 1_000_000).encode() + b"\n"


def test_a_line_over_4_mib_is_read_down_to_its_audit_fields_as_it_streams_in(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    huge = _padded_refusal()
    with open(log, "ab") as handle:
        handle.write(LINES[0] + huge[: 5 * 1024 * 1024])
        handle.flush()
        lines = drain(follower)
        mid_line = follower.position()
        assert mid_line.skipping and mid_line.offset > 4 * 1024 * 1024  # read on, not held whole
        handle.write(huge[5 * 1024 * 1024 :] + LINES[1])
    lines += drain(follower)
    assert len(lines) == 3 and lines[0] == LINES[0].rstrip(b"\n") and lines[2] == LINES[1].rstrip(b"\n")
    kept = json.loads(lines[1])
    assert kept["auditID"] == json.loads(huge)["auditID"] and kept["responseStatus"]["code"] == 403
    assert kept["requestURI"].startswith("/api/v1/namespaces/default/secrets?&&&")
    assert len(lines[1]) < 16 * 1024
    assert follower.position().offset == log.stat().st_size
    resumed = Follower(str(log), mid_line)  # a restart in the middle of the line: the rest is skipped
    batch = resumed.read()
    assert batch.overlong == 1 and batch.lines == [LINES[1].rstrip(b"\n")]


def test_unreadable_and_corrupt_backups_are_counted_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    backup(log, 1).mkdir()  # cannot be opened as a file
    backup(log, 2).with_suffix(".log.gz").write_bytes(gzip.compress(b"".join(LINES[:5]))[:60])  # cut short
    backup(log, 3).write_bytes(b"".join(LINES[5:8]))
    log.write_bytes(b"".join(LINES[8:10]))
    follower = Follower(str(log), from_start=True)
    lines = drain(follower)
    assert lines[-5:] == strip(LINES[5:10])
    assert follower.stats.unreadable == 2


def test_the_last_line_of_a_rotated_file_counts_even_without_a_newline(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    follower = Follower(str(log))
    log.write_bytes(LINES[0] + LINES[1][:40])
    assert drain(follower) == strip(LINES[:1])
    os.rename(log, backup(log, 1))
    log.write_bytes(LINES[2])
    assert drain(follower) == [LINES[1][:40], LINES[2].rstrip(b"\n")]


class Rotator:
    """Rotates like kube-apiserver's lumberjack or logrotate, naming backups by the wall clock.

    Names carry milliseconds, as lumberjack's do, and are computed before the file operation.
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        self.clock = dt.datetime.now(dt.UTC)

    def name(self) -> Path:
        self.clock = max(dt.datetime.now(dt.UTC), self.clock + dt.timedelta(milliseconds=1))
        stamp = self.clock.strftime("%Y-%m-%dT%H-%M-%S.") + f"{self.clock.microsecond // 1000:03d}"
        return self.log.with_name(f"audit-{stamp}.log")

    def write(self, lines: list[bytes]) -> None:
        with open(self.log, "ab") as handle:
            handle.write(b"".join(lines))

    def copytruncate(self, name: Path | None = None) -> None:
        shutil.copyfile(self.log, name or self.name())
        os.truncate(self.log, 0)

    def rename(self, *, gz: bool = False) -> None:
        name = self.name()
        os.rename(self.log, name)
        self.log.touch()
        if gz:
            with open(name, "rb") as src, gzip.open(name.with_suffix(".log.gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            name.unlink()


@pytest.mark.parametrize("gz", [False, True], ids=["rename", "rename+gzip"])
@pytest.mark.parametrize("rewritten", [False, True], ids=["left-empty", "written-again"])
@pytest.mark.parametrize("known", [False, True], ids=["nothing-read", "lines-read"])
@pytest.mark.parametrize("restart", [False, True], ids=["running", "while-down"])
def test_copy_truncate_then_rename_before_we_look_loses_nothing(
    tmp_path: Path, gz: bool, rewritten: bool, known: bool, restart: bool
) -> None:
    """Found by test_kill9 (seed 20261127, about half the runs): a copy-truncate and then a rename
    of the live file, both between two reads (or while the tailer was down). Only the rename was
    followed: the copy, made before the rename, was never read (two findings lost)."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    rotator = Rotator(log)
    follower = Follower(str(log))
    assert drain(follower) == []
    expected: list[bytes] = []
    if known:  # at least FP_MIN_TRUST bytes read: the file is known by its first bytes
        rotator.write(LINES[:3])
        assert drain(follower) == strip(LINES[:3])
    if restart:
        saved = Position.from_json(follower.position().to_json())
        follower.close()
    rotator.write(LINES[3:9])
    expected += LINES[3:9]
    rotator.copytruncate()
    if rewritten:
        rotator.write(LINES[9:12])
        expected += LINES[9:12]
    rotator.rename(gz=gz)
    rotator.write(LINES[12:14])
    expected += LINES[12:14]
    if restart:
        follower = Follower(str(log), saved)
    assert drain(follower) == strip(expected)
    assert follower.stats.lost == 0
    rotator.write(LINES[14:15])
    assert drain(follower) == strip(LINES[14:15])


@pytest.mark.parametrize("restart", [False, True], ids=["running", "while-down"])
def test_copy_truncates_and_renames_in_any_order_between_two_reads_lose_nothing(
    tmp_path: Path, restart: bool
) -> None:
    """Every sequence of up to three rotations (copy-truncate, rename, rename+gzip), each after
    new lines, between two reads of a live file the follower knows by nothing or by its lines."""
    ops = ["copytruncate", "rename", "rename+gzip"]
    sequences = [[a] for a in ops] + [[a, b] for a in ops for b in ops]
    sequences += [[a, b, c] for a in ops for b in ops for c in ops]
    for n, sequence in enumerate(sequences):
        for known in (False, True):
            log = tmp_path / f"{n}-{int(known)}" / "audit.log"
            log.parent.mkdir()
            log.write_bytes(b"")
            rotator = Rotator(log)
            follower = Follower(str(log))
            expected: list[bytes] = []
            pos = 0
            if known:
                rotator.write(LINES[:3])
                assert drain(follower) == strip(LINES[:3])
                pos = 3
            if restart:
                saved = Position.from_json(follower.position().to_json())
                follower.close()
            for op in sequence:
                rotator.write(LINES[pos : pos + 4])
                expected += LINES[pos : pos + 4]
                pos += 4
                if op == "copytruncate":
                    rotator.copytruncate()
                else:
                    rotator.rename(gz=op == "rename+gzip")
            rotator.write(LINES[pos : pos + 2])
            expected += LINES[pos : pos + 2]
            if restart:
                follower = Follower(str(log), saved)
            assert drain(follower) == strip(expected), (sequence, known)
            assert follower.stats.lost == 0, (sequence, known)
            follower.close()


def test_a_copy_named_before_we_opened_the_live_file_is_read(tmp_path: Path) -> None:
    """Backup names carry milliseconds and are chosen before the copy (a file's mtime is as
    coarse): a copy of content we never saw can be named before the time we opened the file."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    rotator = Rotator(log)
    name = rotator.name()
    follower = Follower(str(log))
    rotator.write(LINES[:6])
    rotator.copytruncate(name)
    assert drain(follower) == strip(LINES[:6])
    assert follower.stats.lost == 0


@pytest.mark.parametrize("copied", [False, True], ids=["renamed", "copy-truncated-then-renamed"])
def test_a_live_file_renamed_out_of_sight_before_we_knew_it_is_still_read(
    tmp_path: Path, copied: bool
) -> None:
    """Renamed to a name that is not a backup's: what we have open is all we have of it."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    rotator = Rotator(log)
    follower = Follower(str(log))
    assert drain(follower) == []
    expected: list[bytes] = []
    if copied:  # whole lines in it after the copy: found when they are read
        rotator.write(LINES[:4])
        rotator.copytruncate()
        rotator.write(LINES[4:6])
        expected += strip(LINES[:6])
    rotator.write([LINES[6][:100]])  # only a partial line otherwise: found at its end
    (tmp_path / "old").mkdir()
    os.rename(log, tmp_path / "old" / "audit.log")
    log.write_bytes(b"".join(LINES[7:9]))
    expected += [LINES[6][:100], *strip(LINES[7:9])]
    lines = drain(follower)
    assert sorted(lines) == sorted(expected)  # out of sight, the copy's order cannot be known
    assert follower.stats.lost == 0
