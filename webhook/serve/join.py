"""RequestIndex: recent ``RequestReceived`` audit events, found again by an admission call.

An AdmissionReview names no user agent and shares no ID with the audit event of its request
(``request.uid`` is not the ``auditID``), so the join is on request attributes: effective user
(name, uid), verb <-> operation, API group, resource, subresource, namespace and name. The
mapping, as recorded on a real kube-apiserver 1.20:

==========  ==================================  ====================================
operation   audit verbs                         name on the RequestReceived
==========  ==================================  ====================================
CREATE      create; patch (server-side apply    absent for a plain create; present
            creates), update (a PUT that        for patch and update
            creates, e.g. Endpoints, Leases)
UPDATE      update, patch                       present
DELETE      delete; deletecollection            present; absent (one call per item)
CONNECT     get or create (pods/exec, attach,   present
            portforward, proxy: HTTP method)
==========  ==================================  ====================================

Impersonation: the apiserver writes ``RequestReceived`` before it applies ``Impersonate-User``,
so that event names only the authenticated user (no ``impersonatedUser``, recorded on a real
kube-apiserver 1.20), while the admission call names the impersonated one. Every entry is
therefore also indexed without its user. When the review's user has no uid (an impersonated user
has none, unless the impersonator also sends ``Impersonate-Uid``, Kubernetes 1.22+, which stays
unjoined: ``unknown``) and no request of its own came by the end of the wait, another user's
pending request with the same attributes answers (its impersonator). A user's own request always
answers alone, so another user's concurrent (even refused) requests cannot change its verdict;
a user with a uid is never joined to other users' requests.
Scopes are always matched against the authenticated user of each entry (``Pending.user``).

Concurrent requests of one key: an admission call cannot tell its own RequestReceived from a
concurrent request's whose own event is still on its way (in batch mode up to ~20 ms after
its admission call). A call that can deny (``settle``) therefore answers only when its wait
is over, on every entry that matched by then: a second candidate with another agent makes the
answer ambiguous (the worst verdict) instead of lending it an agent. Bound: the call's
``wait`` (``--join-wait``, 50 ms by default), always far inside the webhook timeout.

Lifetime of an entry: it leaves when its request's ``ResponseComplete`` or ``Panic`` arrives,
when an admission call consumes it, after ``ttl`` seconds of *arrival* time (the monotonic
clock; events' own timestamps are never trusted), or when ``max_entries`` evicts the oldest.
A finished request never lends its agent to a later one: its audit ID is remembered for a
while, so a retried batch cannot bring it back. When pending requests that match one admission
call disagree on the agent, the caller gets all of them (and should answer the worst verdict)
and none is consumed: consuming one would hand the other's agent to the next call.

Forged events (an ``/audit`` left open) must not make an unlisted write look listed:

- a RequestReceived that repeats a pending audit ID with another agent or request (the client
  chooses its own ``Audit-ID`` header, so a forger can know the ID of its real request) is kept
  *beside* the first, not dropped: the join sees both and the worst verdict wins;
- an agent longer than the apiserver's own cut (1,024 bytes, then ``...TRUNCATED``) is cut the
  same way, a long audit ID is kept as its digest, and entries are bounded by bytes as well as
  by count (``max_bytes``; the oldest go first);
- a RequestReceived whose request already finished (a forged ResponseComplete sent ahead of it,
  or a batch retried or reordered) is kept as *stale* until the TTL: it never answers a join on
  its own, but it joins in when another pending request matches, so a disagreement still shows.

Concurrency: every method runs on one event loop thread (the ``/audit`` and ``/validate``
handlers share it); waiting is an ``asyncio`` future, never a lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from sys import getsizeof
from typing import Any, TypeVar

from webhook.core.audit import MUTATING_VERBS, Event

__all__ = [
    "CONNECT_SUBRESOURCES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "IndexStats",
    "JoinKey",
    "JoinResult",
    "Lookup",
    "Pending",
    "RequestIndex",
    "Slot",
    "candidate_keys",
    "event_key",
    "stored_agent",
]

DEFAULT_TTL = 10.0
"""Seconds an unanswered RequestReceived stays joinable: Kubernetes' default webhook timeout."""
DEFAULT_MAX_ENTRIES = 100_000
"""Pending requests kept. An ordinary create costs ~560 B (tracemalloc, 50,000 creates by
distinct users, their strings included: users, agents, groups and resources are shared between
entries), one whose every string is new ~1,160 B; the byte budget below binds first."""
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Estimated bytes of pending entries and remembered audit IDs: forged long strings cannot grow
the index past it (the oldest entries go first). Three quarters, 48 MiB, hold ~36,000 pending
creates at their estimate (~1,400 B, counted as if no string were shared), ~22 MB in fact: a
flood of distinct requests keeps ``serve`` under twice its idle RSS (bench/RESULTS.md, issue 15).
36,000 pending requests is a cluster writing 3,600 times a second with no ResponseComplete
arriving for 10 s (the TTL); normally each request leaves within ~20 ms."""
AGENT_CUT = 1024
AGENT_CUT_SUFFIX = "...TRUNCATED"
"""kube-apiserver cuts ``userAgent`` in audit events to 1,024 bytes plus this (seen on 1.20)."""
_ID_MAX = 128
"""Longer audit IDs (client-chosen) are kept as a digest."""
_ENTRY_BYTES = 400
"""Fixed cost of one entry (its object, key tuple and index slots), its strings counted apart:
the estimate, ~1,200 B for an ordinary create, is above the ~1,130 B measured when none of its
strings is shared (tests/unit/test_join.py)."""
_ID_BYTES = 100
"""Fixed cost of one remembered audit ID in ``_finished`` (its slot and time), the ID apart."""

CONNECT_SUBRESOURCES = frozenset(("exec", "attach", "portforward", "proxy"))
OPERATION_VERBS: dict[str, tuple[str, ...]] = {
    "CREATE": ("create", "patch", "update"),
    "UPDATE": ("update", "patch"),
    "DELETE": ("delete", "deletecollection"),
    "CONNECT": ("get", "create", "update", "patch", "delete"),
}

JoinKey = tuple[str, str, str, str, str, str, str, str]
"""(user, uid, apiGroup, resource, subresource, namespace, name, verb)."""
Slot = str | tuple[str, int]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What an admission call says about its request: the join attributes."""

    operation: str
    username: str
    uid: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


@dataclass(slots=True, eq=False)
class Pending:
    """One RequestReceived waiting for its admission call."""

    audit_id: str
    agent: str | None
    key: JoinKey
    arrived: float
    shared: bool
    """A deletecollection: every deleted item gets its own admission call, so it is never consumed."""
    stale: bool = False
    """Arrived after its request had finished: never matched alone, never consumed."""
    slot: Slot = ""
    """Where it is stored: its audit ID, or (audit ID, n > 0) for a repeat of a pending audit ID
    that disagrees (the common case keeps no tuple)."""
    user: str = ""
    """The authenticated user (never the impersonated one): what allowlist scopes match."""
    groups: tuple[str, ...] = ()
    size: int = 0
    """Estimated bytes (:func:`_entry_size`), counted against ``RequestIndex.max_bytes``."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The pending requests that match one admission call, oldest first."""

    entries: tuple[Pending, ...]
    agents: tuple[str | None, ...] = field(init=False)
    """Distinct agents, in order of arrival."""
    judged: tuple[tuple[str | None, str, tuple[str, ...]], ...] = field(init=False)
    """Distinct (agent, authenticated user, its groups): what each verdict is taken on."""

    def __post_init__(self) -> None:
        # Computed once: the join, the verdict and the log line each read them.
        entries = self.entries
        if len(entries) == 1:
            (only,) = entries
            agents: tuple[str | None, ...] = (only.agent,)
            judged: tuple[tuple[str | None, str, tuple[str, ...]], ...] = (
                (only.agent, only.user, only.groups),
            )
        else:
            agents = tuple(dict.fromkeys(p.agent for p in entries))
            judged = tuple(dict.fromkeys((p.agent, p.user, p.groups) for p in entries))
        object.__setattr__(self, "agents", agents)
        object.__setattr__(self, "judged", judged)

    @property
    def ambiguous(self) -> bool:
        return len(self.agents) > 1


@dataclass(slots=True)
class IndexStats:
    inserted: int = 0
    completed: int = 0
    consumed: int = 0
    hits: int = 0
    misses: int = 0
    ambiguous: int = 0
    waited: int = 0
    evicted_ttl: int = 0
    evicted_cap: int = 0
    """Evicted by the entry cap or the byte cap."""
    ignored_finished: int = 0
    """RequestReceived events for requests already finished (kept stale, never matched alone)."""
    conflicting: int = 0
    """RequestReceived events repeating a pending audit ID with another agent or request."""


def _namespace(group: str, resource: str, namespace: str) -> str:
    # The apiserver reports a Namespace object's own name as its namespace in audit events;
    # admission may not. Namespaces are cluster-scoped: join them without it.
    return "" if group == "" and resource == "namespaces" else namespace


def stored_agent(agent: str | None) -> str | None:
    """``agent`` as the apiserver writes it into audit events: cut at 1,024 bytes."""
    if agent is None or len(agent) <= AGENT_CUT // 4:  # at most 4 bytes a character
        return agent
    data = agent.encode("utf-8", "surrogatepass")
    if len(data) <= AGENT_CUT:
        return agent
    return data[:AGENT_CUT].decode("utf-8", "replace") + AGENT_CUT_SUFFIX


def _repeat(slot: Slot) -> int:
    """n of a slot: 0 for the first entry of an audit ID, n > 0 for a disagreeing repeat."""
    return 0 if isinstance(slot, str) else slot[1]


_S = TypeVar("_S", str, tuple[str, ...])
_SHARED_MAX = 1024
_SHARE_LONGEST = AGENT_CUT + 64
_shared: dict[Any, Any] = {}


def _share(value: _S) -> _S:
    """The one object kept for values equal to ``value`` (a string, or a tuple of strings).

    Pending entries repeat a few users, agents, group lists and resources many times; sharing
    them is most of an entry's strings (and ``sys.intern`` is no option for text from the
    wire: Python 3.12 never frees interned strings). Bounded: at most :data:`_SHARED_MAX`
    values of at most ~1 KB each; when full, the table is emptied (entries keep their objects).
    """
    found = _shared.get(value)
    if found is not None:
        return found  # type: ignore[no-any-return]
    size = len(value) if isinstance(value, str) else sum(map(len, value))
    if size > _SHARE_LONGEST:
        return value
    if len(_shared) >= _SHARED_MAX:
        _shared.clear()
    _shared[value] = value
    return value


def _stored_id(audit_id: str) -> str:
    """A long (client-chosen) audit ID kept as its digest: same identity, bounded size."""
    if len(audit_id) <= _ID_MAX:
        return audit_id
    return "sha256:" + hashlib.sha256(audit_id.encode("utf-8", "surrogatepass")).hexdigest()


def event_key(event: Event) -> JoinKey | None:
    """The join key of a RequestReceived that can reach admission, or None (reads, non-resource URLs)."""
    ref = event.object_ref
    if ref is None or not ref.resource:
        return None
    verb = event.verb
    if verb not in MUTATING_VERBS and not (verb == "get" and ref.subresource in CONNECT_SUBRESOURCES):
        return None
    user = event.effective_user
    if not user.username:
        return None
    namespace = _namespace(ref.api_group, ref.resource, ref.namespace)
    # User, uid, group, resource, subresource, namespace and verb take few values across many
    # pending requests: one shared string each instead of a copy per entry.
    return (
        _share(user.username),
        _share(user.uid),
        _share(ref.api_group),
        _share(ref.resource),
        _share(ref.subresource),
        _share(namespace),
        ref.name,
        _share(verb),
    )


def candidate_keys(lookup: Lookup) -> list[JoinKey]:
    """Every key under which the RequestReceived of this admission call may be indexed."""
    base = (lookup.username, lookup.uid, lookup.group, lookup.resource, lookup.subresource)
    namespace = _namespace(lookup.group, lookup.resource, lookup.namespace)
    keys: list[JoinKey] = []
    for verb in OPERATION_VERBS.get(lookup.operation, ()):
        if verb == "deletecollection":
            names: tuple[str, ...] = ("",)
        elif verb == "create":
            names = (lookup.name, "") if lookup.name else ("",)
        elif not lookup.name:
            continue  # a patch or update always names its object
        else:
            names = (lookup.name,)
        keys.extend((*base, namespace, name, verb) for name in names)
    return keys


_K = TypeVar("_K")
_Bucket = Pending | dict[Slot, Pending]
"""The entries under one key: most keys have one, kept without a dict of its own."""


def _link(index: dict[_K, _Bucket], key: _K, entry: Pending) -> None:
    bucket = index.get(key)
    if bucket is None:
        index[key] = entry
    elif isinstance(bucket, Pending):
        index[key] = {bucket.slot: bucket, entry.slot: entry}
    else:
        bucket[entry.slot] = entry


def _unlink(index: dict[_K, _Bucket], key: _K, entry: Pending) -> None:
    bucket = index.get(key)
    if bucket is entry:
        del index[key]
    elif isinstance(bucket, dict) and bucket.pop(entry.slot, None) is not None and len(bucket) == 1:
        (index[key],) = bucket.values()  # back to a lone entry


def _members(bucket: _Bucket | None) -> tuple[Pending, ...] | Iterable[Pending]:
    if bucket is None:
        return ()
    if isinstance(bucket, Pending):
        return (bucket,)
    return bucket.values()


def _entry_size(entry: Pending) -> int:
    """Estimated bytes of ``entry``: every string's whole object (wide characters cost up to 4
    bytes), though most are shared with other entries, so forged distinct values cannot pass it."""
    strings = (entry.audit_id, entry.agent or "", entry.user, *entry.key, *entry.groups)
    return _ENTRY_BYTES + sum(map(getsizeof, strings)) + getsizeof(entry.groups)


class RequestIndex:
    """Bounded, TTL'd index of pending requests; O(1) insert, remove and lookup."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("ttl must be positive, max_entries and max_bytes at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = IndexStats()
        self._clock = clock
        self._bytes = 0
        """Estimated bytes of pending entries, at most three quarters of ``max_bytes``."""
        self._finished_bytes = 0
        """... and of remembered audit IDs, at most a quarter: neither crowds out the other."""
        self._by_id: OrderedDict[Slot, Pending] = OrderedDict()
        self._by_key: dict[JoinKey, _Bucket] = {}
        self._by_request: dict[tuple[str, ...], _Bucket] = {}
        """The same entries by request attributes alone (no user): impersonated calls find them."""
        self._repeats: dict[str, set[Slot]] = {}
        """Slots (n > 0) of disagreeing repeats, by audit ID."""
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._waiters: dict[tuple[str, ...], set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def bytes(self) -> int:
        """Estimated bytes held (pending entries and remembered audit IDs)."""
        return self._bytes + self._finished_bytes

    @property
    def _pending_cap(self) -> int:
        return self.max_bytes - self.max_bytes // 4

    def observe_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.observe(event)

    def observe(self, event: Event) -> None:
        """Index a RequestReceived; forget the request on its ResponseComplete or Panic."""
        stage = event.stage
        if stage == "RequestReceived":
            self._insert(event)
        elif stage in ("ResponseComplete", "Panic"):
            self._finish(_stored_id(event.audit_id))

    def _insert(self, event: Event) -> None:
        key = event_key(event)
        if key is None:
            return
        now = self._clock()
        self._expire(now)
        audit_id = _stored_id(event.audit_id)
        agent = stored_agent(event.user_agent)
        agent = _share(agent) if agent is not None else None
        user = event.user
        groups = _share(tuple(map(_share, user.groups)))
        username = _share(user.username)
        same_id = self._same_id(audit_id)
        if any(p.agent == agent and p.key == key and p.user == username for p in same_id):
            return  # the apiserver retried the batch
        stale = audit_id in self._finished
        if stale:
            self.stats.ignored_finished += 1
        if same_id:
            self.stats.conflicting += 1
        repeat = max((_repeat(p.slot) for p in same_id), default=-1) + 1
        slot: Slot = (audit_id, repeat) if repeat else audit_id
        entry = Pending(
            audit_id,
            agent,
            key,
            now,
            shared=key[7] == "deletecollection",
            stale=stale,
            slot=slot,
            user=username,
            groups=groups,
        )
        entry.size = size = _entry_size(entry)
        cap = self._pending_cap
        while self._by_id and (len(self._by_id) >= self.max_entries or self._bytes + size > cap):
            _, oldest = self._by_id.popitem(last=False)
            self._forget(oldest)
            self.stats.evicted_cap += 1
        if size > cap:
            self.stats.evicted_cap += 1
            return
        self._by_id[slot] = entry
        self._bytes += size
        _link(self._by_key, key, entry)
        _link(self._by_request, key[2:], entry)
        if repeat:
            self._repeats.setdefault(audit_id, set()).add(slot)
        self.stats.inserted += 1
        waiters = self._waiters.get(key[2:])
        if waiters and not stale:
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _same_id(self, audit_id: str) -> list[Pending]:
        """Pending entries stored under ``audit_id`` (the first and any disagreeing repeats)."""
        first = self._by_id.get(audit_id)
        out = [first] if first is not None else []
        for slot in self._repeats.get(audit_id, ()):
            entry = self._by_id.get(slot)
            if entry is not None:
                out.append(entry)
        return out

    def _finish(self, audit_id: str) -> None:
        now = self._clock()
        for entry in self._same_id(audit_id):
            if entry.stale:
                continue  # stays until its TTL: it only ever adds disagreement
            del self._by_id[entry.slot]
            self._forget(entry)
            self.stats.completed += 1
        self._remember(audit_id, now)

    def _remember(self, audit_id: str, now: float) -> None:
        if audit_id not in self._finished:
            self._finished_bytes += _ID_BYTES + getsizeof(audit_id)
        self._finished[audit_id] = now
        self._finished.move_to_end(audit_id)
        horizon = now - 2 * self.ttl
        cap = self.max_bytes // 4
        while self._finished:
            first_id, at = next(iter(self._finished.items()))
            if at > horizon and len(self._finished) <= self.max_entries and self._finished_bytes <= cap:
                break
            del self._finished[first_id]
            self._finished_bytes -= _ID_BYTES + getsizeof(first_id)

    def _forget(self, entry: Pending) -> None:
        """Remove ``entry`` (already out of ``_by_id``) from the key buckets and the repeats."""
        self._bytes -= entry.size
        _unlink(self._by_key, entry.key, entry)
        _unlink(self._by_request, entry.key[2:], entry)
        if _repeat(entry.slot):
            repeats = self._repeats.get(entry.audit_id)
            if repeats is not None:
                repeats.discard(entry.slot)
                if not repeats:
                    del self._repeats[entry.audit_id]

    def _expire(self, now: float) -> None:
        deadline = now - self.ttl
        while self._by_id:
            first = next(iter(self._by_id.values()))
            if first.arrived > deadline:
                break
            self._by_id.popitem(last=False)
            self._forget(first)
            if not first.stale:
                self.stats.evicted_ttl += 1

    def expire(self) -> None:
        """Drop entries older than the TTL now (inserts and lookups also do this)."""
        self._expire(self._clock())

    def _matches(self, lookup: Lookup, keys: list[JoinKey]) -> tuple[list[Pending], list[Pending]]:
        """(the review user's own entries, other users' entries that may be its impersonator)."""
        own: list[Pending] = []
        for key in keys:
            own.extend(_members(self._by_key.get(key)))
        others: list[Pending] = []
        if not lookup.uid:  # an impersonated user has no uid (before 1.22's Impersonate-Uid)
            who = (lookup.username, lookup.uid)
            for request in dict.fromkeys(k[2:] for k in keys):
                others.extend(p for p in _members(self._by_request.get(request)) if p.key[:2] != who)
        return own, others

    def _take(self, lookup: Lookup, keys: list[JoinKey], *, last: bool) -> JoinResult | None:
        """The match, consumed when unambiguous. The review user's own requests answer alone;
        other users' (a possible impersonator's) only ``last``, when none of its own came."""
        self._expire(self._clock())
        own, others = self._matches(lookup, keys)
        if any(not p.stale for p in own):
            found = own
        elif last:
            found = own + others
        else:
            return None
        if all(p.stale for p in found):
            return None  # a finished request never lends its agent
        found.sort(key=lambda p: p.arrived)
        result = JoinResult(tuple(found))
        if result.ambiguous:
            self.stats.ambiguous += 1
            return result
        oldest = next((p for p in found if not p.shared and not p.stale), None)
        if oldest is not None:
            del self._by_id[oldest.slot]
            self._forget(oldest)
            self._remember(oldest.audit_id, self._clock())
            self.stats.consumed += 1
        return result

    def lookup(self, lookup: Lookup) -> JoinResult | None:
        """Match now, without waiting; consumes the entry on an unambiguous match."""
        result = self._take(lookup, candidate_keys(lookup), last=True)
        self._count(result)
        return result

    async def join(self, lookup: Lookup, wait: float, *, settle: bool = False) -> JoinResult | None:
        """Match, awaiting up to ``wait`` seconds for a RequestReceived that has not arrived yet.

        In the recommended batch audit mode the event reaches ``/audit`` up to ~20 ms after
        the admission call of its request. Without ``settle`` the first match answers; with it
        (a verdict that can deny) the answer waits the whole ``wait``, so that the event of a
        concurrent request with the same attributes, still on its way, is seen and makes the
        answer ambiguous rather than lending this call its agent.
        """
        keys = candidate_keys(lookup)
        result = None if settle else self._take(lookup, keys, last=False)
        if result is None and wait > 0 and keys:
            if not settle or all(p.stale for group in self._matches(lookup, keys) for p in group):
                self.stats.waited += 1  # its own event had not arrived yet
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            if settle:
                await asyncio.sleep(wait)
            while result is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                future: asyncio.Future[None] = loop.create_future()
                requests = list(dict.fromkeys(k[2:] for k in keys))
                for key in requests:
                    self._waiters.setdefault(key, set()).add(future)
                try:
                    async with asyncio.timeout(remaining):
                        await future
                except TimeoutError:
                    pass
                finally:
                    for key in requests:
                        waiters = self._waiters.get(key)
                        if waiters is not None:
                            waiters.discard(future)
                            if not waiters:
                                del self._waiters[key]
                result = self._take(lookup, keys, last=False)
        if result is None:
            result = self._take(lookup, keys, last=True)
        self._count(result)
        return result

    def _count(self, result: JoinResult | None) -> None:
        if result is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
