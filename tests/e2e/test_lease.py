"""`webhook.kube.lease` against the real kube-apiserver 1.20: client-go's acquire/renew rules.

Each candidate is a LeaderElector with the real client; only its monotonic clock is a counter
the test moves, so "the lease expired for this candidate" is a step, never a sleep.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from webhook.errors import SetupError
from webhook.kube.lease import LeaderElectionConfig, LeaderElector

from .harness import ControlPlane

WAIT_S = 60.0


class Clock:
    """Monotonic seconds the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    control_plane.apply_yaml({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[Any]:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(str(control_plane.kubeconfig("admin")), client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    yield client.CoordinationV1Api(api_client)
    api_client.close()


def _candidate(
    api: Any, namespace: str, identity: str, clock: Clock, *, lease: str = "source", **durations: Any
) -> LeaderElector:
    config = LeaderElectionConfig(namespace=namespace, name=lease, identity=identity, **durations)
    return LeaderElector(config, api=api, clock=clock)


def _spec(cp: ControlPlane, namespace: str, name: str = "source") -> dict[str, Any]:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
    response = cp.request("admin", "GET", path)
    response.raise_for_status()
    spec: dict[str, Any] = response.json()["spec"]
    return spec


def test_first_candidate_creates_the_lease_and_a_second_waits_until_it_expired_by_its_own_clock(
    control_plane: ControlPlane, api: Any, namespace: str
) -> None:
    a_clock, b_clock = Clock(), Clock()
    a = _candidate(api, namespace, "replica-a", a_clock)
    b = _candidate(api, namespace, "replica-b", b_clock)

    assert a.try_acquire_or_renew()
    created = _spec(control_plane, namespace)
    assert created["holderIdentity"] == "replica-a"
    assert created["leaseDurationSeconds"] == 15
    assert created["leaseTransitions"] == 0
    assert created["acquireTime"] == created["renewTime"]

    assert not b.try_acquire_or_renew()
    assert b.leader == "replica-a" and not b.is_leader
    # b saw this record at its t=1000: it is still valid at t=1014.9 on b's clock...
    b_clock.now += 14.9
    assert not b.try_acquire_or_renew()
    # ...and a renewal (a new resourceVersion) restarts b's count, whatever renewTime says.
    assert a.try_acquire_or_renew()
    renewed = _spec(control_plane, namespace)
    assert renewed["acquireTime"] == created["acquireTime"] and renewed["renewTime"] != created["renewTime"]
    b_clock.now += 1.0
    assert not b.try_acquire_or_renew()  # first sight of the renewed record
    b_clock.now += 15.0
    assert b.try_acquire_or_renew()
    taken = _spec(control_plane, namespace)
    assert taken["holderIdentity"] == "replica-b"
    assert taken["leaseTransitions"] == 1
    assert taken["acquireTime"] != created["acquireTime"]


def test_a_holder_whose_lease_was_taken_cannot_renew_over_it(
    control_plane: ControlPlane, api: Any, namespace: str
) -> None:
    """a's fast path writes on the resourceVersion it last wrote; the apiserver refuses it (409)
    because b wrote since, and the slow path then sees b holding a valid lease."""
    a_clock, b_clock = Clock(), Clock()
    a = _candidate(api, namespace, "replica-a", a_clock)
    b = _candidate(api, namespace, "replica-b", b_clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    b_clock.now += 16
    assert b.try_acquire_or_renew()

    assert not a.try_acquire_or_renew()
    assert a.leader == "replica-b"
    assert _spec(control_plane, namespace)["holderIdentity"] == "replica-b"
    assert b.try_acquire_or_renew()  # b renews on
    assert _spec(control_plane, namespace)["leaseTransitions"] == 1


def test_of_two_candidates_taking_an_expired_lease_the_apiserver_lets_one_win(
    control_plane: ControlPlane, api: Any, namespace: str
) -> None:
    """b and c both read the same expired record; each writes carrying that resourceVersion.
    Optimistic concurrency: the second write is a conflict, and c does not become leader."""
    a = _candidate(api, namespace, "replica-a", Clock())
    b_clock, c_clock = Clock(), Clock()
    b = _candidate(api, namespace, "replica-b", b_clock)
    c = _candidate(api, namespace, "replica-c", c_clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    b_clock.now += 16
    c_clock.now += 16
    # Both decide to take it from the record they read; b's write lands first.
    lease = api.read_namespaced_lease("source", namespace)
    assert b.try_acquire_or_renew()
    stale = lease.metadata.resource_version
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "source", "namespace": namespace, "resourceVersion": stale},
        "spec": {"holderIdentity": "replica-c", "leaseDurationSeconds": 15, "leaseTransitions": 1},
    }
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        api.replace_namespaced_lease("source", namespace, body)
    assert refused.value.status == 409
    # c itself, reading the record b wrote, starts its own count again: no takeover.
    assert not c.try_acquire_or_renew()
    assert _spec(control_plane, namespace)["holderIdentity"] == "replica-b"


def test_release_hands_the_lease_over_at_once(control_plane: ControlPlane, api: Any, namespace: str) -> None:
    a = _candidate(api, namespace, "replica-a", Clock())
    b = _candidate(api, namespace, "replica-b", Clock())
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    released = _spec(control_plane, namespace)
    assert released.get("holderIdentity", "") == ""
    assert released["leaseDurationSeconds"] == 1
    assert b.try_acquire_or_renew()  # no holder: no wait, whatever b's clock says
    assert _spec(control_plane, namespace)["leaseTransitions"] == 1


def test_renewal_that_fails_until_the_deadline_calls_on_lost(
    control_plane: ControlPlane, api: Any, namespace: str
) -> None:
    """The holder's renew loop keeps the lease while it can write, and reports it lost once
    another holder has it (here: an admin hands it to someone else through the API)."""
    durations = {"lease_duration": 3, "renew_deadline": 1.0, "retry_period": 0.1}
    a = LeaderElector(
        LeaderElectionConfig(namespace=namespace, name="source", identity="replica-a", **durations), api=api
    )
    assert a.acquire()
    lost = threading.Event()
    a.start_renewing(lost.set)
    first = _spec(control_plane, namespace)["renewTime"]

    def renewed() -> bool:
        return bool(_spec(control_plane, namespace)["renewTime"] != first)

    from .procs import wait_until

    wait_until(renewed, timeout=WAIT_S, what="a renewal by the holder", interval=0.05)
    assert not lost.is_set()
    response = control_plane.request(
        "admin",
        "PATCH",
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/source",
        json={"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3600}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    response.raise_for_status()
    assert lost.wait(WAIT_S), "the holder never noticed it lost the lease"
    assert _spec(control_plane, namespace)["holderIdentity"] == "intruder"
    assert a.release()  # not the holder any more: nothing to hand back, nothing written
    assert _spec(control_plane, namespace)["holderIdentity"] == "intruder"


def test_durations_client_go_refuses_are_refused() -> None:
    with pytest.raises(SetupError, match="must exceed the renew deadline"):
        LeaderElectionConfig(namespace="ns", name="l", identity="i", lease_duration=10, renew_deadline=10)
    with pytest.raises(SetupError, match=r"1\.2 x the retry period"):
        LeaderElectionConfig(namespace="ns", name="l", identity="i", renew_deadline=2.0, retry_period=2.0)


def test_identity_is_the_pod_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from webhook.kube.lease import default_identity

    monkeypatch.setenv("POD_NAME", "uas-ua-sentinel-source-5d9c-x7k2q")
    assert default_identity() == "uas-ua-sentinel-source-5d9c-x7k2q"
    monkeypatch.delenv("POD_NAME")
    assert default_identity() != default_identity()  # two local processes never share one
    assert os.uname().nodename in default_identity()
