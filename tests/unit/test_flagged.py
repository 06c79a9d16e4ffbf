"""Correlation: what the webhook flagged per (user, agent), bounded by bytes as well as entries."""

from __future__ import annotations

from webhook.core.audit import Event, parse_event
from webhook.detect.flagged import Correlation


def flagged(user: str, agent: str, n: int) -> Event:
    return parse_event(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "auditID": f"id-{n}",
            "stage": "ResponseComplete",
            "verb": "create",
            "requestURI": "/api/v1/namespaces/team/configmaps",
            "user": {"username": user},
            "userAgent": agent,
            "objectRef": {"resource": "configmaps", "namespace": "team"},
            "responseStatus": {"code": 201},
            "annotations": {"ua-sentinel/user-agent-verdict": "unlisted"},
        }
    )


def test_huge_user_names_cannot_grow_the_memory_past_its_byte_bound() -> None:
    memory = Correlation(max_principals=4096, max_bytes=1024 * 1024)
    for n in range(40):
        assert memory.observe(flagged("u" * 200_000 + str(n), "python-requests/2.31.0", n), "t", float(n))
    assert memory.bytes <= 1024 * 1024
    assert len(memory) == 5 and memory.evicted == 35  # each entry ~200 KB: the newest five kept
    assert memory.related("u" * 200_000 + "39", "python-requests/2.31.0", 39.0) is not None


def test_the_byte_count_follows_forgetting_and_restoring() -> None:
    memory = Correlation()
    for n in range(10):
        memory.observe(flagged(f"user-{n}", "curl/8.5.0", n), "t", float(n + 1))
    held = memory.bytes
    assert held > 0
    again = Correlation()
    again.restore(memory.snapshot())
    assert again.bytes == held
    memory.prune(now=1e9)  # all idle for longer than the ttl
    assert len(memory) == 0 and memory.bytes == 0
