"""RequestIndex on the recorded apiserver traffic, plus its lifetime rules (TTL, cap, completion)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tests.integration.traffic import admission, audit_batch, recorded
from webhook.core.audit import Event, EventList, parse_event
from webhook.serve.admission import AdmissionReview, lookup_of
from webhook.serve.join import JoinResult, Lookup, RequestIndex, candidate_keys, event_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def events(seq: int) -> list[Event]:
    return list(EventList.model_validate(audit_batch(seq)).items)


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
    data: dict[str, Any] = event.model_dump(by_alias=True)
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
    data = rr.model_dump(by_alias=True)
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
    patch = parse_event({**rr.model_dump(by_alias=True), "verb": "patch"})
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


def test_impersonated_requests_join_on_the_effective_user() -> None:
    (rr,) = events(1404)
    data = rr.model_dump(by_alias=True)
    data["user"] = {"username": "admin", "uid": "1001", "groups": ["system:masters"]}
    data["impersonatedUser"] = {"username": "dev-alice", "uid": "1003", "groups": ["devs"]}
    key = event_key(parse_event(data))
    assert key is not None and key[:2] == ("dev-alice", "1003")


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


def test_two_waiters_on_one_key_each_get_their_own_request() -> None:
    (rr,) = events(1404)

    async def scenario() -> list[JoinResult | None]:
        index = RequestIndex()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, index.observe, rr)
        loop.call_later(0.03, index.observe, _as_new_request(rr, "second", "curl/8"))
        return list(await asyncio.gather(index.join(lookup(1405), 5.0), index.join(lookup(1405), 5.0)))

    first, second = asyncio.run(scenario())
    assert first is not None and second is not None
    assert {first.agents, second.agents} == {("python-requests/2.34.2",), ("curl/8",)}


def test_panic_removes_the_request() -> None:
    (rr,) = events(1404)
    index = RequestIndex()
    index.observe(rr)
    index.observe(parse_event({**rr.model_dump(by_alias=True), "stage": "Panic"}))
    assert len(index) == 0 and index.lookup(lookup(1405)) is None
