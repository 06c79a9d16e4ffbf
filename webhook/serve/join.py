"""RequestIndex: recent ``RequestReceived`` audit events, found again by an admission call.

An AdmissionReview names no user agent and shares no ID with the audit event of its request
(``request.uid`` is not the ``auditID``), so the join is on request attributes: effective user
(name, uid), verb <-> operation, API group, resource, subresource, namespace and name. The
mapping, as recorded on a real kube-apiserver 1.20:

==========  ==================================  ====================================
operation   audit verbs                         name on the RequestReceived
==========  ==================================  ====================================
CREATE      create                              absent for a plain create
UPDATE      update, patch                       present
DELETE      delete; deletecollection            present; absent (one call per item)
CONNECT     get or create (pods/exec, attach,   present
            portforward, proxy: HTTP method)
==========  ==================================  ====================================

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
- a RequestReceived whose request already finished (a forged ResponseComplete sent ahead of it,
  or a batch retried or reordered) is kept as *stale* until the TTL: it never answers a join on
  its own, but it joins in when another pending request matches, so a disagreement still shows.

Concurrency: every method runs on one event loop thread (the ``/audit`` and ``/validate``
handlers share it); waiting is an ``asyncio`` future, never a lock.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from sys import intern

from webhook.core.audit import MUTATING_VERBS, Event

__all__ = [
    "CONNECT_SUBRESOURCES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "IndexStats",
    "JoinKey",
    "JoinResult",
    "Lookup",
    "Pending",
    "RequestIndex",
    "candidate_keys",
    "event_key",
]

DEFAULT_TTL = 10.0
"""Seconds an unanswered RequestReceived stays joinable: Kubernetes' default webhook timeout."""
DEFAULT_MAX_ENTRIES = 100_000
"""Pending requests kept; ~0.9 KB each (measured: bench/RESULTS.md, item 5), ~90 MB at the cap."""

CONNECT_SUBRESOURCES = frozenset(("exec", "attach", "portforward", "proxy"))
OPERATION_VERBS: dict[str, tuple[str, ...]] = {
    "CREATE": ("create",),
    "UPDATE": ("update", "patch"),
    "DELETE": ("delete", "deletecollection"),
    "CONNECT": ("get", "create", "update", "patch", "delete"),
}

JoinKey = tuple[str, str, str, str, str, str, str, str]
"""(user, uid, apiGroup, resource, subresource, namespace, name, verb)."""


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
    slot: tuple[str, int] = ("", 0)
    """Where it is stored: (audit ID, n); n > 0 for a repeat of a pending audit ID that disagrees."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The pending requests that match one admission call, oldest first."""

    entries: tuple[Pending, ...]

    @property
    def agents(self) -> tuple[str | None, ...]:
        """Distinct agents, in order of arrival."""
        return tuple(dict.fromkeys(p.agent for p in self.entries))

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
    ignored_finished: int = 0
    """RequestReceived events for requests already finished (kept stale, never matched alone)."""
    conflicting: int = 0
    """RequestReceived events repeating a pending audit ID with another agent or request."""


def _namespace(group: str, resource: str, namespace: str) -> str:
    # The apiserver reports a Namespace object's own name as its namespace in audit events;
    # admission may not. Namespaces are cluster-scoped: join them without it.
    return "" if group == "" and resource == "namespaces" else namespace


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
    # User uid, group, resource, subresource, namespace and verb take few values across many
    # pending requests: one shared string each instead of a copy per entry (~20% of its memory).
    return (
        user.username,
        intern(user.uid),
        intern(ref.api_group),
        intern(ref.resource),
        intern(ref.subresource),
        intern(namespace),
        ref.name,
        intern(verb),
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
        else:
            names = (lookup.name,)
        keys.extend((*base, namespace, name, verb) for name in names)
    return keys


class RequestIndex:
    """Bounded, TTL'd index of pending requests; O(1) insert, remove and lookup."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.stats = IndexStats()
        self._clock = clock
        self._by_id: OrderedDict[tuple[str, int], Pending] = OrderedDict()
        self._by_key: dict[JoinKey, dict[tuple[str, int], Pending]] = {}
        self._repeats: dict[str, set[tuple[str, int]]] = {}
        """Slots (n > 0) of disagreeing repeats, by audit ID."""
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._waiters: dict[JoinKey, set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def observe_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.observe(event)

    def observe(self, event: Event) -> None:
        """Index a RequestReceived; forget the request on its ResponseComplete or Panic."""
        stage = event.stage
        if stage == "RequestReceived":
            self._insert(event)
        elif stage in ("ResponseComplete", "Panic"):
            self._finish(event.audit_id)

    def _insert(self, event: Event) -> None:
        key = event_key(event)
        if key is None:
            return
        now = self._clock()
        self._expire(now)
        audit_id = event.audit_id
        agent = event.user_agent
        same_id = self._same_id(audit_id)
        if any(p.agent == agent and p.key == key for p in same_id):
            return  # the apiserver retried the batch
        stale = audit_id in self._finished
        if stale:
            self.stats.ignored_finished += 1
        if same_id:
            self.stats.conflicting += 1
        slot = (audit_id, max((p.slot[1] for p in same_id), default=-1) + 1)
        while len(self._by_id) >= self.max_entries:
            _, oldest = self._by_id.popitem(last=False)
            self._forget(oldest)
            self.stats.evicted_cap += 1
        entry = Pending(
            audit_id, agent, key, now, shared=key[7] == "deletecollection", stale=stale, slot=slot
        )
        self._by_id[slot] = entry
        self._by_key.setdefault(key, {})[slot] = entry
        if slot[1]:
            self._repeats.setdefault(audit_id, set()).add(slot)
        self.stats.inserted += 1
        waiters = self._waiters.get(key)
        if waiters and not stale:
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _same_id(self, audit_id: str) -> list[Pending]:
        """Pending entries stored under ``audit_id`` (the first and any disagreeing repeats)."""
        first = self._by_id.get((audit_id, 0))
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
        self._finished[audit_id] = now
        self._finished.move_to_end(audit_id)
        horizon = now - 2 * self.ttl
        while self._finished:
            first_id, at = next(iter(self._finished.items()))
            if at > horizon and len(self._finished) <= self.max_entries:
                break
            del self._finished[first_id]

    def _forget(self, entry: Pending) -> None:
        """Remove ``entry`` (already out of ``_by_id``) from the key buckets and the repeats."""
        bucket = self._by_key.get(entry.key)
        if bucket is not None:
            bucket.pop(entry.slot, None)
            if not bucket:
                del self._by_key[entry.key]
        if entry.slot[1]:
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

    def _take(self, keys: list[JoinKey]) -> JoinResult | None:
        self._expire(self._clock())
        found: list[Pending] = []
        for key in keys:
            bucket = self._by_key.get(key)
            if bucket:
                found.extend(bucket.values())
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
        result = self._take(candidate_keys(lookup))
        self._count(result)
        return result

    async def join(self, lookup: Lookup, wait: float) -> JoinResult | None:
        """Match, awaiting up to ``wait`` seconds for a RequestReceived that has not arrived yet.

        In the recommended batch audit mode the event reaches ``/audit`` up to ~20 ms after
        the admission call of its request.
        """
        keys = candidate_keys(lookup)
        result = self._take(keys)
        if result is None and wait > 0 and keys:
            self.stats.waited += 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while result is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                future: asyncio.Future[None] = loop.create_future()
                for key in keys:
                    self._waiters.setdefault(key, set()).add(future)
                try:
                    async with asyncio.timeout(remaining):
                        await future
                except TimeoutError:
                    pass
                finally:
                    for key in keys:
                        waiters = self._waiters.get(key)
                        if waiters is not None:
                            waiters.discard(future)
                            if not waiters:
                                del self._waiters[key]
                result = self._take(keys)
        self._count(result)
        return result

    def _count(self, result: JoinResult | None) -> None:
        if result is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
