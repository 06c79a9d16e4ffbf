"""falcosidekick's input check, written from its source (falcosecurity/falcosidekick @ 8807ab7):
``handlers.go`` ``mainHandler``/``newFalcoPayload`` decode the body into ``types.FalcoPayload``
with Go's ``encoding/json`` and answer 400 unless ``FalcoPayload.Check()`` holds.

Go's types, as its decoder enforces them: ``uuid``, ``output``, ``rule``, ``source``,
``hostname`` strings; ``priority`` a string read by ``PriorityType.UnmarshalJSON``
(case-insensitive name, anything else is the empty ``Default``); ``time`` a ``time.Time``
(RFC 3339 text); ``output_fields`` an object; ``tags`` an array of strings. ``Check()`` wants a
known priority, a rule, a non-zero time and at least one output field. ``newFalcoPayload``
type-asserts ``k8s.ns.name`` and ``k8s.pod.name`` to strings (a number there panics).

The real binary needs Go 1.26 (its go.mod); the machine's Debian Go is 1.19, so this checker
stands in for it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

PRIORITIES = {
    "emergency": "Emergency",
    "alert": "Alert",
    "critical": "Critical",
    "error": "Error",
    "warning": "Warning",
    "notice": "Notice",
    "informational": "Informational",
    "info": "Informational",
    "debug": "Debug",
}
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
STRING_FIELDS = ("uuid", "output", "rule", "source", "hostname")


def _rfc3339(value: str) -> bool:
    """Go's strict RFC 3339: the shape, and a real date and time of day."""
    if not RFC3339.fullmatch(value):
        return False
    try:
        dt.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def falco_payload_errors(body: bytes) -> list[str]:
    """Why falcosidekick would answer 400 to ``body`` (empty: it accepts it)."""
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(payload, dict):
        return ["not a JSON object"]
    errors = [
        f"{name} is not a string"
        for name in STRING_FIELDS
        if payload.get(name) is not None and not isinstance(payload[name], str)
    ]
    priority = payload.get("priority")
    if priority is not None and not isinstance(priority, str):
        errors.append("priority is not a string")
    elif str(priority or "").lower() not in PRIORITIES:
        errors.append(f"unknown priority {priority!r} (Check: Default)")
    time = payload.get("time")
    if not isinstance(time, str) or not _rfc3339(time):
        errors.append(f"time {time!r} is not RFC 3339 (Check: zero time)")
    fields = payload.get("output_fields")
    if fields is not None and not isinstance(fields, dict):
        errors.append("output_fields is not an object")
    elif not fields:
        errors.append("no output_fields (Check)")
    else:
        errors += [
            f"{key} is not a string (newFalcoPayload type-asserts it)"
            for key in ("k8s.ns.name", "k8s.pod.name")
            if fields.get(key) is not None and not isinstance(fields[key], str)
        ]
    tags = payload.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        errors.append("tags is not an array of strings")
    if not payload.get("rule"):
        errors.append("no rule (Check)")
    return errors
