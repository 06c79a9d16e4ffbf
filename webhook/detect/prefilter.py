"""Which audit lines can give a finding, decided on raw bytes so most lines are never decoded.

A line can matter when it holds a refusal (``"code":403``: unusual-agent-forbidden,
forbidden-burst, new-agent-forbidden), the webhook's ``user-agent-verdict`` annotation
(correlation), or an agent that *might* be on the allowlist's ``denied:`` list (known-bad-agent
fires on successes too). The last one depends on the allowlist, so a :class:`Prefilter` is
built per allowlist: each denied entry yields a literal that every agent it matches must
contain, and one RE2 pattern finds those lines in a whole block at once.

Blocks are searched with RE2 patterns that start with a literal: RE2 then skips with ``memchr``
to the literal's first byte and runs its automaton only from there. A pattern starting with
``"`` (every tenth byte of JSON) ran the automaton over every byte, 4-5x slower; so each needle
is searched for by a pattern that starts elsewhere (:data:`BLOCK_FORMS`), and the agent key by
``gent": "``, which shares its start with the verdict needle's tail ``gent-verdict``: one pass
finds both.

A denied product is looked for anywhere in the agent (the parser takes the first product token
after any comment or junk: ``(x) peirates/1.0``), the agent key however it is spaced, and a line
on its own (:meth:`Prefilter.matches`) by the same patterns as a block, so the line-by-line path
of odd blocks (CRLF, white space around lines) selects alike. Numbers are taken as the
apiserver writes them (``403``, also ``403.0``, ``403e0``): ``4.03e2`` is not looked for.

It is a superset, never an exact test: case is ignored; an agent holding a JSON escape or a
non-ASCII byte always counts (so ``\\u212a`` spellings and Unicode case folding cannot hide a
denied agent); a ``regex:`` denied entry, whose literal cannot be derived, makes every line
count (correct, only slower).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import re2

from webhook.core.allowlist import Allowlist

__all__ = ["AGENT_KEY", "BLOCK_FORMS", "REFUSAL_FORM", "STATIC_NEEDLES", "VERDICT_NEEDLE", "Prefilter"]

VERDICT_NEEDLE = b"user-agent-verdict"
STATIC_NEEDLES: tuple[bytes, ...] = (b'"code":403', b'"code": 403', VERDICT_NEEDLE)
"""Allowlist-independent needles: refusals (compact and spaced JSON) and webhook verdicts."""

REFUSAL_FORM = r"403(?:[\t\r ,.\]}]|[eE][+-]?[0-9]+[\t\r ,\]}])"
BLOCK_FORMS: dict[bytes, str] = {
    b'"code":403': REFUSAL_FORM,
    b'"code": 403': REFUSAL_FORM,
    VERDICT_NEEDLE: "gent-verdict",
}
"""The RE2 source a block is searched with for each needle: a superset of the lines that can
matter through it. A refusal by its status number: 403 followed by what can follow a JSON number
or by a fraction or a whole exponent (compact and spaced JSON alike; ``4`` is about six bytes in
a line, ``c`` of ``code`` fifteen; hex IDs holding ``403e`` do not match); the verdict by a tail
of its needle."""

AGENT_KEY = r"gent\"[\t ]*:[\t ]*\""
"""The agent key's tail and its colon, however spaced (``"userAgent":"``, ``"userAgent" : "``)."""

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
            # the first product token, after any comment or junk the parser skips: anywhere
            literal, at_start = entry.product, False
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
        self.agent_values: str | None = None
        """RE2 source for the start of an agent value that may be denied (None: no denied entry)."""
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
            self.agent_values = "(?:" + "|".join(alternatives) + ")"
        self._block: list[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"needles": self.needles, "all_lines": self.all_lines, "agent_values": self.agent_values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.needles = state["needles"]
        self.all_lines = state["all_lines"]
        self.agent_values = state["agent_values"]
        self._block = None

    @property
    def source(self) -> str | None:
        """RE2 source of the agent pattern: the key, then a value that may be denied."""
        return None if self.agent_values is None else AGENT_KEY + self.agent_values

    def _block_patterns(self) -> list[Any]:
        """RE2 patterns whose matches mark the lines that can matter (compiled once per process).

        The verdict needle's tail ``gent-verdict`` and the agent key's ``gent": "`` share their
        first four bytes, so one pattern (RE2 factors the common prefix) finds both in one pass.
        """
        if self._block is None:
            forms = list(dict.fromkeys(BLOCK_FORMS[n] for n in self.needles))
            if self.agent_values is not None:
                verdict = BLOCK_FORMS[VERDICT_NEEDLE]
                agent = AGENT_KEY + self.agent_values
                forms = [f for f in forms if f != verdict] + [f"(?:{verdict}|{agent})"]
            self._block = [re2.compile(f.encode("latin-1"), _options()) for f in forms]
        return self._block

    def matches(self, line: bytes) -> bool:
        """Can this one line give a finding? The block patterns' answer for the line alone, so a
        line is selected alike in a well-shaped block and on the line-by-line path."""
        return self.all_lines or any(p.search(line) is not None for p in self._block_patterns())

    def hit_spans(self, buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
        """``(start, end)`` of each line in ``buf[start:end]`` that can matter, in order, once.

        ``buf[start:end]`` holds complete lines, each ending in a newline, compact or spaced JSON
        (the block patterns match both).
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
        for pattern in self._block_patterns():
            match = pattern.search(buf, start, end)
            while match is not None:
                pos = match.start()
                line_start = buf.rfind(b"\n", start, pos) + 1 or start
                line_end = buf.find(b"\n", pos, end)
                found.add((line_start, line_end))
                match = pattern.search(buf, line_end, end)
        return sorted(found)
