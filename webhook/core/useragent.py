"""User-Agent strings: RFC 9110 product tokens, client-go's shape, and display-safe escaping.

User agents are attacker input. Parsing here never raises and never uses a backtracking regex;
``display`` is the only form that may reach a terminal, a log line or an admission warning.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from webhook.core.cache import Memo, text_cost

__all__ = [
    "DISPLAY_MAX",
    "MAX_AGENT_BYTES",
    "TRUNCATION_MARK",
    "ClientGo",
    "Product",
    "UserAgent",
    "cut",
    "display",
    "has_unsafe_chars",
    "is_invisible",
    "is_look_alike",
    "parse",
    "skeleton",
    "version_tuple",
]

DISPLAY_MAX = 256
"""Default cap, in characters, on a displayed agent (after escaping)."""

TRUNCATION_MARK = "...TRUNCATED"
"""What kube-apiserver appends after cutting an agent at :data:`MAX_AGENT_BYTES`."""
MAX_AGENT_BYTES: Final = 1024
"""kube-apiserver writes at most this many bytes of an agent into an audit event, then
:data:`TRUNCATION_MARK` (``maxUserAgentLength`` in k8s.io/apiserver/pkg/audit/request.go)."""

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Me"})
"""Controls, formats (bidi, zero-width), surrogates, private use, unassigned, separators, spaces
(U+0020 aside), and nonspacing/enclosing marks: a mark draws on the character before it (an
ASCII letter plus a mark is a look-alike) and many draw nothing at all (U+034F, U+FE0F)."""

# Default_Ignorable_Code_Point, DerivedCoreProperties.txt of Unicode 16.0.0 (the ranges have not
# changed since 14.0 added U+180F): what renderers draw as nothing. Python's unicodedata has no
# such property, and some of these are letters (Lo: the Hangul fillers U+115F, U+1160, U+3164,
# U+FFA0), so the category test alone does not catch them.
_DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ..AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x206F),  # WORD JOINER..NOMINAL DIGIT SHAPES (U+2065 reserved)
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP..UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM..END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, reserved
)
_INVISIBLE = frozenset(code for low, high in _DEFAULT_IGNORABLE for code in range(low, high + 1)) | {
    0x2800  # BRAILLE PATTERN BLANK: drawn as nothing, though neither format nor default-ignorable
}
# RFC 9110 tchar: the characters a token (product name or version) may hold.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MAX_PARSE = 4096


def is_invisible(ch: str) -> bool:
    """Unicode's Default_Ignorable_Code_Point property (``_DEFAULT_IGNORABLE``), or a blank."""
    return ord(ch) in _INVISIBLE


def is_look_alike(ch: str) -> bool:
    """A non-ASCII character that stands for ASCII text once normalised (NFKC) or case-folded.

    ``\\u212a`` (KELVIN SIGN) folds to ``k``, ``\\u017f`` (LONG S) to ``s``, fullwidth ``\\uff4b``
    to ``k``, ``\\u00df`` to ``ss``: each passes for ASCII on screen, and RE2's case-insensitive
    matching folds the first two onto ASCII entries.
    """
    if ch.isascii():
        return False
    folded = ch.casefold()
    return any(
        form.isascii()
        for form in (
            folded,
            unicodedata.normalize("NFKC", ch).casefold(),
            unicodedata.normalize("NFKC", folded),
        )
    )


def _unsafe_non_ascii(ch: str) -> bool:
    if ch == "\ufffd":
        return True  # what encoders put in place of invalid bytes: the agent was not text
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES or is_invisible(ch) or is_look_alike(ch)


def _is_unsafe(ch: str) -> bool:
    """Characters that do not look like themselves: controls, format characters (bidi,
    zero-width), every default-ignorable or blank character, combining marks, look-alikes of
    ASCII, and stand-ins for bytes that were not text (lone surrogates, U+FFFD)."""
    if ch.isascii():
        return ch < " " or ch == "\x7f"
    return _unsafe_non_ascii(ch)


def has_unsafe_chars(agent: str) -> bool:
    """True when the agent holds a character that does not look like itself (``_is_unsafe``).

    Such an agent is display spoofing (``kubectl/v1.30.0 \\u202e(evil)``, ``\\u212aubectl/v1.30.2``)
    and is never listed.
    """
    if agent.isascii():
        return not agent.isprintable()
    return any(_is_unsafe(ch) for ch in agent)


def skeleton(agent: str) -> str:
    """What ``agent`` looks like as ASCII: NFKC, case-folded, invisible characters dropped.

    For ``denied:`` entries only (``\\uff50eirates`` is still peirates); never a reason to list.
    """
    visible = "".join(ch for ch in agent if not is_invisible(ch))
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", visible).casefold())


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def display(agent: str | None, max_len: int = DISPLAY_MAX) -> str:
    """Render an agent so that it is inert in terminals, logs and kubectl warnings.

    Control, bidi, zero-width and other invisible characters become ``\\xNN`` / ``\\uNNNN``;
    backslash and double quote are escaped so a quoted agent cannot close its quotes; the result
    is at most ``max_len`` characters, ending in ``...`` when cut. A missing agent is ``<none>``.
    """
    if agent is None:
        return "<none>"
    out: list[str] = []
    size = 0
    for ch in agent:
        if ch == "\\":
            piece = "\\\\"
        elif ch == '"':
            piece = '\\"'
        elif _is_unsafe(ch):
            piece = _escape_char(ch)
        else:
            piece = ch
        if size + len(piece) > max_len:
            keep = max(0, max_len - 3)
            text = "".join(out)[:keep]
            return text + "..."[: max_len - len(text)]
        out.append(piece)
        size += len(piece)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Product:
    """One RFC 9110 product token: ``name[/version]``."""

    name: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ClientGo:
    """The fields of client-go's default agent: ``<binary>/<version> (<os>/<arch>) kubernetes/<commit>``."""

    binary: str
    version: str
    os: str
    arch: str
    commit: str

    @property
    def unversioned(self) -> bool:
        """Built without version ldflags (``v0.0.0`` / ``$Format``): typical of ad-hoc tooling."""
        return self.commit == "$Format" or self.version == "v0.0.0"


@dataclass(frozen=True, slots=True)
class UserAgent:
    """A parsed agent. ``products`` and ``comments`` keep their order of appearance."""

    raw: str
    products: tuple[Product, ...] = ()
    comments: tuple[str, ...] = ()
    truncated: bool = False
    client_go: ClientGo | None = None
    well_formed: bool = True

    @property
    def primary(self) -> Product | None:
        """The first product: the client's own name and version."""
        return self.products[0] if self.products else None


def _read_comment(text: str, start: int) -> tuple[str, int, bool]:
    """Read a (possibly nested) comment starting at ``(``; return body, next index, closed?"""
    depth = 0
    i = start
    body: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            body.append(text[i + 1])
            i += 2
            continue
        if ch == "(":
            depth += 1
            if depth > 1:
                body.append(ch)
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return "".join(body), i + 1, True
            body.append(ch)
        else:
            body.append(ch)
        i += 1
    return "".join(body), i, False


def _read_token(text: str, start: int) -> tuple[str, int]:
    i = start
    while i < len(text) and text[i] in _TCHAR:
        i += 1
    return text[start:i], i


def cut(agent: str) -> str:
    """``agent`` as kube-apiserver writes it into an audit event: over :data:`MAX_AGENT_BYTES`
    UTF-8 bytes, the first 1024 bytes and :data:`TRUNCATION_MARK`.

    Go slices the string's bytes, so a character split at the cut leaves invalid bytes, which
    its JSON encoder writes as one U+FFFD each; so does this. An agent longer than this never
    came from the apiserver; cutting it before any cache keeps every cache's keys small.
    """
    if len(agent) <= MAX_AGENT_BYTES // 4:
        return agent  # at most 4 bytes a character: short enough whatever it holds
    raw = agent.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_AGENT_BYTES:
        return agent
    if raw.endswith(_MARK_BYTES) and len(raw) - len(_MARK_BYTES) <= MAX_AGENT_BYTES + _MAX_SPLIT_GROWTH:
        return agent  # already cut (by the apiserver, or by us): the same again, as in a replay
    head = raw[:MAX_AGENT_BYTES]
    split = 0  # bytes of a character the cut split in two
    lead = len(head)
    while lead > 0 and len(head) - lead < 3 and head[lead - 1] & 0xC0 == 0x80:
        lead -= 1  # back over continuation bytes to the character's first byte
    if lead > 0 and head[lead - 1] >= 0xC0 and len(head) - (lead - 1) < _utf8_length(head[lead - 1]):
        split = len(head) - (lead - 1)
    text = head[: len(head) - split].decode("utf-8", "surrogatepass") + "\ufffd" * split
    return text + TRUNCATION_MARK


_MARK_BYTES: Final = TRUNCATION_MARK.encode()
_MAX_SPLIT_GROWTH: Final = 6
"""A split 4-byte character leaves up to 3 bytes, each written as U+FFFD (3 bytes): 6 more."""


def _utf8_length(lead: int) -> int:
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _parse(agent: str) -> UserAgent:
    truncated = agent.endswith(TRUNCATION_MARK)
    text = agent[:_MAX_PARSE]
    products: list[Product] = []
    comments: list[str] = []
    order: list[str] = []
    well_formed = True
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t":
            i += 1
            continue
        if ch == "(":
            body, i, closed = _read_comment(text, i)
            well_formed = well_formed and closed
            comments.append(body)
            order.append("c")
            continue
        name, j = _read_token(text, i)
        if not name:
            well_formed = False
            i += 1
            continue
        version: str | None = None
        if j < len(text) and text[j] == "/":
            version, j = _read_token(text, j + 1)
            if not version:
                well_formed = False
        products.append(Product(name, version))
        order.append("p")
        i = j
    client_go = _client_go(products, comments, order) if well_formed else None
    return UserAgent(
        raw=agent,
        products=tuple(products),
        comments=tuple(comments),
        truncated=truncated,
        client_go=client_go,
        well_formed=well_formed,
    )


parse: Memo[str, UserAgent] = Memo(_parse, max_entries=4096, cost=text_cost)
"""Parse an agent into product tokens and comments, leniently (memoized: agents repeat).

Anything that is not a token or comment marks the agent ``well_formed=False`` and is skipped;
parsing never raises. Only the first 4096 characters are examined.
"""


def _client_go(products: list[Product], comments: list[str], order: list[str]) -> ClientGo | None:
    if order != ["p", "c", "p"] or products[1].name != "kubernetes":
        return None
    binary, version = products[0].name, products[0].version
    commit = products[1].version
    os_name, sep, arch = comments[0].partition("/")
    if not (version and commit and sep and os_name and arch):
        return None
    return ClientGo(binary=binary, version=version, os=os_name, arch=arch, commit=commit)


def version_tuple(version: str) -> tuple[int, ...] | None:
    """``v1.30.2`` → ``(1, 30, 2)``; ``2.31.0-rc1`` → ``(2, 31, 0)``; no leading number → None.

    Pre-release and build suffixes are ignored: bounds compare release numbers only.
    """
    text = version[1:] if version[:1] in ("v", "V") else version
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for ch in piece:
            if not ch.isascii() or not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits[:18]))
        if len(digits) != len(piece):
            break
    return tuple(parts) if parts else None
