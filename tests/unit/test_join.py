"""RequestIndex on the recorded apiserver traffic, plus its lifetime rules (TTL, cap, completion)."""

from __future__ import annotations

import asyncio
import copy
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from tests.integration.traffic import admission, audit_batch, recorded
from webhook.core.audit import Event, EventList, parse_event
from webhook.serve.admission import AdmissionReview, lookup_of
from webhook.serve.join import (
    AGENT_CUT,
    JoinResult,
    Lookup,
    RequestIndex,
    candidate_keys,
    event_key,
    stored_agent,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def events(seq: int) -> list[Event]:
    return list(msgspec.convert(audit_batch(seq), EventList).items)


def lookup(seq: int) -> Lookup:
    return lookup_of(AdmissionReview.model_validate(admission(seq)).request)


def replay_until(index: RequestIndex, seq: int) -> None:
    """Feed every audit batch recorded before admission call ``seq``."""
    for item in recorded():
        if item.seq >= seq:
            break
        if item.route == "/audit":
            index.observe_all(events(item.seq))


def agents_for_recording() -> dict[int, JoinResult | None]:
    """Replay the whole recording in order; the join result of every admission call."""
    index = RequestIndex()
    out: dict[int, JoinResult | None] = {}
    for item in recorded():
        if item.route == "/audit":
            index.observe_all(events(item.seq))
        else:
            out[item.seq] = index.lookup(lookup(item.seq))
    return out


@pytest.mark.parametrize(
    ("seq", "agent"),
    [
        (1374, "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),  # admin create configmap
        (1405, "python-requests/2.34.2"),  # from audit-webhook/01404
        (1450, "python-requests/2.31.0"),  # delete
        (1455, "Go-http-client/1.1"),  # update
        (1470, "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),  # dry-run create
        (1568, "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),  # create pod
        (1581, "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),  # CONNECT pods/exec, audit verb get
        (1585, "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),  # CONNECT pods/exec, audit verb create
    ],
)
def test_every_recorded_admission_call_joins_its_agent(seq: int, agent: str) -> None:
    result = agents_for_recording()[seq]
    assert result is not None
    assert result.agents == (agent,)
    assert not result.ambiguous


def test_recorded_calls_join_their_own_request() -> None:
    """01405 takes the RequestReceived of audit-webhook/01404, not any other create."""
    index = RequestIndex()
    replay_until(index, 1405)
    result = index.lookup(lookup(1405))
    assert result is not None
    assert [p.audit_id for p in result.entries] == [events(1404)[0].audit_id]


def test_connect_exec_get_joins_on_verb_get() -> None:
    (event,) = events(1580)
    assert event.verb == "get" and event.object_ref is not None and event.object_ref.subresource == "exec"
    assert event_key(event) in candidate_keys(lookup(1581))


def test_reads_and_non_resource_requests_are_not_indexed() -> None:
    index = RequestIndex()
    for item in recorded():
        if item.route == "/audit":
            for event in events(item.seq):
                if event.verb in ("get", "list", "watch") and not (
                    event.object_ref and event.object_ref.subresource
                ):
                    assert event_key(event) is None
            index.observe_all(events(item.seq))
    # Nothing was consumed: every write has completed, so nothing is left pending.
    assert len(index) == 0
    assert index.stats.inserted > 20


def test_finished_request_never_lends_its_agent() -> None:
    """python-requests create, completed; a kubectl create by the same user a second later."""
    index = RequestIndex()
    index.observe_all(events(1404))  # RequestReceived, python-requests
    index.observe_all(events(1406))  # ResponseComplete
    assert index.lookup(lookup(1405)) is None
    index.observe_all(events(1378))  # kubectl create by dev-alice in team
    result = index.lookup(lookup(1405))
    assert result is not None and result.agents == ("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",)


def test_consumed_entry_is_gone_and_a_retried_batch_cannot_bring_it_back() -> None:
    index = RequestIndex()
    index.observe_all(events(1404))
    assert index.lookup(lookup(1405)) is not None
    assert index.lookup(lookup(1405)) is None
    index.observe_all(events(1404))  # the apiserver retried the batch
    assert index.lookup(lookup(1405)) is None
    assert index.stats.ignored_finished == 1


def _as_new_request(event: Event, audit_id: str, agent: str | None) -> Event:
    data: dict[str, Any] = msgspec.to_builtins(event)
    data["auditID"] = audit_id
    data["userAgent"] = agent
    return parse_event(data)


def test_ambiguous_match_answers_all_agents_and_consumes_none() -> None:
    (python_rr,) = events(1404)
    kubectl = _as_new_request(python_rr, "other-request", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07")
    index = RequestIndex()
    index.observe(python_rr)
    index.observe(kubectl)
    first = index.lookup(lookup(1405))
    assert first is not None and first.ambiguous
    assert first.agents == ("python-requests/2.34.2", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07")
    second = index.lookup(lookup(1405))
    assert second is not None and second.ambiguous  # nothing was consumed
    assert index.stats.ambiguous == 2


def test_same_agent_duplicates_consume_oldest_first() -> None:
    (rr,) = events(1404)
    index = RequestIndex()
    index.observe(rr)
    index.observe(_as_new_request(rr, "second", rr.user_agent))
    first = index.lookup(lookup(1405))
    assert first is not None and not first.ambiguous and len(first.entries) == 2
    second = index.lookup(lookup(1405))
    assert second is not None and [p.audit_id for p in second.entries] == ["second"]
    assert index.lookup(lookup(1405)) is None


def test_ttl_is_measured_by_arrival_time_not_event_timestamps() -> None:
    """The recorded events are old (2026 timestamps): only the arrival clock counts."""
    clock = FakeClock()
    fresh = RequestIndex(ttl=5.0, clock=clock)
    fresh.observe_all(events(1404))
    clock.now += 4.9
    assert fresh.lookup(lookup(1405)) is not None
    stale = RequestIndex(ttl=5.0, clock=clock)
    stale.observe_all(events(1404))
    clock.now += 5.0
    assert stale.lookup(lookup(1405)) is None
    assert stale.stats.evicted_ttl == 1 and len(stale) == 0


def test_entry_count_is_capped_oldest_evicted() -> None:
    (rr,) = events(1404)
    index = RequestIndex(max_entries=3)
    for number in range(5):
        index.observe(_as_new_request(rr, f"id-{number}", f"agent/{number}"))
    assert len(index) == 3
    assert index.stats.evicted_cap == 2
    result = index.lookup(lookup(1405))
    assert result is not None and result.agents == ("agent/2", "agent/3", "agent/4")


def test_deletecollection_serves_every_item_and_leaves_on_completion() -> None:
    (rr,) = events(1449)  # delete configmaps team/py-cm
    data = msgspec.to_builtins(rr)
    data["verb"] = "deletecollection"
    data["objectRef"].pop("name")
    collection = parse_event(data)
    index = RequestIndex()
    index.observe(collection)
    for name in ("py-cm", "alice-cm", "other"):
        review = copy.deepcopy(admission(1450))
        review["request"]["name"] = name
        request = AdmissionReview.model_validate(review).request
        assert index.lookup(lookup_of(request)) is not None
    complete = parse_event({**data, "stage": "ResponseComplete"})
    index.observe(complete)
    assert index.lookup(lookup(1450)) is None


def test_patch_joins_update_and_namespaces_join_without_namespace() -> None:
    (rr,) = events(1454)  # update configmaps team/alice-cm
    patch = parse_event({**msgspec.to_builtins(rr), "verb": "patch"})
    assert event_key(patch) in candidate_keys(lookup(1455))
    ns_event = parse_event(
        {
            "auditID": "ns",
            "stage": "RequestReceived",
            "verb": "update",
            "user": {"username": "admin", "uid": "1001"},
            "objectRef": {"resource": "namespaces", "namespace": "team", "name": "team", "apiVersion": "v1"},
        }
    )
    ns_lookup = Lookup("UPDATE", "admin", "1001", "", "namespaces", "", "", "team")
    assert event_key(ns_event) in candidate_keys(ns_lookup)


def test_hand_made_impersonated_event_joins_on_the_effective_user_but_keeps_the_authenticated_one() -> None:
    (rr,) = events(1404)
    data = msgspec.to_builtins(rr)
    data["user"] = {"username": "admin", "uid": "1001", "groups": ["system:masters"]}
    data["impersonatedUser"] = {"username": "dev-alice", "uid": "1003", "groups": ["devs"]}
    key = event_key(parse_event(data))
    assert key is not None and key[:2] == ("dev-alice", "1003")
    index = RequestIndex()
    index.observe(parse_event(data))
    result = index.lookup(lookup(1405))
    assert result is not None
    assert result.judged == (("python-requests/2.34.2", "admin", ("system:masters",)),)


def test_join_awaits_a_late_request_received() -> None:
    """Batch audit mode: the RequestReceived reaches /audit after the admission call."""

    async def scenario() -> tuple[JoinResult | None, float]:
        index = RequestIndex()
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, index.observe_all, events(1404))
        started = loop.time()
        result = await index.join(lookup(1405), wait=5.0)
        return result, loop.time() - started

    result, waited = asyncio.run(scenario())
    assert result is not None and result.agents == ("python-requests/2.34.2",)
    assert waited < 5.0  # woken by the event, not by the deadline


def test_join_gives_up_after_the_wait_and_counts_a_miss() -> None:
    async def scenario() -> tuple[JoinResult | None, RequestIndex]:
        index = RequestIndex()
        return await index.join(lookup(1405), wait=0.01), index

    result, index = asyncio.run(scenario())
    assert result is None
    assert (index.stats.misses, index.stats.waited, index._waiters) == (1, 1, {})


def test_panic_removes_the_request() -> None:
    (rr,) = events(1404)
    index = RequestIndex()
    index.observe(rr)
    index.observe(parse_event({**msgspec.to_builtins(rr), "stage": "Panic"}))
    assert len(index) == 0 and index.lookup(lookup(1405)) is None


# --- creates that arrive as another verb (issue 12, item 1) ----------------------------------


def _rr(verb: str, name: str, **changes: Any) -> Event:
    """A RequestReceived of dev-alice on configmap team/NAME, as recorded (01404) but for ``verb``."""
    (rr,) = events(1404)
    data: dict[str, Any] = msgspec.to_builtins(rr)
    data["verb"] = verb
    data["objectRef"] = {**data["objectRef"], "name": name}
    data.update(changes)
    return parse_event(data)


def _create(name: str, *, user: str = "dev-alice", uid: str = "1003") -> Lookup:
    return Lookup("CREATE", user, uid, "", "configmaps", "", "team", name)


@pytest.mark.parametrize("verb", ["patch", "update"])
def test_a_create_that_arrives_as_patch_or_update_is_joined(verb: str) -> None:
    """Server-side apply (PATCH, application/apply-patch+yaml) and a PUT that creates: admission
    says CREATE, the audit verb is patch or update, with the name (recorded on 1.20)."""
    index = RequestIndex()
    index.observe(_rr(verb, "ssa-new", auditID=f"{verb}-1"))
    result = index.lookup(_create("ssa-new"))
    assert result is not None and result.agents == ("python-requests/2.34.2",)


def test_a_create_without_a_name_never_joins_a_patch() -> None:
    """generateName: no name to join a patch or update on, so none is looked for."""
    keys = candidate_keys(_create(""))
    assert {k[7] for k in keys} == {"create"}


# --- impersonation (issue 12, item 2) ----------------------------------------------------------


def _impersonated_by(user: str, agent: str, audit_id: str = "imp-1") -> Event:
    """What 1.20 writes for ``kubectl --as dev-alice``: RequestReceived names only the
    authenticated user, no impersonatedUser (tests/data audit log, s10)."""
    return _rr("create", "", auditID=audit_id, userAgent=agent, user={"username": user, "groups": ["devs"]})


def test_an_impersonated_write_joins_the_impersonators_request() -> None:
    """The review names dev-alice without a uid (impersonated users have none on 1.20)."""
    index = RequestIndex()
    index.observe(_impersonated_by("mallory", "peirates/1.0"))
    result = index.lookup(_create("cm", uid=""))
    assert result is not None
    assert result.judged == (("peirates/1.0", "mallory", ("devs",)),)


def _own_without_uid() -> Event:
    """dev-alice's own kubectl create, authenticated without a uid (a client certificate, OIDC)."""
    return _rr("create", "", auditID="own", user={"username": "dev-alice"}, userAgent="kubectl/v1.30.0")


def test_a_users_own_request_answers_alone_even_without_a_uid() -> None:
    """Another user's concurrent request (here refused: no rights needed to send one) cannot
    change the verdict of a user whose own request came: no one denies others' writes."""
    index = RequestIndex()
    index.observe(
        _rr("create", "", auditID="own", user={"username": "dev-alice"}, userAgent="kubectl/v1.30.0")
    )
    index.observe(_impersonated_by("mallory", "peirates/1.0"))
    result = index.lookup(Lookup("CREATE", "dev-alice", "", "", "configmaps", "", "team", "cm"))
    assert result is not None and result.agents == ("kubectl/v1.30.0",)


def test_an_impersonated_call_waits_for_a_request_of_its_own_before_taking_another_users() -> None:
    """The impersonator's event is there first; the call still waits out its wait (in warn mode
    too) in case the review user's own request is only late."""
    own = _own_without_uid()

    async def scenario() -> JoinResult | None:
        index = RequestIndex()
        index.observe(_impersonated_by("mallory", "peirates/1.0"))
        call = asyncio.create_task(index.join(_create("cm", uid=""), wait=1.0))
        await asyncio.sleep(0)
        index.observe(own)  # late, but within the wait
        return await call

    result = asyncio.run(scenario())
    assert result is not None and result.agents == ("kubectl/v1.30.0",)


def test_a_user_with_a_uid_and_its_own_request_is_not_joined_to_other_users() -> None:
    """No impersonation before 1.22 gives a uid: another user's concurrent create stays out."""
    index = RequestIndex()
    index.observe(_rr("create", "", auditID="alice"))  # dev-alice, uid 1003
    index.observe(_impersonated_by("mallory", "curl/8.0"))
    result = index.lookup(_create("cm"))
    assert result is not None and result.agents == ("python-requests/2.34.2",)


def test_a_user_with_a_uid_is_never_joined_to_another_users_request() -> None:
    """Not even without a request of its own: a lost event must not borrow another's agent."""
    index = RequestIndex()
    index.observe(_impersonated_by("mallory", "kubectl/v1.30.0"))
    assert index.lookup(_create("cm")) is None


# --- concurrent requests of one user (issue 12, item 3) -----------------------------------------

KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"


def test_concurrent_requests_of_one_user_never_lend_each_other_their_agent() -> None:
    """A (kubectl) is pending; B's admission call (python-requests) comes before B's own
    RequestReceived, which arrives while the call settles; then A's call comes. Neither call
    may be answered with the other's agent alone: both see both agents (the worst verdict)."""
    (b_rr,) = events(1404)  # python-requests
    a_rr = _as_new_request(b_rr, "request-a", KUBECTL)

    async def scenario() -> tuple[JoinResult | None, JoinResult | None]:
        index = RequestIndex()
        index.observe(a_rr)
        b_call = asyncio.create_task(index.join(lookup(1405), wait=1.0, settle=True))
        await asyncio.sleep(0)  # B's call is in, settling
        index.observe(b_rr)  # B's RequestReceived, late
        a_call = asyncio.create_task(index.join(lookup(1405), wait=1.0, settle=True))
        return await b_call, await a_call

    b_result, a_result = asyncio.run(scenario())
    for result in (b_result, a_result):
        assert result is not None and result.ambiguous
        assert set(result.agents) == {KUBECTL, "python-requests/2.34.2"}


def test_a_settling_call_alone_gets_its_request_and_consumes_it() -> None:
    (rr,) = events(1404)

    async def scenario() -> tuple[JoinResult | None, RequestIndex]:
        index = RequestIndex()
        call = asyncio.create_task(index.join(lookup(1405), wait=1.0, settle=True))
        await asyncio.sleep(0)
        index.observe(rr)
        return await call, index

    result, index = asyncio.run(scenario())
    assert result is not None and result.agents == ("python-requests/2.34.2",)
    assert len(index) == 0 and index.stats.consumed == 1


def test_a_call_that_cannot_deny_answers_on_the_first_match() -> None:
    (rr,) = events(1404)

    async def scenario() -> JoinResult | None:
        index = RequestIndex()
        index.observe(rr)
        return await asyncio.wait_for(index.join(lookup(1405), wait=3600.0), timeout=60.0)

    result = asyncio.run(scenario())
    assert result is not None and result.agents == ("python-requests/2.34.2",)


# --- bounded by bytes (issue 12, item 12) -------------------------------------------------------


def test_agents_are_cut_as_the_apiserver_cuts_them() -> None:
    index = RequestIndex()
    index.observe(_rr("create", "", userAgent="x" * (2 * 1024 * 1024)))
    result = index.lookup(_create("cm"))
    assert result is not None
    assert result.agents == ("x" * AGENT_CUT + "...TRUNCATED",)
    assert stored_agent("x" * AGENT_CUT) == "x" * AGENT_CUT  # what the apiserver keeps whole
    assert stored_agent("é" * AGENT_CUT) == "é" * (AGENT_CUT // 2) + "...TRUNCATED"  # 1,024 bytes


def test_the_index_is_bounded_by_bytes_as_well_as_entries() -> None:
    """Forged events with long names: the oldest go, the bytes held stay under the bound."""
    index = RequestIndex(max_bytes=64 * 1024)
    for number in range(200):
        index.observe(_rr("patch", f"{number:04d}" + "n" * 4000, auditID=f"id-{number}" + "i" * 4000))
        assert index.bytes <= index.max_bytes
    assert 0 < len(index) < 20
    assert index.stats.evicted_cap == 200 - len(index)
    newest = index.lookup(
        Lookup("UPDATE", "dev-alice", "1003", "", "configmaps", "", "team", "0199" + "n" * 4000)
    )
    assert newest is not None
    for number in range(200):  # completions of forged long IDs: remembered digests, still bounded
        index.observe(_rr("patch", "x", auditID=f"id-{number}" + "i" * 4000, stage="ResponseComplete"))
        assert index.bytes <= index.max_bytes
    assert len(index) == 0


def test_pending_entries_and_finished_ids_do_not_crowd_each_other_out() -> None:
    index = RequestIndex(max_bytes=64 * 1024)
    index.observe(_rr("create", "", auditID="done"))
    index.observe(_rr("create", "", auditID="done", stage="ResponseComplete"))
    for number in range(50):  # forged pending entries with long names evict only their own kind
        index.observe(_rr("patch", f"{number}" + "n" * 4000, auditID=f"flood-{number}"))
    index.observe(_rr("create", "", auditID="done"))  # a retried batch: still known as finished
    assert index.stats.ignored_finished == 1

    index.observe(_rr("create", "", auditID="real", userAgent="kubectl/v1.30.0"))
    for number in range(500):  # forged completions with long IDs evict only remembered IDs
        index.observe(_rr("create", "", auditID=f"forged-{number}" + "i" * 4000, stage="ResponseComplete"))
    assert index.bytes <= index.max_bytes
    result = index.lookup(_create("cm"))
    assert result is not None and "kubectl/v1.30.0" in result.agents


def _bytes_held(index: RequestIndex, make: Callable[[int], dict[str, Any]], count: int) -> float:
    """Bytes per pending entry that ``index`` holds after observing ``count`` events made by
    ``make`` (tracemalloc: the entries and every string they keep, the events dropped)."""
    (rr,) = events(1404)
    template: dict[str, Any] = msgspec.to_builtins(rr)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(count):
            index.observe(parse_event({**copy.deepcopy(template), **make(number)}))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == count
    return held / count


def test_an_ordinary_pending_entry_is_compact_and_within_its_estimate() -> None:
    """A flood of creates by distinct users (bench/memory.py's RequestIndex flood): ~560 B an
    entry (it was ~1,250 B: a dict per key and a copy of the agent and groups per entry)."""
    index = RequestIndex(clock=FakeClock())

    def create(number: int) -> dict[str, Any]:
        user = {"username": f"flood-{number}", "uid": "1003", "groups": ["devs", "system:authenticated"]}
        return {"auditID": f"f100d{number:08x}-0000-4000-8000-0123456789ab", "user": user}

    held = _bytes_held(index, create, 5_000)
    assert held < 700
    assert index.bytes / len(index) > held


def test_entries_whose_every_string_is_new_stay_within_their_estimate() -> None:
    """Forged events, every value distinct (some wide characters too): nothing to share, and the
    byte bound still holds what the index really keeps."""
    index = RequestIndex(clock=FakeClock())

    def forged(number: int) -> dict[str, Any]:
        groups = [f"group-{number}-{k}" for k in range(3)]
        return {
            "auditID": f"forged-{number:08x}-0000-4000-8000-0123456789ab",
            "user": {"username": f"user-{number}-\u00e9\U0001f600", "uid": f"uid-{number}", "groups": groups},
            "userAgent": f"agent-{number}/1.0 (linux/amd64)",
            "objectRef": {
                "resource": f"things{number}",
                "namespace": f"ns-{number}",
                "apiGroup": f"g{number}.io",
            },
        }

    held = _bytes_held(index, forged, 5_000)
    assert index.bytes / len(index) > held
