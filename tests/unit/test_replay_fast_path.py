"""The fast scan must find exactly what decoding every line finds."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from bench.generate import generate
from webhook import scan
from webhook.allowlist import default_allowlist
from webhook.audit import parse_event
from webhook.detect import Detector
from webhook.findings import Finding
from webhook.replay import replay


class Collect:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def deliver(self, finding: Finding) -> None:
        self.findings.append(finding)

    def close(self) -> None:
        pass


def slow_path(path: Path) -> list[dict[str, object]]:
    """The unoptimised path: decode and validate every line."""
    detector = Detector(default_allowlist())
    out = [f for line in path.read_bytes().splitlines() for f in detector.process(parse_event(line))]
    out += detector.flush()
    return [f.to_dict() for f in out]


def fast_path(paths: list[Path], workers: int = 1) -> tuple[list[dict[str, object]], int]:
    sink = Collect()
    report = replay([str(p) for p in paths], Detector(default_allowlist()), sink, workers=workers)
    return [f.to_dict() for f in sink.findings], report.lines


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "audit.log"
    generate(30_000, 11, path, forbidden_share=0.05)
    return path


def test_fast_path_findings_equal_decoding_every_line(generated: Path) -> None:
    expected = slow_path(generated)
    got, lines = fast_path([generated])
    assert lines == 30_000
    assert len(expected) > 10
    assert got == expected


def test_parallel_scan_equals_sequential(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", 1024 * 1024)
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    assert len(scan._pieces(str(generated), generated.stat().st_size)) > 4
    assert fast_path([generated], workers=2) == fast_path([generated], workers=1)


def test_python_json_spacing_is_found_too(generated: Path, tmp_path: Path) -> None:
    spaced = tmp_path / "spaced.log"
    spaced.write_bytes(
        b"\n".join(
            orjson.dumps(orjson.loads(line), option=orjson.OPT_INDENT_2)
            .replace(b"\n", b"")
            .replace(b"  ", b" ")
            for line in generated.read_bytes().splitlines()[:5000]
        )
        + b"\n"
    )
    assert b'"code": 403' in spaced.read_bytes()
    assert fast_path([spaced])[0] == slow_path(spaced)


def test_junk_in_the_middle_of_a_block_is_counted_and_the_rest_still_found(
    generated: Path, tmp_path: Path
) -> None:
    lines = generated.read_bytes().splitlines()[:8000]
    mixed = tmp_path / "mixed.log"
    mixed.write_bytes(b"\n".join([*lines[:3000], lines[3000][:100], b"\xff\xfe junk", *lines[3001:]]) + b"\n")
    clean = tmp_path / "clean.log"
    clean.write_bytes(b"\n".join([*lines[:3000], *lines[3001:]]) + b"\n")
    sink = Collect()
    report = replay([str(mixed)], Detector(default_allowlist()), sink)
    assert report.malformed == 2
    assert [(m.line, m.reason) for m in report.malformed_samples] == [
        (3001, "not a JSON object line"),
        (3002, "not a JSON object line"),
    ]
    assert [f.to_dict() for f in sink.findings] == slow_path(clean)


def test_gzip_and_plain_agree(generated: Path, tmp_path: Path) -> None:
    packed = tmp_path / "audit-2026-11-27T00-00-00.000.log.gz"
    packed.write_bytes(gzip.compress(generated.read_bytes()))
    assert fast_path([packed]) == fast_path([generated])
