"""The allowlist: which user agents a cluster expects, and which it knows to be hostile.

File format (YAML; also the ConfigMap key ``allowlist.yaml``)::

    agents:                      # listed agents
      - "kubectl/*"              # a string is a case-insensitive glob over the whole agent
      - regex: "^helm/v3\\."     # google-re2 (linear time), case-insensitive, search semantics
      - product: kube-scheduler  # the first product token's name, with optional version bounds
        minVersion: v1.20.0
        users: ["system:kube-scheduler"]   # scopes (globs); users OR groups, AND namespaces
        reason: "control plane"
        expires: 2027-01-31      # after this date the entry stops matching and is reported
    denied:                      # known-bad agents: same item forms, never "listed"
      - product: peirates

Only characters that look like themselves can list an agent: one holding a control, format,
invisible (default-ignorable), combining or look-alike character (``\\u212a`` KELVIN SIGN,
``\\u017f`` LONG S, fullwidth forms: :func:`webhook.core.useragent.has_unsafe_chars`) is never
``listed``, so RE2's Unicode case folding never lends an ASCII entry to a look-alike; ``denied:``
entries are also tried on its ASCII skeleton. Every pattern is compiled with google-re2, so no
allowlist entry can make matching super-linear on an attacker's agent. A broken file raises
:class:`AllowlistError` naming the entry, and a caller keeps its last good :class:`Allowlist`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, get_args

import re2

from webhook.core import useragent
from webhook.core.cache import CacheStats, Memo, text_cost
from webhook.errors import SetupError

__all__ = [
    "MODES",
    "SHIPPED_PARSE",
    "VALIDATED_TEXTS",
    "VERDICT_RANK",
    "Allowlist",
    "AllowlistError",
    "AnnotatedVerdict",
    "Decision",
    "Entry",
    "Mode",
    "Verdict",
    "default_allowlist",
    "default_allowlist_text",
]

Verdict = Literal["listed", "unlisted", "denied"]
"""What the allowlist says of an agent."""
AnnotatedVerdict = Literal["listed", "unlisted", "denied", "unknown"]
"""What the webhook annotates: a :data:`Verdict`, or ``unknown`` when it found no agent to judge."""
Mode = Literal["observe", "warn", "enforce"]
"""What the webhook does with an unlisted or denied verdict: record it, warn the client, or deny."""
MODES: tuple[Mode, ...] = get_args(Mode)
VERDICT_RANK: dict[str, int] = {"listed": 0, "unknown": 1, "unlisted": 2, "denied": 3}
"""Worse is higher; where several verdicts apply to one request, the worst one wins."""
Section = Literal["agents", "denied"]

_CACHE_SIZE = 8192


class AllowlistError(SetupError, ValueError):
    """The allowlist text cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of ``agents:`` or ``denied:``, as the schema (:func:`_schema`) validated it.

    A plain record: the allowlist holds these, and only a mapping item of a text not validated
    before (:data:`VALIDATED_TEXTS`) needs pydantic. Same fields, order and repr as the schema,
    so :attr:`Allowlist.hash` (in every finding) does not depend on which path built it.
    """

    glob: str | None = None
    regex: str | None = None
    product: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    users: list[str] | None = None
    groups: list[str] | None = None
    namespaces: list[str] | None = None
    reason: str | None = None
    expires: dt.date | None = None

    def describe(self) -> str:
        if self.glob is not None:
            return f"glob {self.glob!r}"
        if self.regex is not None:
            return f"regex {self.regex!r}"
        bounds = "".join(f" {op}{v}" for op, v in ((">=", self.min_version), ("<=", self.max_version)) if v)
        return f"product {self.product!r}{bounds}"

    def item(self) -> dict[str, Any]:
        """The entry as a file item: file names (``minVersion``), unset fields left out, dates as
        ISO text (what ``suggest`` writes back)."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[_FILE_NAMES.get(name, name)] = value.isoformat() if name == "expires" else value
        return out


_FILE_NAMES: Final = {"min_version": "minVersion", "max_version": "maxVersion"}
_FIELDS: Final = tuple(f.name for f in fields(Entry))


@lru_cache(maxsize=1)
def _schema() -> Any:
    """The pydantic model of a mapping item, built on first use: its import and build cost more
    than the rest of ``ua-sentinel check``, and a list of globs or the built-in list never needs
    it. Strict: a typo is an error, not silence; its messages name the field."""
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class EntrySchema(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

        glob: str | None = None
        regex: str | None = None
        product: str | None = None
        min_version: str | None = Field(default=None, alias="minVersion")
        max_version: str | None = Field(default=None, alias="maxVersion")
        users: list[str] | None = None
        groups: list[str] | None = None
        namespaces: list[str] | None = None
        reason: str | None = None
        expires: dt.date | None = None

        @model_validator(mode="after")
        def _one_matcher(self) -> EntrySchema:
            given = [k for k in ("glob", "regex", "product") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of glob, regex or product")
            if self.product is None and (self.min_version or self.max_version):
                raise ValueError("minVersion/maxVersion need product")
            for bound in (self.min_version, self.max_version):
                if bound is not None and useragent.version_tuple(bound) is None:
                    raise ValueError(f"version bound {bound!r} has no release number")
            for key in ("glob", "regex", "product"):
                value = getattr(self, key)
                if value is not None and not value:
                    raise ValueError(f"{key} must not be empty")
            return self

    return EntrySchema


VALIDATED_TEXTS: Final = frozenset({"8818fe651fcbd1b228ae53107f00964cfeb80b07e758c8dfa14bac03bbd2a0a3"})
"""SHA-256 of allowlist texts whose every item the schema accepted as it is (the built-in list):
their mapping items become entries without pydantic. ``test_allowlist`` checks this against the
shipped file and that both paths give equal entries; a text not here is validated as usual."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one agent and principal, and which entry decided it."""

    verdict: Verdict
    entry: str | None
    """``agents[3] (glob 'kubectl/*')`` or None when nothing matched."""
    reason: str
    expired: tuple[str, ...] = ()
    """Entries that would have matched but are past their ``expires`` date."""


def _re2_options(case_sensitive: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    options.dot_nl = True
    return options


_INSENSITIVE = _re2_options(case_sensitive=False)
_SENSITIVE = _re2_options(case_sensitive=True)


def _glob_pattern(glob: str) -> str:
    parts = []
    for ch in glob:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re2.escape(ch))
    return "".join(parts)


def _compile_glob(glob: str, case_sensitive: bool) -> Any:
    return re2.compile(_glob_pattern(glob), _SENSITIVE if case_sensitive else _INSENSITIVE)


class _Scope:
    """users/groups/namespaces globs of one entry, compiled."""

    def __init__(self, entry: Entry) -> None:
        self.users = [_compile_glob(g, True) for g in entry.users or ()]
        self.groups = [_compile_glob(g, True) for g in entry.groups or ()]
        self.namespaces = [_compile_glob(g, True) for g in entry.namespaces or ()]
        self.unscoped = not (self.users or self.groups or self.namespaces)

    def admits(self, user: str | None, groups: Sequence[str], namespace: str | None) -> bool:
        if self.unscoped:
            return True
        if self.users or self.groups:
            by_user = user is not None and any(p.fullmatch(user) for p in self.users)
            by_group = any(p.fullmatch(g) for p in self.groups for g in groups)
            if not (by_user or by_group):
                return False
        if self.namespaces:
            return namespace is not None and any(p.fullmatch(namespace) for p in self.namespaces)
        return True


class _Compiled:
    def __init__(self, section: Section, index: int, entry: Entry) -> None:
        self.label = f"{section}[{index}] ({entry.describe()})"
        self.entry = entry
        self.scope = _Scope(entry)
        self.pattern: Any = None
        self.product = entry.product.lower() if entry.product else None
        self.min = useragent.version_tuple(entry.min_version) if entry.min_version else None
        self.max = useragent.version_tuple(entry.max_version) if entry.max_version else None
        if entry.glob is not None:
            self.pattern = _compile_glob(entry.glob, False)
        elif entry.regex is not None:
            try:
                self.pattern = re2.compile(entry.regex, _INSENSITIVE)
            except re2.error as exc:
                detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                raise AllowlistError(
                    f"{section}[{index}]: regex {entry.regex!r} is not valid RE2 syntax: {detail}"
                ) from None

    @property
    def set_pattern(self) -> str | None:
        """This entry's pattern for an unanchored RE2 Set (None for a product entry)."""
        if self.entry.glob is not None:
            return rf"\A(?:{_glob_pattern(self.entry.glob)})\z"
        return self.entry.regex

    def matches_agent(self, agent: str) -> bool:
        if self.entry.glob is not None:
            return self.pattern.fullmatch(agent) is not None
        if self.pattern is not None:
            return self.pattern.search(agent) is not None
        return self.matches_product(useragent.parse(agent).primary)

    def matches_product(self, primary: useragent.Product | None) -> bool:
        """A product entry against the agent's first product token (parsed once by the caller)."""
        if primary is None or primary.name.lower() != self.product:
            return False
        if self.min is None and self.max is None:
            return True
        version = useragent.version_tuple(primary.version or "")
        if version is None:
            return False
        return (self.min is None or version >= self.min) and (self.max is None or version <= self.max)

    def expired(self, today: dt.date) -> bool:
        return self.entry.expires is not None and self.entry.expires < today


class _Section:
    """Which entries of one section match an agent, scopes aside, in entry order.

    One RE2 Set pass over the agent pre-selects the glob and regex entries (a never-seen agent
    costs one match, not one per entry), each candidate is confirmed by its own pattern, and the
    product entries share one parse of the agent. A Set that cannot be built leaves every
    entry to its own pattern.
    """

    def __init__(self, entries: list[_Compiled]) -> None:
        self.entries = entries
        self.products = [i for i, c in enumerate(entries) if c.product is not None]
        self.patterned = [i for i, c in enumerate(entries) if c.product is None]
        self.set: Any = _compile_set([entries[i].set_pattern or "" for i in self.patterned])

    def matching(self, agent: str) -> tuple[int, ...]:
        if self.set is not None:
            candidates = [self.patterned[k] for k in self.set.Match(agent) or ()]
        else:
            candidates = self.patterned
        found = [i for i in candidates if self.entries[i].matches_agent(agent)]
        if self.products:
            primary = useragent.parse(agent).primary
            found += [i for i in self.products if self.entries[i].matches_product(primary)]
        return tuple(sorted(found))


def _compile_set(patterns: list[str]) -> Any:
    """An unanchored, case-insensitive RE2 Set of ``patterns``; None when empty or not buildable."""
    if not patterns:
        return None
    try:
        compiled = re2.Set.SearchSet(_INSENSITIVE)
        for pattern in patterns:
            compiled.Add(pattern)
        compiled.Compile()
    except re2.error:
        return None
    return compiled


def _parse_items(section: Section, items: Any, *, validated: bool = False) -> list[Entry]:
    """The entries of one section; ``validated``: the text is in :data:`VALIDATED_TEXTS`."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise AllowlistError(f"{section}: must be a list, got {type(items).__name__}")
    entries: list[Entry] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise AllowlistError(f"{section}[{index}]: empty glob")
            entries.append(Entry(glob=item))
            continue
        if not isinstance(item, dict):
            raise AllowlistError(
                f"{section}[{index}]: expected a glob string or a mapping, got {type(item).__name__}"
            )
        if validated:
            entries.append(Entry(**{_PYTHON_NAMES.get(str(k), str(k)): v for k, v in item.items()}))
            continue
        entries.append(_validate(section, index, item))
    return entries


_PYTHON_NAMES: Final = {file: name for name, file in _FILE_NAMES.items()}


def _validate(section: Section, index: int, item: dict[str, Any]) -> Entry:
    """One mapping item through the pydantic schema; its messages name the entry and the field."""
    from pydantic import ValidationError

    try:
        model = _schema().model_validate(item)
    except ValidationError as exc:
        problems = "; ".join(
            # A key the file chose (extra="forbid" names it): escaped, as the message reaches
            # Events, /readyz and terminals.
            (".".join(useragent.display(str(p), 120) for p in err["loc"]) + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise AllowlistError(f"{section}[{index}]: {problems}") from None
    return Entry(**{name: getattr(model, name) for name in _FIELDS})


def _load_yaml(text: str, source: str) -> Any:
    """The YAML document of ``text``, or an :class:`AllowlistError` saying where it is broken."""
    import yaml  # here: the built-in list is read from its shipped parse (_shipped_parse)

    try:
        # libyaml's parser (PyYAML's C loader, same safe constructors): 10x faster on the
        # built-in list than the pure-Python one.
        return yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise AllowlistError(f"{source}: not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these for values like 2026-02-31.
        raise AllowlistError(f"{source}: not valid YAML: {exc}") from None


SHIPPED_PARSE: Final = "data/default-allowlist.json"
"""The built-in list's YAML document as JSON, with the SHA-256 of the text it was read from
(``{"sha256": ..., "agents": [...], "denied": [...]}``): importing PyYAML cost a check of the
built-in list more than a quarter of its start-up. ``test_allowlist`` checks it against the YAML."""


@lru_cache(maxsize=1)
def _shipped() -> bytes | None:
    import pkgutil

    try:
        return pkgutil.get_data("webhook", SHIPPED_PARSE)
    except OSError:  # not installed with the package: the YAML is read instead
        return None


def _shipped_parse(digest: str) -> Any:
    """The shipped parse when it was read from the text whose SHA-256 is ``digest``, else None."""
    import json

    data = _shipped()
    if data is None:
        return None
    shipped = json.loads(data)
    if not isinstance(shipped, dict) or shipped.pop("sha256", None) != digest:
        return None
    for items in shipped.values():
        for item in items or ():
            if isinstance(item, dict) and isinstance(item.get("expires"), str):
                item["expires"] = dt.date.fromisoformat(item["expires"])  # JSON has no dates
    return shipped


class Allowlist:
    """A compiled allowlist. Immutable; build a new one to change it."""

    def __init__(
        self, agents: Iterable[Entry] = (), denied: Iterable[Entry] = (), *, source: str = ""
    ) -> None:
        self.source = source
        self.agents = [_Compiled("agents", i, e) for i, e in enumerate(agents)]
        self.denied = [_Compiled("denied", i, e) for i, e in enumerate(denied)]
        canonical = repr(([e.entry for e in self.agents], [e.entry for e in self.denied]))
        self.hash = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        self._sections = (_Section(self.denied), _Section(self.agents))
        self._candidates = Memo(self._match_agent, max_entries=_CACHE_SIZE, cost=text_cost)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "allowlist.yaml") -> Allowlist:
        """Parse and compile; raise :class:`AllowlistError` with the entry index on any problem."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        validated = digest in VALIDATED_TEXTS
        shipped = _shipped_parse(digest) if validated else None
        doc = shipped if shipped is not None else _load_yaml(text, source)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise AllowlistError(f"{source}: top level must be a mapping with agents: and denied:")
        unknown = sorted(useragent.display(str(k), 120) for k in doc if k not in ("agents", "denied"))
        if unknown:
            raise AllowlistError(f"{source}: unknown key(s) {', '.join(unknown)}; expected agents, denied")
        try:
            return cls(
                _parse_items("agents", doc.get("agents"), validated=validated),
                _parse_items("denied", doc.get("denied"), validated=validated),
                source=source,
            )
        except AllowlistError as exc:
            raise AllowlistError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Allowlist:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AllowlistError(f"{path}: cannot read: {exc}") from None
        return cls.from_yaml(text, source=str(path))

    def cache_stats(self) -> CacheStats:
        """The verdict cache's entries and bytes (bounded by both: agents are attacker text)."""
        return self._candidates.stats()

    def _match_agent(self, agent: str) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
        """Entries whose pattern matches ``agent`` (scopes aside), and whether it is spoofed."""
        spoofed = useragent.has_unsafe_chars(agent)
        if spoofed and not agent.isascii():
            # RE2 needs valid UTF-8: lone surrogates (undecodable bytes) are matched as U+FFFD.
            agent = agent.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        denied_section, agents_section = self._sections
        denied = denied_section.matching(agent)
        if spoofed:
            # Look-alike and invisible characters never list an agent (decide() answers unlisted
            # before agents: is consulted, so RE2's Unicode case folding of \u212a onto k cannot
            # list it), but they do not hide a denied one: \uff50eirates is still peirates.
            denied = tuple(sorted({*denied, *denied_section.matching(useragent.skeleton(agent))}))
        return denied, agents_section.matching(agent), spoofed

    def decide(
        self,
        agent: str | None,
        *,
        user: str | None = None,
        groups: Sequence[str] = (),
        namespace: str | None = None,
        today: dt.date | None = None,
    ) -> Decision:
        """The verdict for ``agent`` sent by ``user`` (in ``groups``) on ``namespace``."""
        if not agent:
            return Decision("unlisted", None, "no user agent")
        day = today or dt.date.today()
        denied_idx, agent_idx, spoofed = self._candidates(agent)
        expired: list[str] = []

        def first(entries: Sequence[_Compiled], candidates: Sequence[int]) -> _Compiled | None:
            """The first candidate in force whose scope admits the principal; expired ones noted."""
            for i in candidates:
                entry = entries[i]
                if entry.expired(day):
                    expired.append(entry.label)
                elif entry.scope.admits(user, groups, namespace):
                    return entry
            return None

        if (hit := first(self.denied, denied_idx)) is not None:
            return Decision("denied", hit.label, "known-bad agent", tuple(expired))
        if spoofed:
            return Decision(
                "unlisted",
                None,
                "agent holds control, bidi, invisible or look-alike characters",
                tuple(expired),
            )
        if (hit := first(self.agents, agent_idx)) is not None:
            return Decision("listed", hit.label, "matched", tuple(expired))
        return Decision("unlisted", None, "no entry matched", tuple(expired))

    def may_deny(self, agent: str | None) -> bool:
        """Whether a ``denied:`` pattern matches ``agent``, scopes and expiry aside (memoized with
        :meth:`decide`): when not, :meth:`decide` cannot answer ``denied``, so a caller asking only
        that (the Detector, for a request that succeeded) stops here."""
        return bool(agent and self._candidates(agent)[0])

    def expired_entries(self, today: dt.date | None = None) -> list[str]:
        """Entries past their ``expires`` date, for start-up and reload reports."""
        day = today or dt.date.today()
        return [c.label for c in (*self.agents, *self.denied) if c.expired(day)]


def default_allowlist_text() -> str:
    """The built-in allowlist shipped in the package (``webhook/data/default-allowlist.yaml``).

    Read by the package's loader (``pkgutil.get_data``: a zip import too): ``importlib.resources``
    costs every check and replay of the built-in list ~25 ms of imports (34 modules).
    """
    import pkgutil

    data = pkgutil.get_data("webhook", "data/default-allowlist.yaml")
    if data is None:  # a loader that cannot read package data: the package is broken
        raise AllowlistError("built-in default allowlist: the package holds no data/default-allowlist.yaml")
    return data.decode("utf-8")


@lru_cache(maxsize=1)
def default_allowlist() -> Allowlist:
    return Allowlist.from_yaml(default_allowlist_text(), source="built-in default allowlist")
