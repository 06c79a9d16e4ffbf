"""webhook.tools.certs on real files: keys never written through a planted path, bad days refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.tools import certs


def test_write_file_replaces_a_symlink_and_never_writes_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    key = tmp_path / "ca.key"
    key.symlink_to(victim)
    (tmp_path / "ca.key.tmp").symlink_to(victim)  # the name the old writer used
    certs.write_file(key, b"secret", 0o600)
    assert victim.read_text() == "untouched\n"
    assert not key.is_symlink() and key.read_bytes() == b"secret"
    assert key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.key.tmp", "victim"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        certs.write_file(target, b"x", 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


@pytest.mark.parametrize("days", [0, -1, certs.MAX_DAYS + 1, 999_999_999])
def test_out_of_range_validity_is_a_value_error_not_an_overflow(tmp_path: Path, days: int) -> None:
    with pytest.raises(ValueError, match="days must be between 1 and 36500"):
        certs.write_serving_set(tmp_path, days=days)
