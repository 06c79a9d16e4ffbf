"""`tail --allowlist-configmap` reads nothing before the ConfigMap's first outcome.

Lines are judged when read, so a tailer that started reading before its first list (a restart
resuming at a checkpoint reads the missed lines at once) judged them by the built-in allowlist.
Found by tests/e2e/test_tail_cluster.py against a real apiserver; here the source is a stub
whose first outcome comes from another thread, later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webhook import startup
from webhook.core.allowlist import default_allowlist
from webhook.core.live_allowlist import LiveAllowlist
from webhook.tail import command as tailcmd

AGENT = "python-requests/2.34.2"  # denied by the built-in allowlist
LISTING = 'agents: ["python-requests/*"]\n'


class StubSource:
    """Stands in for ConfigMapSource: `outcome(live)` runs on its own thread after `started` is set."""

    outcome: Callable[[LiveAllowlist], object] = staticmethod(lambda live: None)

    def __init__(self, live: LiveAllowlist, namespace: str, name: str, *, api: Any, events: Any) -> None:
        self.live = live
        self.namespace, self.name = namespace, name
        self.source = f"configmap {namespace}/{name}"
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stopped = False
        StubSource.last = self

    def _run(self) -> None:
        self.release.wait(30)
        type(self).outcome(self.live)

    def start(self) -> None:
        self.thread.start()
        # The first outcome may only come after _allowlist_source began waiting for it: release
        # it from a timer so the call below really has to wait.
        threading.Timer(0.2, self.release.set).start()

    def stop(self) -> None:
        self.stopped = True

    last: StubSource


@pytest.fixture
def stub_k8s(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StubSource]]:
    monkeypatch.setattr(startup, "api_client", lambda: object())
    monkeypatch.setattr(startup, "ConfigMapSource", StubSource)
    yield StubSource
    StubSource.outcome = staticmethod(lambda live: None)


def _options(wait: float = 30.0) -> tailcmd.TailOptions:
    return tailcmd.TailOptions(
        path="audit.log", state="state", allowlist_configmap="ua/allowlist", configmap_wait=wait
    )


def test_the_first_configmap_load_is_awaited_before_anything_is_judged(stub_k8s: type[StubSource]) -> None:
    stub_k8s.outcome = staticmethod(lambda live: live.apply_text(LISTING, source="configmap ua/allowlist"))
    source = tailcmd._allowlist_source(_options())
    current, stop = source.current, source.stop
    assert current().decide(AGENT).verdict == "listed"
    stop()
    assert stub_k8s.last.stopped


def test_a_refused_or_missing_configmap_ends_the_wait_with_the_built_in_allowlist(
    stub_k8s: type[StubSource],
) -> None:
    stub_k8s.outcome = staticmethod(lambda live: live.fail("configmap ua/allowlist: not found", source="cm"))
    current = tailcmd._allowlist_source(_options()).current
    assert stub_k8s.last.live.status().errors == 1  # returned after the outcome, not before
    assert current() is default_allowlist()


def test_the_wait_is_bounded_and_logged(stub_k8s: type[StubSource], caplog: pytest.LogCaptureFixture) -> None:
    current = tailcmd._allowlist_source(_options(wait=0.05)).current  # the outcome never comes in time
    assert current() is default_allowlist()
    (waited,) = [r for r in caplog.records if "not read within" in r.getMessage()]
    assert waited.fields == {"configmap": "configmap ua/allowlist", "waitSeconds": 0.05}  # type: ignore[attr-defined]
