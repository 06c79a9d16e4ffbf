"""Opening audit logs: gzip told by its magic bytes (not the name), stdin as ``-``, nothing left open."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest

from webhook.inputs.files import decompressing, is_gzip, open_file, open_log

DATA = b'{"kind":"Event"}\n' * 3


def test_gzip_is_recognised_by_its_magic_bytes_whatever_the_name(tmp_path: Path) -> None:
    zipped = tmp_path / "audit.log"  # a gzip file without .gz
    zipped.write_bytes(gzip.compress(DATA))
    plain = tmp_path / "audit.log.gz"  # a plain file with .gz
    plain.write_bytes(DATA)
    for path in (zipped, plain):
        with open_log(str(path)) as stream:
            assert stream.read() == DATA
    assert is_gzip(gzip.compress(b"")) and not is_gzip(DATA) and not is_gzip(b"")


def test_closing_a_gzip_reader_closes_the_file_under_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log.gz"
    path.write_bytes(gzip.compress(DATA))
    raw = open(path, "rb")  # noqa: SIM115 - closed by the reader, as the test checks
    stream = decompressing(raw)
    assert stream is not raw and stream.read() == DATA
    stream.close()
    assert raw.closed


def test_a_plain_file_is_returned_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(DATA)
    with open(path, "rb") as raw:
        assert decompressing(raw) is raw
    with open_file(str(path)) as stream:
        assert isinstance(stream, io.BufferedReader)


def test_dash_is_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(gzip.compress(DATA)))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert open_log("-") is stdin.buffer  # read as it is: a pipe cannot be peeked at


def test_a_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_log(str(tmp_path / "nope.log"))
