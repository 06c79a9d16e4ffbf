"""The allowlist ConfigMap watch, with the official client.

:class:`ConfigMapSource` lists the ConfigMap (one object, by field selector), applies its
``allowlist.yaml`` to a :class:`~webhook.core.live_allowlist.LiveAllowlist`, then watches from the list's
``resourceVersion``. A watch that ends (server timeout = the resync period) or expires (410
Gone) is followed by a fresh list, which is also the periodic resync; any other failure waits
with capped exponential backoff before the next list. A deleted ConfigMap or a missing key keeps
the last good allowlist, as does a bad edit; a bad edit is also reported as a Warning Event
(``AllowlistInvalid``, written by :mod:`webhook.kube.events`) on the ConfigMap so ``kubectl
describe configmap`` shows it to whoever made it, and the edit that repairs it as a Normal one
(``AllowlistApplied``). Ordinary edits raise no Event: every replica would repeat it.

Runs on its own thread: the client is synchronous, and nothing here touches the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any, Final

from webhook.core.live_allowlist import LiveAllowlist, ReloadEvent
from webhook.kube.events import EventType, EventWriter
from webhook.logs import fields

__all__ = ["ALLOWLIST_KEY", "ConfigMapSource"]

logger = logging.getLogger(__name__)

ALLOWLIST_KEY: Final = "allowlist.yaml"
DEFAULT_RESYNC: Final = 300
"""Seconds a watch runs before the server ends it and the ConfigMap is listed again."""
BACKOFF_START: Final = 1.0
BACKOFF_MAX: Final = 30.0


class ConfigMapSource:
    """Keeps a LiveAllowlist in step with key ``allowlist.yaml`` of one ConfigMap."""

    def __init__(
        self,
        live: LiveAllowlist,
        namespace: str,
        name: str,
        *,
        api: Any,
        events: EventWriter | None = None,
        key: str = ALLOWLIST_KEY,
        resync: int = DEFAULT_RESYNC,
        watch_factory: Callable[[], Any] | None = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.live = live
        self.namespace = namespace
        self.name = name
        self.api = api
        self.events = events
        self.key = key
        self.resync = resync
        self._watch_factory = watch_factory
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.lists = 0
        self.failures = 0

    @property
    def source(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    def handle(self, configmap: Any | None) -> ReloadEvent | None:
        """Apply one observed state of the ConfigMap (None: it does not exist)."""
        if configmap is None:
            return self.live.fail(
                f"{self.source}: not found; keeping the last good allowlist", source=self.source
            )
        version = configmap.metadata.resource_version
        data = configmap.data or {}
        text = data.get(self.key)
        if text is None:
            keys = ", ".join(sorted(data)) or "none"
            return self.live.fail(
                f"{self.source}: no key {self.key!r} (keys: {keys})", source=self.source, version=version
            )
        had_error = self.live.status().last_error is not None
        event = self.live.apply_text(
            text, source=f"{self.source} (resourceVersion {version})", version=version
        )
        if event is not None and self.events is not None and (had_error or not event.ok):
            type_: EventType = "Normal" if event.ok else "Warning"
            reason = "AllowlistApplied" if event.ok else "AllowlistInvalid"
            self.events.about(configmap, kind="ConfigMap", type_=type_, reason=reason, message=event.message)
        return event

    def _new_watch(self) -> Any:
        if self._watch_factory is not None:
            return self._watch_factory()
        from kubernetes import watch

        return watch.Watch()  # type: ignore[no-untyped-call]

    def sync_once(self) -> None:
        """One list, then one watch until it ends. Raises on API or connection errors."""
        selector = f"metadata.name={self.name}"
        listed = self.api.list_namespaced_config_map(self.namespace, field_selector=selector)
        self.lists += 1
        items = listed.items or []
        self.handle(items[0] if items else None)
        version = listed.metadata.resource_version
        watch = self._watch = self._new_watch()
        try:
            for event in watch.stream(
                self.api.list_namespaced_config_map,
                self.namespace,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=self.resync,
                allow_watch_bookmarks=True,
                _request_timeout=(10, self.resync + 30),
            ):
                if self._stop.is_set():
                    break
                kind = event.get("type")
                if kind in ("ADDED", "MODIFIED"):
                    self.handle(event["object"])
                elif kind == "DELETED":
                    self.handle(None)
        finally:
            watch.stop()
            self._watch = None

    def run(self) -> None:
        """List and watch until :meth:`stop`; failures back off from 1 s up to 30 s (with jitter)."""
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                self.sync_once()
                backoff = BACKOFF_START
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.failures += 1
                status = getattr(exc, "status", None)
                if status == 410:
                    logger.info("allowlist watch expired; listing again", **fields(configmap=self.source))
                    continue
                logger.warning(
                    "allowlist watch failed; retrying",
                    **fields(
                        configmap=self.source, status=status, error=str(exc)[:300], retryIn=round(backoff, 2)
                    ),
                )
                if status in (401, 403, 404):
                    self.live.fail(f"{self.source}: API error {status}: {str(exc)[:200]}", source=self.source)
                if self._sleep(backoff * random.uniform(0.8, 1.2)):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="allowlist-configmap", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end; a watch blocked on the socket ends with the process (daemon)."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()
            # Unblock the read now rather than at the next event: close the streaming response
            # (the client keeps it in a private attribute; absent in other versions, then we wait).
            response = getattr(watch, "_resp", None)
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
