"""Forged agents cannot grow memory: through a real `serve` with an open /audit
(`--audit-insecure`), agents longer than the apiserver's 1,024-byte cut are cut the same way
before any cache keeps them, and each cache's own byte count stays within its bound."""

from __future__ import annotations

from tests.hardening.audit_events import event_list, forbidden
from tests.hardening.conftest import Launch
from tests.integration.server import wait_for
from webhook.core.cache import DEFAULT_MAX_BYTES
from webhook.core.useragent import MAX_AGENT_BYTES, TRUNCATION_MARK

AGENTS = 40
AGENT_BYTES = 2 * 1024 * 1024
PER_POST = 8  # 16 MiB a body: under /audit's 32 MiB limit


def test_forty_2_mib_agents_leave_the_caches_small(launch: Launch) -> None:
    server = launch("--audit-insecure")
    agents = [f"{n:02d}" + chr(ord("a") + n % 26) * (AGENT_BYTES - 2) for n in range(AGENTS)]
    with server.client(timeout=120) as client:
        for start in range(0, AGENTS, PER_POST):
            batch = [forbidden(a, user=f"flood-{n}") for n, a in enumerate(agents[start : start + PER_POST])]
            answer = client.post("/audit", json=event_list(*batch))
            assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text

    findings = wait_for(
        lambda: (found := server.findings()) and len(found) >= AGENTS and found,
        timeout=120,
        what="a finding per forged agent",
    )
    cut = {f["user_agent"]["original"] for f in findings}
    assert cut == {a[:MAX_AGENT_BYTES] + TRUNCATION_MARK for a in agents}  # the apiserver's own cut

    for cache in ("useragent_parse", "allowlist_verdicts"):
        entries = server.metric("ua_sentinel_cache_entries", cache=cache)
        held = server.metric("ua_sentinel_cache_bytes", cache=cache)
        assert entries is not None and held is not None, cache
        assert entries >= 1, cache  # the forged agents went through it
        # each entry is one cut agent (~1 KiB, counted twice), nowhere near one 2 MiB agent
        assert held <= entries * 4 * (MAX_AGENT_BYTES + len(TRUNCATION_MARK) + 100), (cache, held)
        assert held <= DEFAULT_MAX_BYTES, (cache, held)
