"""The audit webhook's body: an ``audit.k8s.io/v1`` EventList, decoded into :class:`Event` Structs.

kube-apiserver's webhook backend POSTs batches of events to ``/audit``; the events are the same
as the log backend's lines, so they reuse :mod:`webhook.core.audit`'s models. A good body is
decoded in one msgspec call, from bytes straight to the Structs; only a body it refuses is read
again, the slow way, to say why or to skip its bad items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson

from webhook.core.audit import Event, EventList, MalformedEvent, event_of_object
from webhook.errors import InputError

__all__ = ["MAX_REASONS", "AuditBatch", "AuditBodyError", "parse_event_list"]

MAX_REASONS: Final = 5
"""Reasons kept per batch for skipped items (the count covers them all)."""
_LIST: Final = msgspec.json.Decoder(EventList, strict=False)


class AuditBodyError(InputError):
    """The body is not an ``audit.k8s.io/v1`` EventList; the message says why (HTTP 400)."""


@dataclass(slots=True)
class AuditBatch:
    events: list[Event]
    size: int
    """The body's length in bytes: more than its events' strings hold (a bound for queues)."""
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def parse_event_list(body: bytes) -> AuditBatch:
    """Parse an EventList. A bad envelope raises :class:`AuditBodyError`; a bad item is skipped.

    Skipping items (and answering 2xx) matters: the apiserver retries a non-2xx batch, and a
    batch refused for one odd event would be refused on every retry, losing the good ones.
    """
    try:
        return AuditBatch(events=_LIST.decode(body).items, size=len(body))
    except msgspec.DecodeError:
        pass
    batch = AuditBatch(events=[], size=len(body))
    for number, item in enumerate(_items(body)):
        try:
            if not isinstance(item, dict):
                raise MalformedEvent(f"not a JSON object but {type(item).__name__}")
            batch.events.append(event_of_object(item))
        except MalformedEvent as exc:
            batch.skipped += 1
            if len(batch.reasons) < MAX_REASONS:
                batch.reasons.append(f"items[{number}]: {exc}")
    return batch


def _items(body: bytes) -> list[Any]:
    """The items of an EventList, not validated; :class:`AuditBodyError` for any other body."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AuditBodyError(f"body is not JSON: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(data, dict):
        raise AuditBodyError(f"body is not a JSON object but {type(data).__name__}")
    if data.get("kind") != "EventList":
        raise AuditBodyError(f"kind is {data.get('kind')!r}, expected 'EventList'")
    if data.get("apiVersion") != "audit.k8s.io/v1":
        raise AuditBodyError(f"apiVersion is {data.get('apiVersion')!r}, expected 'audit.k8s.io/v1'")
    items = data.get("items") or []
    if not isinstance(items, list):
        raise AuditBodyError(f"items is not a list but {type(items).__name__}")
    return items
