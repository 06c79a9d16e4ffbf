"""An over-long audit line read down to the fields that judge it, in bounded memory.

A client chooses how long its request's audit line is: ``GET .../secrets?`` and 700,000 ``&``
(which the apiserver writes as ``\\u0026``) make a 4.2 MB line. Skipping lines over
``MAX_LINE_BYTES`` would let it choose to be skipped, so such a line is fed, chunk by chunk,
through :class:`LongLine`: a small JSON tokenizer that keeps only the top-level fields the
Detector reads (:data:`KEPT_FIELDS`), cuts every string in them to :data:`MAX_STRING_BYTES`
(at a character boundary: ``requestURI`` is the one that gets cut) and drops everything else
(``requestObject``, ``responseObject``) without holding it. What comes out is a compact JSON
line of at most :data:`MAX_KEPT_BYTES`, decoded like any other line.

It does not validate: the line it returns goes through the same JSON parser and Event model as
every other line, which reject what is not an audit event.
"""

from __future__ import annotations

from typing import Any, Final

import re2

__all__ = ["KEPT_FIELDS", "MAX_KEPT_BYTES", "MAX_STRING_BYTES", "LongLine"]

KEPT_FIELDS: Final = frozenset(
    {
        "kind",
        "apiVersion",
        "level",
        "auditID",
        "stage",
        "requestURI",
        "verb",
        "user",
        "impersonatedUser",
        "sourceIPs",
        "userAgent",
        "objectRef",
        "responseStatus",
        "requestReceivedTimestamp",
        "stageTimestamp",
        "annotations",
    }
)
"""The top-level fields kept: those :class:`webhook.core.audit.Event` reads."""
MAX_STRING_BYTES: Final = 4096
"""Longest string kept (the apiserver itself cuts agents at 1,024 characters)."""
MAX_KEPT_BYTES: Final = 1024 * 1024
"""Longest line given back; a line whose kept fields are longer stays unreadable."""
_MAX_KEY = 64
_MAX_SCALAR = 64


def _options() -> Any:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.dot_nl = True
    return options


_BODY = re2.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', _options())
"""A string's body up to its closing quote (or the end of the data, or a lone last backslash)."""
_SKIP = re2.compile(rb'[^"{}\[\]]*', _options())
"""What a dropped value holds between its strings and brackets (numbers, commas, white space)."""
_SKIP_TOP = re2.compile(rb'[^"{}\[\],]*', _options())
"""The same at the top level, where a comma ends the dropped value."""
_SCALAR = re2.compile(rb"[-+.0-9A-Za-z]*", _options())
_SPACE = re2.compile(rb"[ \t\r\n]+", _options())
_HIGH = frozenset((b"d8", b"d9", b"da", b"db"))


def _cut_escape(text: bytes) -> bytes:
    """``text`` without a last escape that is cut, or that is a surrogate pair's first half."""
    backslash = text.rfind(b"\\", max(0, len(text) - 6))
    if backslash < 0:
        return text
    before = text[: backslash + 1]
    if (len(before) - len(before.rstrip(b"\\"))) % 2 == 0:
        return text  # an escaped backslash, not the start of an escape
    unicode = text[backslash + 1 : backslash + 2] == b"u"
    if len(text) - backslash < (6 if unicode else 2):
        return text[:backslash]
    if unicode and text[backslash + 2 : backslash + 4].lower() in _HIGH:
        return text[:backslash]
    return text


def _clean_cut(text: bytes) -> bytes:
    """``text`` (a cut string body) without a trailing half escape or half UTF-8 character."""
    text = _cut_escape(_cut_escape(text))
    end = len(text)
    back = 0
    while back < 4 and end - back > 0 and text[end - back - 1] & 0xC0 == 0x80:
        back += 1
    if end - back > 0 and text[end - back - 1] >= 0xC0:
        lead = text[end - back - 1]
        width = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if back + 1 < width:
            return text[: end - back - 1]
    return text


class LongLine:
    """Feed one line's bytes in any chunks (:meth:`feed`), then take :meth:`line`.

    Memory is bounded by :data:`MAX_KEPT_BYTES` whatever the line's length; :attr:`size` counts
    the bytes fed.
    """

    def __init__(self) -> None:
        self.size = 0
        self.error: str | None = None
        self._out = bytearray()
        self._carry = b""
        self._depth = 0
        self._done = False
        self._expect_key = False
        self._members = 0
        self._dropping = False
        self._key: bytearray | None = None
        self._string: str | None = None
        """Inside a string: "key", "kept" or "skip"."""
        self._string_start = 0
        self._cut = False

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.error is not None:
            return
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        try:
            self._run(data)
        except ValueError as exc:
            self.error = str(exc)
            self._out = bytearray()
        if len(self._out) > MAX_KEPT_BYTES:
            self.error = f"its audit fields are longer than {MAX_KEPT_BYTES} bytes"
            self._out = bytearray()

    def line(self) -> bytes | None:
        """The kept fields as one compact JSON line; None (see :attr:`error`) when unreadable."""
        if self.error is None and not self._done:
            self.error = "not one complete JSON object"
        return None if self.error is not None else bytes(self._out)

    # -- the tokenizer --------------------------------------------------------------------
    def _run(self, data: bytes) -> None:
        pos, end = 0, len(data)
        out = self._out
        while pos < end:
            if self._string is not None:
                pos = self._body(data, pos)
                continue
            byte = data[pos : pos + 1]
            if byte in (b" ", b"\t", b"\r", b"\n"):
                pos = _SPACE.match(data, pos).end()
            elif self._done:
                raise ValueError("data after the JSON object")
            elif self._dropping and byte not in (b'"{}[],' if self._depth == 1 else b'"{}[]'):
                match = (_SKIP_TOP if self._depth == 1 else _SKIP).match(data, pos)
                pos = match.end() if match is not None and match.end() > pos else pos + 1
            elif byte == b'"':
                pos = self._open_string(pos + 1)
            elif byte in (b"{", b"["):
                if self._depth == 0 and byte != b"{":
                    raise ValueError("not a JSON object")
                self._depth += 1
                if self._depth == 1:
                    self._expect_key = True
                if not self._dropping:
                    out += byte
                pos += 1
            elif byte in (b"}", b"]"):
                self._depth -= 1
                if self._depth < 0:
                    raise ValueError("unbalanced brackets")
                if self._depth == 0:
                    self._dropping = False
                    self._done = True
                if not self._dropping:
                    out += byte
                pos += 1
            elif byte == b":":
                if self._depth == 1:
                    self._member()
                elif not self._dropping:
                    out += byte
                pos += 1
            elif byte == b",":
                if self._depth == 1:
                    self._dropping = False
                    self._expect_key = True
                elif not self._dropping:
                    out += byte
                pos += 1
            else:
                pos = self._scalar(data, pos)

    def _member(self) -> None:
        """A top-level key and its colon were read: keep the value that follows, or drop it."""
        key = bytes(self._key or b"")
        self._key = None
        if key.decode("latin-1") in KEPT_FIELDS:
            self._out += (b',"' if self._members else b'"') + key + b'":'
            self._members += 1
            self._dropping = False
        else:
            self._dropping = True

    def _open_string(self, pos: int) -> int:
        if self._depth == 1 and self._expect_key:
            self._string, self._key, self._expect_key = "key", bytearray(), False
        elif self._dropping:
            self._string = "skip"
        else:
            self._string = "kept"
            self._out += b'"'
            self._string_start = len(self._out)
            self._cut = False
        return pos

    def _body(self, data: bytes, pos: int) -> int:
        match = _BODY.match(data, pos)
        stop = match.end() if match is not None else pos
        if stop == len(data) - 1 and data[stop : stop + 1] == b"\\":
            self._carry = data[stop:]  # a lone backslash: its escape ends in the next chunk
        self._keep(data[pos:stop])
        if stop >= len(data) or self._carry:
            return len(data)
        # data[stop] is the closing quote
        if self._string == "kept":
            self._out += b'"'
        self._string = None
        return stop + 1

    def _keep(self, part: bytes) -> None:
        if self._string == "key":
            assert self._key is not None
            if len(self._key) + len(part) > _MAX_KEY:
                self._key = bytearray(b"\x00")  # too long for any kept name
            else:
                self._key += part
        elif self._string == "kept" and not self._cut:
            room = MAX_STRING_BYTES - (len(self._out) - self._string_start)
            if len(part) <= room:
                self._out += part
                return
            kept = bytes(self._out[self._string_start :]) + part[:room]
            del self._out[self._string_start :]
            self._out += _clean_cut(kept)
            self._cut = True

    def _scalar(self, data: bytes, pos: int) -> int:
        match = _SCALAR.match(data, pos)
        stop = match.end() if match is not None else pos
        if stop == pos:
            raise ValueError(f"unexpected byte {data[pos : pos + 1]!r}")
        if stop == len(data):
            if stop - pos > _MAX_SCALAR:
                raise ValueError("a number or literal too long")
            self._carry = data[pos:]  # may go on in the next chunk
            return stop
        if not self._dropping:
            if stop - pos > _MAX_SCALAR:
                raise ValueError("a number or literal too long")
            self._out += data[pos:stop]
        return stop
