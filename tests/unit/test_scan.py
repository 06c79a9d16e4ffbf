"""A block's fast scan must count, number and select lines exactly as checking each line does."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import default_allowlist
from webhook.core.audit import MalformedEvent, parse_event
from webhook.detect.detector import Detector
from webhook.detect.prefilter import Prefilter
from webhook.inputs import scan
from webhook.inputs.lines import EVERY_LINE

PREFILTER = Prefilter(default_allowlist())
HEAD = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"'


def event(agent: bytes = b"kubelet/1", code: int = 200, tail: bytes = b"") -> bytes:
    return (
        HEAD
        + b'a","userAgent":"'
        + agent
        + b'","responseStatus":{"code":'
        + str(code).encode()
        + b"}"
        + tail
        + b"}"
    )


LINES = [
    event(),
    event(code=403),
    event(agent=b"curl/8"),
    event(agent=b"\\u0063url/8"),
    event(tail=b',"annotations":{"w/user-agent-verdict":"denied"}'),
    event()[:-1],  # no closing brace
    event(code=403)[:-1],
    event(code=403) + b"\r",
    HEAD[:20] + b"}",  # shorter than the prefix
    b'{"a":1,"b":2,"c":3,"d":4,"e":55}',  # exactly the prefix length, ends in }
    b"",
    b"   ",
    b"not json",
    b'{"kind":"Other"}',
]


def careful(block: bytes, base: int = 0, prefilter: Prefilter = PREFILTER) -> scan.ScanResult:
    result = scan.ScanResult(lines=base)
    scan._careful(block, result, base, prefilter)
    result.lines += block.count(b"\n")
    result.size = len(block)
    return result


@settings(max_examples=400, deadline=None)
@given(
    picks=st.lists(st.sampled_from(range(len(LINES))), min_size=1, max_size=30),
    before=st.binary(max_size=40),
    after=st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    base=st.integers(0, 5),
)
def test_a_block_scans_like_checking_each_line(
    picks: list[int], before: bytes, after: bytes, base: int
) -> None:
    block = b"".join(LINES[i] + b"\n" for i in picks)
    buf = before + block + after
    result = scan.ScanResult(lines=base)
    scan.scan_block((buf, len(before), len(before) + len(block)), result, PREFILTER)
    assert result == careful(block, base)


def test_well_formed_blocks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    block = b"".join(LINES[i % 5] + b"\n" for i in range(50))
    monkeypatch.setattr(scan, "_careful", lambda *args: pytest.fail("careful path taken"))
    result = scan.ScanResult()
    scan.scan_block((block, 0, len(block)), result, PREFILTER)
    monkeypatch.undo()
    assert result == careful(block)
    assert [n for n, _ in result.hits] == [n for n in range(1, 51) if (n - 1) % 5 in (1, 2, 3, 4)]


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.sampled_from(range(len(LINES))), min_size=1, max_size=30),
    base=st.integers(0, 5),
)
def test_every_line_is_a_hit_numbered_as_checking_each_line_does(picks: list[int], base: int) -> None:
    block = b"".join(LINES[i] + b"\n" for i in picks)
    result = scan.ScanResult(lines=base)
    scan.scan_block((block, 0, len(block)), result, EVERY_LINE)
    assert result == careful(block, base, EVERY_LINE)


def test_well_formed_blocks_of_every_line_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    block = b"".join(LINES[i % 5] + b"\n" for i in range(50))
    monkeypatch.setattr(scan, "_careful", lambda *args: pytest.fail("careful path taken"))
    result = scan.ScanResult(lines=7)
    scan.scan_block((block, 0, len(block)), result, EVERY_LINE)
    assert result.hits == list(enumerate(block.split(b"\n")[:-1], start=8))


def test_newlines_outside_the_block_are_not_counted() -> None:
    assert scan._newlines(b"x\n\nab\ncd\n\nyy\n", 3, 9) == 2
    assert scan._newlines(b"ab\n", 0, 3) == 1
    assert scan._newlines(b"abc", 0, 3) == 0


def test_pieces_cover_the_file_at_line_starts_and_give_every_worker_a_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"".join(LINES[i % 5] + b"\n" for i in range(200))
    log = tmp_path / "audit.log"
    log.write_bytes(data)
    monkeypatch.setattr(scan, "PIECE_BYTES", len(data))
    pieces = scan._pieces(str(log), len(data), workers=3)
    assert len(pieces) == 3
    starts = [start for _, start, _ in pieces]
    ends = [end for _, _, end in pieces]
    assert starts == [0, *ends[:-1]] and ends[-1] == len(data)
    assert all(data[start - 1 : start] == b"\n" for start in starts[1:])
    monkeypatch.setattr(scan, "PIECE_BYTES", len(data) // 10)
    assert len(scan._pieces(str(log), len(data), workers=3)) >= 10


RECORDED = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
REFUSED = orjson.loads(next(line for line in RECORDED if b'"forbid"' in line))
SUCCEEDED = orjson.loads(next(line for line in RECORDED if b'"code":200' in line and b"verdict" not in line))
DEFAULT = default_allowlist()

JUNK = st.sampled_from(["", "(x) ", "@", " ", "\t", "junk ", "(linux; amd64) ", "[", "/", "x(y) "])
NAMES = st.sampled_from(
    ["peirates", "kdigger", "kube-hunter", "curl", "Python-urllib", "kubectl", "zgrab", "cdk"]
)
VERSIONS = st.sampled_from(["", "/1.0", "/v0.0.0 (linux/amd64)", " x", "\u00e9"])
AGENTS = st.one_of(
    st.none(),
    st.builds(lambda j, n, v, up: j + (n.upper() if up else n) + v, JUNK, NAMES, VERSIONS, st.booleans()),
    st.text(max_size=24),
)
SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (",", " : "), (" , ", " : "), ("\t,", ":\t")])


@st.composite
def event_lines(draw: st.DrawFn) -> bytes:
    """One audit line as some writer may have spelled it: spacing, escapes, white space, CRLF."""
    doc = dict(draw(st.sampled_from([REFUSED, SUCCEEDED])))
    agent = draw(AGENTS)
    doc.pop("userAgent", None)
    if agent is not None:
        doc["userAgent"] = agent
    separators = draw(SEPARATORS)
    text = json.dumps(doc, separators=separators, ensure_ascii=draw(st.booleans()))
    around = st.sampled_from(["", " ", "\t", "  "])
    return (draw(around) + text + draw(around)).encode() + draw(st.sampled_from([b"", b"\r"]))


@settings(max_examples=300, deadline=None)
@given(line=event_lines(), before=st.integers(0, 4), after=st.integers(0, 4))
def test_whatever_the_detector_flags_on_a_line_the_block_scanner_hands_over(
    line: bytes, before: int, after: int
) -> None:
    try:
        event = parse_event(line.strip())
    except MalformedEvent:
        return
    if not Detector(DEFAULT).process(event):
        return
    filler = orjson.dumps(SUCCEEDED)
    block = b"".join(raw + b"\n" for raw in [*[filler] * before, line, *[filler] * after])
    result = scan.ScanResult()
    scan.scan_block((block, 0, len(block)), result, Detector(DEFAULT).prefilter)
    assert before + 1 in [number for number, _ in result.hits]
    assert result.malformed == []


def _results(results: list[scan.ScanResult]) -> list[tuple[int, int, list[tuple[int, bytes]]]]:
    return [(r.lines, r.size, r.hits) for r in results]


@pytest.fixture
def split_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[object]]:
    """A log that scan_file splits among workers, and the pools its scans started (in order)."""
    data = b"".join(LINES[i % 5] + b"\n" for i in range(3000))
    log = tmp_path / "audit.log"
    log.write_bytes(data)
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(scan, "PIECE_BYTES", len(data) // 4)
    pools: list[object] = []
    split = scan._split

    def counted(*args: object) -> object:
        pool, results = split(*args)  # type: ignore[arg-type]
        pools.append(pool)
        return pool, results

    monkeypatch.setattr(scan, "_split", counted)
    return log, pools


def _scan(log: Path, prefilter: Prefilter = PREFILTER) -> list[scan.ScanResult]:
    with log.open("rb") as stream:
        return list(scan.scan_file(str(log), stream, workers=2, prefilter=prefilter))


def _alive(pool: object) -> bool:
    return any(worker.is_alive() for worker in pool._pool)  # type: ignore[attr-defined]


def test_a_started_scan_is_taken_by_the_scan_of_that_file(split_log: tuple[Path, list[object]]) -> None:
    log, pools = split_log
    assert scan.start_scan(str(log), workers=2, prefilter=PREFILTER)
    assert len(pools) == 1  # the workers run before the reader asks
    taken = _scan(log)
    assert len(pools) == 1  # and the reader took their results instead of starting others
    fresh = _scan(log)
    assert len(pools) == 2
    assert _results(taken) == _results(fresh)
    assert sum(len(r.hits) for r in taken) > 0


def test_a_started_scan_of_other_settings_is_stopped_and_the_file_scanned_anew(
    split_log: tuple[Path, list[object]],
) -> None:
    log, pools = split_log
    assert scan.start_scan(str(log), workers=2, prefilter=Prefilter())  # no allowlist: fewer hits
    results = _scan(log, PREFILTER)
    assert len(pools) == 2 and not _alive(pools[0])
    assert _results(results) == _results(_scan(log, PREFILTER))


def test_a_file_changed_since_its_scan_started_is_scanned_anew(split_log: tuple[Path, list[object]]) -> None:
    log, pools = split_log
    assert scan.start_scan(str(log), workers=2, prefilter=PREFILTER)
    log.write_bytes(log.read_bytes() + LINES[1] + b"\n")  # a refusal more
    results = _scan(log)
    assert len(pools) == 2 and not _alive(pools[0])
    assert results[-1].hits[-1][1] == LINES[1]


def test_a_scan_no_one_took_is_stopped(split_log: tuple[Path, list[object]]) -> None:
    log, pools = split_log
    assert scan.start_scan(str(log), workers=2, prefilter=PREFILTER)
    scan.stop_started()
    assert not _alive(pools[0])
    assert _results(_scan(log)) == _results(_scan(log))  # then read as usual


def test_what_scan_file_reads_in_one_process_is_not_started(
    split_log: tuple[Path, list[object]], tmp_path: Path
) -> None:
    log, pools = split_log
    packed = tmp_path / "audit.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    assert not scan.start_scan(str(packed), workers=2, prefilter=PREFILTER)  # read through gzip
    assert not scan.start_scan(str(log), workers=1, prefilter=PREFILTER)
    assert not scan.start_scan("-", workers=2, prefilter=PREFILTER)
    assert not scan.start_scan(str(tmp_path / "missing.log"), workers=2, prefilter=PREFILTER)
    assert pools == []
