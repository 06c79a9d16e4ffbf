"""Hostile input never crashes a parser, never hangs it, and never reaches a display unescaped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import (
    TARGETS,
    admission_target,
    allowlist_target,
    audit_line_target,
    detector_times_target,
    scan_target,
    useragent_target,
)

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).parents[2]

hostile_text = st.text(
    alphabet=st.characters(codec=None, categories=None),
    max_size=400,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1200))
def test_useragent_parser_and_display_hold_on_any_bytes(data: bytes) -> None:
    useragent_target(data)


@settings(max_examples=300)
@given(hostile_text)
def test_useragent_display_holds_on_any_text(text: str) -> None:
    useragent_target(text.encode("utf-8", "surrogatepass"))


yaml_scalars = st.one_of(st.text(max_size=30), st.integers(), st.booleans(), st.none(), st.dates())
entries = st.one_of(
    st.text(max_size=40),
    st.dictionaries(
        st.sampled_from(
            [
                "glob",
                "regex",
                "product",
                "minVersion",
                "maxVersion",
                "users",
                "groups",
                "namespaces",
                "reason",
                "expires",
                "typo",
            ]
        ),
        st.one_of(yaml_scalars, st.lists(st.text(max_size=10), max_size=3)),
        max_size=5,
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(["agents", "denied", "other"]), st.lists(entries, max_size=4), max_size=3)
)
def test_allowlist_loader_only_ever_raises_allowlist_error(doc: dict[str, object]) -> None:
    import yaml

    allowlist_target(yaml.safe_dump(doc, allow_unicode=True).encode())


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_allowlist_loader_on_raw_bytes(data: bytes) -> None:
    allowlist_target(data)


@settings(max_examples=400)
@given(st.binary(max_size=2000))
def test_audit_line_parser_on_raw_bytes(data: bytes) -> None:
    audit_line_target(data)


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_admission_review_handler_on_raw_bytes(data: bytes) -> None:
    admission_target(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_detector_holds_on_any_event_times(data: bytes) -> None:
    detector_times_target(data)


RECORDED = (ROOT / "tests" / "data" / "audit" / "audit.log").read_bytes().splitlines()[:400]
SPELLINGS = [(b'":"', b'":"'), (b'":"', b'": "'), (b'":"', b'" : "'), (b'":4', b'" : 4'), (b"{", b" {")]


@st.composite
def audit_blocks(draw: st.DrawFn) -> bytes:
    """Recorded lines, respelled (spacing, CRLF, white space), cut, or replaced by junk."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        line = draw(st.sampled_from(RECORDED))
        old, new = draw(st.sampled_from(SPELLINGS))
        line = line.replace(old, new)
        if draw(st.booleans()):
            agent = draw(
                st.sampled_from([b"(x) peirates/1.0", b"@peirates/1.0", b"\\u0070eirates/1", b"curl/8"])
            )
            line = line.replace(b'"userAgent":"', b'"userAgent":"' + agent + b" ", 1)
        line = draw(
            st.sampled_from([line, line[: draw(st.integers(0, len(line)))], draw(st.binary(max_size=60))])
        )
        lines.append(line + draw(st.sampled_from([b"", b"\r", b" ", b"\t\r"])))
    return b"\n".join(lines) + b"\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(audit_blocks())
def test_block_scanner_hands_over_what_a_line_by_line_reading_flags(block: bytes) -> None:
    scan_target(block)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_block_scanner_on_raw_bytes(data: bytes) -> None:
    scan_target(data)


@pytest.mark.parametrize("target", ["detector_times", "scan"])
def test_new_corpora(target: str) -> None:
    for path in sorted((CORPUS / target).iterdir()):
        TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("path", sorted((CORPUS / "admission").iterdir()), ids=lambda p: p.name)
def test_admission_corpus(path: Path) -> None:
    admission_target(path.read_bytes())


@pytest.mark.parametrize("path", sorted((CORPUS / "audit_line").iterdir())[:200], ids=lambda p: p.name)
def test_audit_line_corpus(path: Path) -> None:
    audit_line_target(path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_coverage_guided_run(target: str, tmp_path: Path) -> None:
    """A brief atheris run per target, seeded from the kept corpus (``make fuzz`` runs long)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS / target, corpus)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run_atheris",
            target,
            "-runs=3000",
            "-max_len=4096",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # libFuzzer stops at the first check after -runs, so it may report a few more (3002 seen)
    done = re.search(r"^Done (\d+) runs", result.stderr, re.MULTILINE)
    assert done is not None and int(done.group(1)) >= 3000, result.stderr[-3000:]
