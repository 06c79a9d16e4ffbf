"""The allowlist ConfigMap watch: the official `kubernetes` client against a stand-in apiserver.

List, watch from the list's resourceVersion, relist on expiry (410) and on errors (with
backoff), Events on a bad edit. `tests/e2e/` runs the same against a real kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import Launch
from tests.integration.fake_apiserver import FakeApiserver
from tests.integration.server import wait_for
from tests.integration.traffic import admission, audit_batch
from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.live_allowlist import LiveAllowlist
from webhook.kube.configmap import ConfigMapSource
from webhook.kube.events import EventWriter

NS, NAME = "ua-sentinel", "ua-sentinel-allowlist"
GOOD = 'agents: ["kubectl/*"]\n'
BETTER = 'agents: ["kubectl/*", "python-requests/*"]\n'
BROKEN = "agents:\n  - {product: kubectl, minVersion: banana}\n"


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    fake = FakeApiserver(NS, NAME).start()
    fake.put({"allowlist.yaml": GOOD})
    yield fake
    fake.stop()


@pytest.fixture
def watching(apiserver: FakeApiserver) -> Iterator[tuple[ConfigMapSource, LiveAllowlist]]:
    api = client.CoreV1Api(client.ApiClient(client.Configuration(host=apiserver.url)))
    live = LiveAllowlist(fallback=default_allowlist())
    source = ConfigMapSource(live, NS, NAME, api=api, events=EventWriter(api, instance="test-pod"), resync=30)
    source._sleep = lambda seconds: source._stop.wait(min(seconds, 0.05))  # fast backoff
    source.start()
    yield source, live
    source.stop()
    apiserver.end_watches()


def hash_of(text: str) -> str:
    return Allowlist.from_yaml(text).hash


def loaded_hash(live: LiveAllowlist) -> str | None:
    return live.status().hash


def test_lists_then_watches_from_the_lists_resource_version(
    apiserver: FakeApiserver, watching: tuple[ConfigMapSource, LiveAllowlist]
) -> None:
    _source, live = watching
    wait_for(lambda: loaded_hash(live) == hash_of(GOOD), timeout=10, what="the first load")
    watch = wait_for(apiserver.watches, timeout=10, what="a watch")[0]
    assert watch["resourceVersion"] == [str(apiserver.resource_version)]
    assert watch["fieldSelector"] == [f"metadata.name={NAME}"]
    # kubernetes 37+ sends "true", older clients "True"; apimachinery's Convert_Slice_string_To_bool
    # reads everything but "0" and "false" (any case) as true, so both ask for bookmarks.
    assert watch["allowWatchBookmarks"] in (["true"], ["True"])
    assert live.status().source == f"configmap {NS}/{NAME} (resourceVersion {apiserver.resource_version})"
    apiserver.put({"allowlist.yaml": BETTER})
    wait_for(lambda: loaded_hash(live) == hash_of(BETTER), timeout=10, what="the edit through the watch")
    assert apiserver.lists() == 1  # the edit came through the watch, not a relist
    assert apiserver.events == []  # a normal reload is not worth an Event


def test_bad_edit_keeps_the_last_good_and_raises_a_warning_event(
    apiserver: FakeApiserver, watching: tuple[ConfigMapSource, LiveAllowlist]
) -> None:
    _source, live = watching
    wait_for(lambda: loaded_hash(live) == hash_of(GOOD), timeout=10, what="the first load")
    wait_for(apiserver.watches, timeout=10, what="a watch")
    apiserver.put({"allowlist.yaml": BROKEN})
    wait_for(lambda: apiserver.events, timeout=10, what="a Warning Event")
    (event,) = apiserver.events
    assert (event["type"], event["reason"]) == ("Warning", "AllowlistInvalid")
    assert event["metadata"]["namespace"] == NS
    involved = event["involvedObject"]
    assert (involved["kind"], involved["name"], involved["namespace"]) == ("ConfigMap", NAME, NS)
    assert involved["uid"] == apiserver.uid
    assert involved["resourceVersion"] == str(apiserver.resource_version)
    assert "agents[0]" in event["message"] and "banana" in event["message"]
    assert f"keeping allowlist {hash_of(GOOD)}" in event["message"]
    assert (event["reportingComponent"], event["reportingInstance"]) == ("ua-sentinel", "test-pod")
    assert loaded_hash(live) == hash_of(GOOD)
    assert "banana" in (live.status().last_error or "")

    apiserver.put({"allowlist.yaml": BETTER})
    wait_for(lambda: loaded_hash(live) == hash_of(BETTER), timeout=10, what="the fix")
    wait_for(lambda: len(apiserver.events) == 2, timeout=10, what="the recovery Event")
    assert (apiserver.events[1]["type"], apiserver.events[1]["reason"]) == ("Normal", "AllowlistApplied")
    assert live.status().last_error is None


def test_deleted_configmap_or_missing_key_keeps_the_last_good(
    apiserver: FakeApiserver, watching: tuple[ConfigMapSource, LiveAllowlist]
) -> None:
    _, live = watching
    wait_for(lambda: loaded_hash(live) == hash_of(GOOD), timeout=10, what="the first load")
    wait_for(apiserver.watches, timeout=10, what="a watch")
    apiserver.put({"other.yaml": "x"})
    wait_for(lambda: live.status().last_error, timeout=10, what="the missing key")
    assert "no key 'allowlist.yaml' (keys: other.yaml)" in (live.status().last_error or "")
    apiserver.put(None)
    wait_for(lambda: "not found" in (live.status().last_error or ""), timeout=10, what="the deletion")
    assert loaded_hash(live) == hash_of(GOOD)
    apiserver.put({"allowlist.yaml": GOOD})  # recreated with the same text: applies again
    wait_for(lambda: live.status().last_error is None, timeout=10, what="the re-creation")


def test_expired_watch_relists_and_catches_up(
    apiserver: FakeApiserver, watching: tuple[ConfigMapSource, LiveAllowlist]
) -> None:
    _source, live = watching
    wait_for(lambda: loaded_hash(live) == hash_of(GOOD), timeout=10, what="the first load")
    wait_for(apiserver.watches, timeout=10, what="a watch")
    apiserver.expire_next_watch = True
    apiserver.end_watches()  # the server ends the watch (its timeout); the next one is expired
    apiserver.put({"allowlist.yaml": BETTER})  # missed by any watch: only a relist sees it
    wait_for(lambda: loaded_hash(live) == hash_of(BETTER), timeout=10, what="the relist")
    assert apiserver.lists() >= 2


def test_api_errors_back_off_and_retry(apiserver: FakeApiserver) -> None:
    apiserver.list_failures = [500, 503]
    api = client.CoreV1Api(client.ApiClient(client.Configuration(host=apiserver.url)))
    live = LiveAllowlist(fallback=default_allowlist())
    sleeps: list[float] = []

    def sleep(seconds: float) -> bool:
        sleeps.append(seconds)
        return False

    source = ConfigMapSource(live, NS, NAME, api=api, resync=30, sleep=sleep)
    source.start()
    try:
        wait_for(lambda: live.status().loaded, timeout=10, what="a load after two failures")
    finally:
        source.stop()
        apiserver.end_watches()
    assert source.failures == 2
    assert len(sleeps) == 2 and 0.8 <= sleeps[0] <= 1.2 and 1.6 <= sleeps[1] <= 2.4  # doubling, jittered


def test_serve_with_a_configmap_allowlist(launch: Launch, tmp_path: Path, apiserver: FakeApiserver) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(apiserver.kubeconfig())
    server = launch(
        "--allowlist-configmap", f"{NS}/{NAME}", KUBECONFIG=str(kubeconfig), KUBERNETES_SERVICE_HOST=""
    )

    def readyz() -> dict[str, Any]:
        with server.client() as c:
            doc: dict[str, Any] = c.get("/readyz").json()
        return doc

    wait_for(lambda: readyz()["ready"], timeout=20, what="the ConfigMap allowlist to load")
    with server.client() as c:
        c.post("/audit", json=audit_batch(1404))
        annotations = c.post("/validate", json=admission(1405)).json()["response"]["auditAnnotations"]
    assert (annotations["user-agent-verdict"], annotations["allowlist-hash"]) == ("unlisted", hash_of(GOOD))
    apiserver.put({"allowlist.yaml": BROKEN})
    wait_for(lambda: readyz()["allowlist"]["lastError"], timeout=20, what="the broken edit")
    assert readyz()["ready"] is True
    wait_for(lambda: apiserver.events, timeout=10, what="the Warning Event")
    assert apiserver.events[0]["reason"] == "AllowlistInvalid"
    assert server.metric("ua_sentinel_allowlist_reload_errors_total") == 1


def test_not_ready_and_unknown_until_the_configmap_exists(launch: Launch, tmp_path: Path) -> None:
    fake = FakeApiserver(NS, NAME).start()  # no ConfigMap yet
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(fake.kubeconfig())
        server = launch(
            "--allowlist-configmap",
            NAME,
            "--mode",
            "enforce",
            KUBECONFIG=str(kubeconfig),
            POD_NAMESPACE=NS,
            KUBERNETES_SERVICE_HOST="",
        )
        wait_for(fake.watches, timeout=20, what="the watch")
        with server.client() as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert "not found" in ready.json()["allowlist"]["lastError"]
            c.post("/audit", json=audit_batch(1404))
            response = c.post("/validate", json=admission(1405)).json()["response"]
            assert response["allowed"] is True
            assert response["auditAnnotations"]["user-agent-verdict"] == "unknown"
            fake.put({"allowlist.yaml": GOOD})
            wait_for(lambda: c.get("/readyz").status_code == 200, timeout=20, what="readiness")
    finally:
        fake.stop()
