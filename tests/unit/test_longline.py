"""An over-long line read down to its audit fields: the same fields whatever the chunks, strings
cut at a character boundary, memory bounded whatever the line's length."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import Iterator

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import AUDIT_LOGS
from webhook.core.audit import parse_event
from webhook.inputs.longline import KEPT_FIELDS, MAX_STRING_BYTES, LongLine

RECORDED = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
REFUSAL = next(line for line in RECORDED if b'"forbid"' in line)


def read_down(chunks: list[bytes]) -> LongLine:
    long = LongLine()
    for chunk in chunks:
        long.feed(chunk)
    return long


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(RECORDED) - 1), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunks_give_the_kept_fields_of_the_line(index: int, cuts: list[int]) -> None:
    line = RECORDED[index]
    got = read_down(split(line, cuts)).line()
    assert got is not None
    assert orjson.loads(got) == {k: v for k, v in orjson.loads(line).items() if k in KEPT_FIELDS}


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(min_size=MAX_STRING_BYTES - 8, max_size=MAX_STRING_BYTES + 8)
    | st.text(alphabet='a\u00e9\u20ac\U0001f600\\"&\n', min_size=1000, max_size=3000),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_a_long_string_is_cut_at_a_character_boundary(text: str, ascii_only: bool, cuts: list[int]) -> None:
    line = json.dumps({"kind": "Event", "requestURI": text * 3}, ensure_ascii=ascii_only).encode()
    got = read_down(split(line, cuts)).line()
    assert got is not None
    uri = orjson.loads(got)["requestURI"]
    assert (text * 3).startswith(uri)
    assert len(uri.encode()) <= MAX_STRING_BYTES


def padded_refusal(ampersands: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """The 4.2 MB audit line of ``GET .../secrets?`` and 700,000 ``&``, as the apiserver writes
    it (``&`` as ``\\u0026``), in chunks, never built whole."""
    event = orjson.loads(REFUSAL)
    event["requestURI"] = "/api/v1/namespaces/default/secrets?PAD"
    head, tail = orjson.dumps(event).split(b"PAD")
    yield head
    left = ampersands
    while left:
        n = min(left, chunk // 6)
        yield b"\\u0026" * n
        left -= n
    yield tail


def test_a_padded_refusal_keeps_its_fields_in_bounded_memory() -> None:
    long = LongLine()
    tracemalloc.start()
    try:
        for chunk in padded_refusal(700_000):
            long.feed(chunk)
        line = long.line()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert long.size > 4 * 1024 * 1024
    assert peak < 1024 * 1024, peak  # the line is 4.2 MB; only its kept fields and a chunk are held
    assert line is not None
    event = parse_event(line)
    assert event.forbidden_by_authorization and event.audit_id == parse_event(REFUSAL).audit_id
    assert event.request_uri.startswith("/api/v1/namespaces/default/secrets?&&&")
    assert len(event.request_uri.encode()) <= MAX_STRING_BYTES


def test_dropped_fields_are_never_held_and_junk_is_unreadable() -> None:
    event = orjson.loads(REFUSAL)
    event["requestObject"] = {"data": [{"k": "v" * 1000, "n": [1, 2.5e3, True, None]}] * 2000}
    line = read_down([orjson.dumps(event)]).line()
    assert line is not None and b"requestObject" not in line
    for junk in (b'{"a":"unterminated', b"[1,2]", b'{"a":1} trailing', b'{"a":1}}', b"not json"):
        long = read_down([junk])
        assert long.line() is None and long.error
