"""The fast scan must find exactly what decoding every line finds."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import cast

import orjson
import pytest

from bench.generate import generate
from webhook.core.allowlist import default_allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.inputs import scan
from webhook.tools.replay import replay


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


# Agents as their raw JSON: denied ones (mostly on successful requests, so only the agent
# search can select their lines), escapes that hide a denied name from a byte search, raw UTF-8.
TRICKY_AGENTS: tuple[bytes, ...] = (
    b"curl/8.4.0",
    b"\\u0063url/7.1",
    b'x\\"nmap\\"',
    b"tools\\\\nmap.exe",
    b"Python-urllib/3.11",
    b'kubectl\\"/v1',
    b"kubectl/v1.30.0 \xe2\x80\xae(evil)",
    b"\\u212aube-hunter/1",
)
KEY = b'"userAgent":"'


def with_agent(line: bytes, agent_json: bytes) -> bytes:
    """``line`` with its agent replaced by ``agent_json`` (written as is); unchanged without one."""
    start = line.find(KEY)
    if start < 0:
        return line
    value = start + len(KEY)
    return line[:value] + agent_json + line[line.index(b'"', value) :]


def tricky_lines(lines: list[bytes], every: int = 41) -> list[bytes]:
    """Every ``every``-th line gets the next of :data:`TRICKY_AGENTS`."""
    agents = itertools.cycle(TRICKY_AGENTS)
    return [with_agent(raw, next(agents)) if i % every == 0 else raw for i, raw in enumerate(lines)]


@pytest.fixture(scope="module")
def tricky(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tricky") / "audit.log"
    path.write_bytes(b"\n".join(tricky_lines(generated.read_bytes().splitlines())) + b"\n")
    return path


def rules(findings: list[dict[str, object]]) -> set[object]:
    return {cast(dict[str, object], f["rule"])["name"] for f in findings}


def test_fast_path_findings_equal_decoding_every_line(generated: Path) -> None:
    expected = slow_path(generated)
    got, lines = fast_path([generated])
    assert lines == 30_000
    assert len(expected) > 10
    assert got == expected


def test_denied_and_escaped_agents_on_successes_are_found_like_decoding_every_line(tricky: Path) -> None:
    expected = slow_path(tricky)
    assert "known-bad-agent" in rules(expected)
    assert fast_path([tricky])[0] == expected


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_scan_equals_decoding_every_line(
    tricky: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", 1024 * 1024)
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    assert len(scan._pieces(str(tricky), tricky.stat().st_size)) > 4
    assert fast_path([tricky], workers=workers) == (slow_path(tricky), 30_000)


def test_a_denied_agent_in_a_line_split_across_blocks_is_found(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = generated.read_bytes().splitlines()[:200]
    lines = [raw for raw in lines if b'"code":403' not in raw and KEY in raw]
    lines[50] = with_agent(lines[50], b"\\u0063url/7.1")
    log = tmp_path / "split.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    expected = slow_path(log)
    assert rules(expected) == {"known-bad-agent"}
    line_start = sum(len(raw) + 1 for raw in lines[:50])
    agent_at = line_start + lines[50].index(KEY)
    for cut in [line_start + 1, agent_at, agent_at + 5, agent_at + len(KEY) + 3, line_start + len(lines[50])]:
        monkeypatch.setattr(scan, "BLOCK_BYTES", cut)
        assert fast_path([log]) == (expected, len(lines)), cut


def test_python_json_spacing_is_found_too(tricky: Path, tmp_path: Path) -> None:
    spaced = tmp_path / "spaced.log"
    spaced.write_bytes(
        b"\n".join(
            json.dumps(orjson.loads(line), ensure_ascii=n % 2 == 0).encode()
            for n, line in enumerate(tricky.read_bytes().splitlines()[:5000])
        )
        + b"\n"
    )
    assert b'"code": 403' in spaced.read_bytes()
    expected = slow_path(spaced)
    assert "known-bad-agent" in rules(expected)
    assert fast_path([spaced])[0] == expected


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


def test_a_cluster_name_is_on_every_finding_and_in_the_summary(generated: Path) -> None:
    sink = Collect()
    report = replay([str(generated)], Detector(default_allowlist()), sink, cluster_name="prod-eu-1")
    assert sink.findings and {f.cluster_name for f in sink.findings} == {"prod-eu-1"}
    assert report.summary().startswith("ua-sentinel replay in cluster prod-eu-1: 30000 lines")
    without = fast_path([generated])[0]
    assert [f.id for f in sink.findings] == [cast(dict[str, str], f["event"])["id"] for f in without]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refusal_padded_past_the_line_limit_is_found_by_every_scan(
    generated: Path, tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET .../secrets?`` + 700,000 ``&`` (written ``\\u0026``) between ordinary lines, whether
    one process reads the file or several split it: the padded refusal is a finding."""
    lines = generated.read_bytes().splitlines()[:3000]
    refusal = orjson.loads(next(raw for raw in lines if b'"forbid"' in raw))
    refusal.update(auditID="padded", userAgent="padder/1.0")
    refusal["requestURI"] = "/api/v1/namespaces/default/secrets?PAD"
    padded = orjson.dumps(refusal).replace(b"PAD", b"\\u0026" * 700_000)
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join([*lines[:1500], padded, *lines[1500:]]) + b"\n")
    monkeypatch.setattr(scan, "PIECE_BYTES", 1024 * 1024)
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    found, count = fast_path([log], workers=workers)
    assert count == 3001
    padder = [f for f in found if f["user_agent"].get("original") == "padder/1.0"]  # type: ignore[attr-defined]
    assert [f["kubernetes"]["audit"]["auditID"] for f in padder] == ["padded"]  # type: ignore[index]
    without = tmp_path / "without.log"
    without.write_bytes(b"\n".join(lines) + b"\n")
    assert [f for f in found if f not in padder] == fast_path([without], workers=workers)[0]
