"""The one line decoder: replay, tail and suggest read the same events and count the same junk."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import default_allowlist
from webhook.core.audit import Event, audit_object, parse_event
from webhook.detect.prefilter import Prefilter
from webhook.inputs.formats import Format
from webhook.inputs.lines import EVERY_LINE, LineDecoder

PREFILTER = Prefilter(default_allowlist())
RECORDED = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
FORBID = next(line for line in RECORDED if b'"forbid"' in line)


class Read:
    """A decoder and what it reported as malformed."""

    def __init__(self, fmt: Format = "k8s", parse: Any = parse_event) -> None:
        self.malformed: list[tuple[int, str]] = []
        self.decoder: LineDecoder[Any] = LineDecoder(fmt, parse, lambda n, r: self.malformed.append((n, r)))


def junk_log() -> bytes:
    return b"\n".join(
        [
            RECORDED[0],
            b"not json",  # 2
            FORBID + b"\r",  # 3: CRLF is fine
            b"",  # 4: blank lines are skipped, not malformed
            b'{"kind":"Event","responseStatus":{"code":403}}',  # 5: JSON, not an Event
            FORBID[: len(FORBID) // 2],  # 6: cut
            b"  " + FORBID + b" \t",  # 7: white space around the object is JSON too
            FORBID,  # 8, and no newline at the end
        ]
    )


def test_malformed_lines_and_events_are_reported_with_their_line_numbers() -> None:
    read = Read()
    events = list(read.decoder.read(io.BytesIO(junk_log()), PREFILTER))
    assert [e.audit_id for e in events] == [parse_event(FORBID).audit_id] * 3
    assert sorted(n for n, _ in read.malformed) == [2, 5, 6]
    assert (read.decoder.lines, read.decoder.size) == (8, len(junk_log()) + 1)


def test_the_tailers_lines_give_what_a_read_of_the_same_bytes_gives() -> None:
    streamed, batched = Read(), Read()
    events = list(streamed.decoder.read(io.BytesIO(junk_log() + b"\n"), PREFILTER))
    assert list(batched.decoder.lines_of(junk_log().split(b"\n"), PREFILTER)) == events
    assert batched.malformed == streamed.malformed
    assert (batched.decoder.lines, batched.decoder.size) == (streamed.decoder.lines, streamed.decoder.size)


def test_line_numbers_and_counts_go_on_across_reads() -> None:
    read = Read()
    for _ in range(2):
        list(read.decoder.read(io.BytesIO(b"junk\n" + RECORDED[0] + b"\n"), PREFILTER))
    assert [n for n, _ in read.malformed] == [1, 3]
    assert read.decoder.lines == 4


def test_every_line_gives_every_object_at_json_speed() -> None:
    read = Read(parse=audit_object)
    docs = list(read.decoder.read(io.BytesIO(junk_log()), EVERY_LINE))
    assert len(docs) == 5 and docs[2] == {"kind": "Event", "responseStatus": {"code": 403}}
    assert sorted(n for n, _ in read.malformed) == [2, 6]


@pytest.mark.parametrize("via", ["read", "lines_of"])
def test_cloud_shapes_count_skipped_records_and_errors(via: str) -> None:
    aks = [
        orjson.dumps({"records": [{"category": "kube-audit", "properties": {"log": FORBID.decode()}}]}),
        orjson.dumps({"category": "kube-apiserver", "properties": {"log": "I0624 klog"}}),
        b"[1]\r",
    ]
    read = Read("aks")
    if via == "read":
        events = list(read.decoder.read(io.BytesIO(b"\n".join(aks) + b"\n"), PREFILTER))
    else:
        events = list(read.decoder.lines_of(aks, PREFILTER))
    assert [type(e) for e in events] == [Event] and read.decoder.skipped == 1
    assert read.malformed == [(3, 'aks: neither {"records": [...]} nor a diagnostic record')]


def test_a_large_log_reads_the_same_in_one_block_or_many(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join(RECORDED * 3) + b"\n")  # 3.3 MB: several 1 MiB blocks
    one, many = Read(), Read()
    with open(log, "rb") as stream:
        blocks = list(many.decoder.read(stream, PREFILTER))
    assert list(one.decoder.lines_of(log.read_bytes().split(b"\n")[:-1], PREFILTER)) == blocks
    assert one.malformed == many.malformed == []
