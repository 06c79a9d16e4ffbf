"""What the webhook flagged, remembered per principal, to enrich findings about the same one.

The admission webhook records its verdict in the audit event of every request it saw, as the
audit annotation ``<webhook name>/user-agent-verdict`` (``listed|unlisted|denied|unknown``).
The tailer reads those events too: for each (user, agent) it keeps how many requests were
flagged ``unlisted`` or ``denied``, a sample of their audit IDs, verbs and resources, and
whether any of them *changed* something (a mutating verb that succeeded). A finding about the
same user and agent carries this as ``ua_sentinel.related``; an unlisted agent that both acted
and was refused (acting + probing) is escalated by the Detector.

Memory is bounded: at most ``max_principals`` entries and ``max_bytes`` (user names, agents and
samples are attacker text; least recently flagged dropped first), a few samples each, and
entries idle for ``ttl`` seconds of event time are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from webhook.core.allowlist import VERDICT_RANK
from webhook.core.audit import MUTATING_VERBS, VERDICT_ANNOTATION, Event

__all__ = ["DEFAULT_MAX_BYTES", "Correlation", "Flagged", "webhook_verdict"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""What the remembered principals may hold: 4,096 of 4 KiB each."""
_ENTRY_OVERHEAD = 512
"""The objects of an entry besides its strings, about."""


def webhook_verdict(annotations: dict[str, str]) -> str | None:
    """The webhook's verdict from ``<name>/user-agent-verdict``; the worst when several."""
    found: str | None = None
    for key, value in annotations.items():
        ours = key == VERDICT_ANNOTATION or key.endswith("/" + VERDICT_ANNOTATION)
        if ours and value in VERDICT_RANK and (found is None or VERDICT_RANK[value] > VERDICT_RANK[found]):
            found = value
    return found


@dataclass(slots=True)
class Flagged:
    """Flagged requests of one (user, agent). JSON-able: it is checkpointed."""

    count: int = 0
    acting: int = 0
    """Flagged requests with a mutating verb that succeeded (the agent changed objects)."""
    verbs: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    audit_ids: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    first: str = ""
    last: str = ""
    last_epoch: float = 0.0

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["last_epoch"]
        return out


class Correlation:
    """Per (user, agent) memory of flagged requests. Not thread-safe (the Detector owns it)."""

    def __init__(
        self,
        *,
        max_principals: int = 4096,
        samples: int = 10,
        ttl: float = 3600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.max_principals = max_principals
        self.samples = samples
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.evicted = 0
        self.bytes = 0
        """About what the entries hold (:meth:`_cost`); at most ``max_bytes``."""
        self._memory: OrderedDict[tuple[str, str | None], Flagged] = OrderedDict()
        self._costs: dict[tuple[str, str | None], int] = {}

    def __len__(self) -> int:
        return len(self._memory)

    def observe(self, event: Event, stamp: str, epoch: float | None) -> bool:
        """Remember ``event`` if the webhook flagged it; True when it did."""
        if event.stage != "ResponseComplete":
            return False
        said = event.annotations.values()
        if "unlisted" not in said and "denied" not in said:
            return False  # no annotation says it (most events: one C-speed look, no loop)
        verdict = webhook_verdict(event.annotations)
        if verdict not in ("unlisted", "denied"):
            return False
        key = (event.user.username, event.user_agent)
        entry = self._memory.pop(key, None) or Flagged(first=stamp)
        self._memory[key] = entry
        entry.count += 1
        code = event.code or 0
        if event.verb in MUTATING_VERBS and 0 < code < 400:
            entry.acting += 1
        for values, value in (
            (entry.verbs, event.verb),
            (entry.resources, event.resource_label),
            (entry.verdicts, verdict),
        ):
            if value not in values and len(values) < self.samples:
                values.append(value)
        if len(entry.audit_ids) < self.samples:
            entry.audit_ids.append(event.audit_id)
        entry.last = stamp or entry.last
        if epoch is not None:
            entry.last_epoch = max(entry.last_epoch, epoch)
        self._account(key, entry)
        while len(self._memory) > self.max_principals or (
            self.bytes > self.max_bytes and len(self._memory) > 1
        ):
            self._forget(next(iter(self._memory)))
            self.evicted += 1
        return True

    @staticmethod
    def _cost(key: tuple[str, str | None], entry: Flagged) -> int:
        strings = (*entry.verbs, *entry.resources, *entry.audit_ids, *entry.verdicts, entry.first, entry.last)
        return _ENTRY_OVERHEAD + len(key[0]) + len(key[1] or "") + sum(len(s) for s in strings)

    def _account(self, key: tuple[str, str | None], entry: Flagged) -> None:
        cost = self._cost(key, entry)
        self.bytes += cost - self._costs.get(key, 0)
        self._costs[key] = cost

    def _forget(self, key: tuple[str, str | None]) -> None:
        del self._memory[key]
        self.bytes -= self._costs.pop(key, 0)

    def related(self, username: str, agent: str | None, now: float) -> Flagged | None:
        """What was flagged for this principal, unless it is older than ``ttl``."""
        entry = self._memory.get((username, agent))
        if entry is None:
            return None
        if entry.last_epoch and now - entry.last_epoch > self.ttl:
            self._forget((username, agent))
            return None
        return entry

    def prune(self, now: float) -> None:
        """Forget principals not flagged within ``ttl`` of ``now`` (event time)."""
        for key in [k for k, v in self._memory.items() if v.last_epoch and now - v.last_epoch > self.ttl]:
            self._forget(key)

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"user": u, "agent": a, **asdict(v)} for (u, a), v in self._memory.items()]

    def restore(self, items: list[dict[str, Any]]) -> None:
        self._memory.clear()
        self._costs.clear()
        self.bytes = 0
        for raw in items:
            item = dict(raw)
            key = (str(item.pop("user")), item.pop("agent"))
            self._memory[key] = entry = Flagged(**item)
            self._account(key, entry)
