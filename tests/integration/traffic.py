"""The recorded apiserver traffic in tests/data/ (admission/ and audit-webhook/), in arrival order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from tests.conftest import DATA

__all__ = ["Recorded", "admission", "audit_batch", "recorded", "with_audit_id"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One POST the recording webhook received: its global sequence number, path and JSON body."""

    seq: int
    path: str
    body: dict[str, Any]

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def raw(self) -> bytes:
        return json.dumps(self.body).encode()


@cache
def recorded() -> tuple[Recorded, ...]:
    """Every admission call and audit POST, sorted by the shared arrival sequence."""
    out = []
    for directory in ("admission", "audit-webhook"):
        for path in (DATA / directory).glob("*.json"):
            doc = json.loads(path.read_text())
            out.append(Recorded(int(doc["seq"]), doc["path"], doc["body"]))
    return tuple(sorted(out, key=lambda r: r.seq))


def _by_seq(seq: int) -> Recorded:
    for item in recorded():
        if item.seq == seq:
            return item
    raise KeyError(seq)


def admission(seq: int) -> dict[str, Any]:
    """A copy of the AdmissionReview recorded as admission/<seq>.json."""
    body = _by_seq(seq).body
    assert body["kind"] == "AdmissionReview", seq
    copy: dict[str, Any] = json.loads(json.dumps(body))
    return copy


def audit_batch(seq: int) -> dict[str, Any]:
    """A copy of the EventList recorded as audit-webhook/<seq>.json."""
    body = _by_seq(seq).body
    assert body["kind"] == "EventList", seq
    copy: dict[str, Any] = json.loads(json.dumps(body))
    return copy


def with_audit_id(batch: dict[str, Any], audit_id: str, **changes: Any) -> dict[str, Any]:
    """The batch with every event's auditID replaced (a new request with the same shape)."""
    for item in batch["items"]:
        item["auditID"] = audit_id
        item.update(changes)
    return batch
