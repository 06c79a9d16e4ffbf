"""Which audit lines can give a finding, decided on raw bytes so most lines are never decoded.

A line can matter when it holds a refusal (``"code":403``: unusual-agent-forbidden,
forbidden-burst, new-agent-forbidden), the webhook's ``user-agent-verdict`` annotation
(correlation), or an agent that *might* be on the allowlist's ``denied:`` list (known-bad-agent
fires on successes too). The last one depends on the allowlist, so a :class:`Prefilter` is
built per allowlist: each denied entry yields a literal that every agent it matches must
contain, and one RE2 pattern, anchored on the ``"userAgent":"`` key (RE2 skips to that literal
at memchr speed), finds those lines in a whole block at once.

It is a superset, never an exact test: case is ignored; an agent holding a JSON escape or a
non-ASCII byte always counts (so ``\\u212a`` spellings and Unicode case folding cannot hide a
denied agent); a ``regex:`` denied entry, whose literal cannot be derived, makes every line
count (correct, only slower).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import re2

from webhook.allowlist import Allowlist

__all__ = ["STATIC_NEEDLES", "Prefilter"]

STATIC_NEEDLES: tuple[bytes, ...] = (b'"code":403', b'"code": 403', b"user-agent-verdict")
"""Allowlist-independent needles: refusals (compact and spaced JSON) and webhook verdicts."""

_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$%'()*+,-./:;=?@[]^_`{|}~"
)
_MIN_PIECE = 3


def _options() -> Any:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False
    return options


def _safe_runs(text: str) -> list[str]:
    """Runs of characters JSON encoders never escape (so the literal appears as is)."""
    runs, current = [], []
    for ch in text:
        if ch in _SAFE:
            current.append(ch)
        else:
            runs.append("".join(current))
            current = []
    runs.append("".join(current))
    return [r for r in runs if r]


def _branches(denied: Iterable[Any]) -> tuple[list[str], list[str]] | None:
    """(anchored, anywhere) literals, or None when some entry forces every line to count."""
    anchored: list[str] = []
    anywhere: list[str] = []
    for compiled in denied:
        entry = compiled.entry
        if entry.product is not None:
            literal, at_start = entry.product, True
        elif entry.glob is not None:
            pieces = [p for p in entry.glob.replace("?", "*").split("*") if p]
            if not pieces:
                return None
            at_start = not entry.glob.startswith(("*", "?"))
            literal = pieces[0] if at_start else max(pieces, key=len)
        else:
            return None  # a regex: no literal can be derived
        runs = _safe_runs(literal)
        if at_start and runs and runs[0] == literal:
            anchored.append(literal)
            continue
        best = max(runs, key=len, default="")
        if len(best) < _MIN_PIECE:
            return None
        anywhere.append(best)
    return anchored, anywhere


class Prefilter:
    """The lines that can matter under one allowlist. Picklable (for worker processes)."""

    def __init__(self, allowlist: Allowlist | None = None) -> None:
        """``allowlist`` None: only the allowlist-independent needles (no known-bad-agent lines)."""
        self.needles = STATIC_NEEDLES
        self.all_lines = False
        self.source: str | None = None
        branches = _branches(allowlist.denied) if allowlist is not None else ([], [])
        if branches is None:
            self.all_lines = True
        elif branches != ([], []):
            anchored, anywhere = branches
            alternatives = [r"[^\"\n]*[\\\x80-\xff]"]  # escapes and non-ASCII: always candidates
            if anchored:
                alternatives.append(r"(?i:[ \t]*(?:" + "|".join(re2.escape(a) for a in anchored) + "))")
            if anywhere:
                alternatives.append(r"(?i:[^\"\n]*(?:" + "|".join(re2.escape(a) for a in anywhere) + "))")
            self.source = r"\"userAgent\": ?\"(?:" + "|".join(alternatives) + ")"
        self._pattern: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"needles": self.needles, "all_lines": self.all_lines, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.needles = state["needles"]
        self.all_lines = state["all_lines"]
        self.source = state["source"]
        self._pattern = None

    @property
    def pattern(self) -> Any:
        if self._pattern is None and self.source is not None:
            self._pattern = re2.compile(self.source.encode("latin-1"), _options())
        return self._pattern

    def matches(self, line: bytes) -> bool:
        """Can this one line give a finding?"""
        if self.all_lines or any(needle in line for needle in self.needles):
            return True
        return self.pattern is not None and self.pattern.search(line) is not None

    def hit_spans(self, buf: bytes, start: int, end: int, *, spaced: bool = True) -> list[tuple[int, int]]:
        """``(start, end)`` of each line in ``buf[start:end]`` that can matter, in order, once.

        ``buf[start:end]`` holds complete lines, each ending in a newline. With ``spaced``
        False (the block is compact JSON) needles spelled with ``": "`` are not searched.
        """
        if self.all_lines:
            spans = []
            pos = start
            while pos < end:
                newline = buf.find(b"\n", pos, end)
                spans.append((pos, newline))
                pos = newline + 1
            return spans
        found: set[tuple[int, int]] = set()

        def add(pos: int) -> int:
            line_start = buf.rfind(b"\n", start, pos) + 1 or start
            line_end = buf.find(b"\n", pos, end)
            found.add((line_start, line_end))
            return line_end

        for needle in self.needles:
            if not spaced and b": " in needle:
                continue
            pos = buf.find(needle, start, end)
            while pos >= 0:
                pos = buf.find(needle, add(pos), end)
        pattern = self.pattern
        if pattern is not None:
            for match in pattern.finditer(buf, start, end):
                add(match.start())
        return sorted(found)
