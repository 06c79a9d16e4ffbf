"""Hostile input never crashes a parser, never hangs it, and never reaches a display unescaped."""

from __future__ import annotations

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
    assert "Done 3000 runs" in result.stderr
