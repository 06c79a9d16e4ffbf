"""The live allowlist: one compiled :class:`Allowlist` every reader sees, replaced only by a good one.

Sources hand text to :meth:`LiveAllowlist.apply_text`: :class:`FileSource` polls a file (a
mounted ConfigMap changes through a symlink swap, and only a re-read sees it reliably), and
``webhook.kube.configmap.ConfigMapSource`` watches the ConfigMap. A bad edit keeps the last good allowlist;
the error is kept in :meth:`LiveAllowlist.status` (``/readyz`` details) and sent to listeners
(metrics, logs, Kubernetes Events). Readers call :meth:`LiveAllowlist.current` on every use: a
swap is one reference assignment, so it is safe from any thread.

Used by ``serve`` and meant for ``tail`` too: everything here is thread-based and loop-free.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webhook.core.allowlist import Allowlist, AllowlistError
from webhook.logs import fields

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "AllowlistStatus",
    "FileSource",
    "LiveAllowlist",
    "ReloadEvent",
    "ReloadListener",
]

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between re-reads of an allowlist file."""


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """One attempt to change the allowlist: applied (``ok``) or refused, with why."""

    ok: bool
    source: str
    message: str
    allowlist: Allowlist | None = None
    version: str | None = None
    """The source's version of the text (a ConfigMap's resourceVersion), when it has one."""


ReloadListener = Callable[[ReloadEvent], None]


@dataclass(frozen=True, slots=True)
class AllowlistStatus:
    loaded: bool
    source: str | None
    hash: str | None
    loaded_at: float | None
    reloads: int
    errors: int
    last_error: str | None
    last_error_at: float | None
    expired_entries: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "loaded": self.loaded,
            "source": self.source,
            "hash": self.hash,
            "loadedAt": self.loaded_at,
            "reloads": self.reloads,
            "errors": self.errors,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "expiredEntries": list(self.expired_entries),
        }


class LiveAllowlist:
    """Holds the last good allowlist; thread-safe; never swaps in a broken one."""

    def __init__(self, initial: Allowlist | None = None, *, fallback: Allowlist | None = None) -> None:
        self._current = initial
        self._fallback = fallback
        self._lock = threading.Lock()
        self._listeners: list[ReloadListener] = []
        self._last_digest: str | None = None
        self._loaded_at = time.time() if initial is not None else None
        self._reloads = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    def current(self) -> Allowlist | None:
        """The allowlist in force, or None before the first good load."""
        return self._current

    def current_or_fallback(self) -> Allowlist:
        """For readers that need an allowlist at once (the Detector): the fallback until loaded."""
        current = self._current
        if current is not None:
            return current
        if self._fallback is None:
            raise RuntimeError("no allowlist loaded and no fallback given")
        return self._fallback

    def subscribe(self, listener: ReloadListener) -> None:
        """Call ``listener`` after every applied or refused change (from the source's thread)."""
        self._listeners.append(listener)

    def apply_text(self, text: str, *, source: str, version: str | None = None) -> ReloadEvent | None:
        """Compile ``text`` and swap it in; on error keep the current one. None: same text as last time."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            if digest == self._last_digest:
                return None
            self._last_digest = digest
            try:
                allowlist = Allowlist.from_yaml(text, source=source)
            except AllowlistError as exc:
                event = self._refuse(str(exc), source, version)
            else:
                self._current = allowlist
                self._loaded_at = time.time()
                self._reloads += 1
                self._last_error = None
                event = ReloadEvent(
                    True, source, f"allowlist {allowlist.hash} applied", allowlist, version=version
                )
        self._notify(event)
        return event

    def fail(self, message: str, *, source: str, version: str | None = None) -> ReloadEvent | None:
        """Record that the source cannot be read (missing file, deleted ConfigMap); keep the current one.

        Repeats of the last error are not reported again (None).
        """
        with self._lock:
            if message == self._last_error:
                return None
            self._last_digest = None  # the same text coming back is a change
            event = self._refuse(message, source, version)
        self._notify(event)
        return event

    def _refuse(self, message: str, source: str, version: str | None) -> ReloadEvent:
        self._errors += 1
        self._last_error = message
        self._last_error_at = time.time()
        kept = f"; keeping allowlist {self._current.hash}" if self._current is not None else ""
        return ReloadEvent(False, source, message + kept, None, version=version)

    def _notify(self, event: ReloadEvent) -> None:
        if event.ok:
            logger.info(
                "allowlist applied",
                **fields(
                    source=event.source,
                    hash=event.allowlist.hash if event.allowlist else None,
                    version=event.version,
                ),
            )
        else:
            logger.warning(
                "allowlist refused",
                **fields(source=event.source, reason=event.message, version=event.version),
            )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("allowlist listener failed", **fields(source=event.source))

    def status(self) -> AllowlistStatus:
        current = self._current
        return AllowlistStatus(
            loaded=current is not None,
            source=current.source if current is not None else None,
            hash=current.hash if current is not None else None,
            loaded_at=self._loaded_at,
            reloads=self._reloads,
            errors=self._errors,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            expired_entries=tuple(current.expired_entries()) if current is not None else (),
        )


class FileSource:
    """Re-reads an allowlist file every ``interval`` seconds and applies it when its content changes."""

    def __init__(
        self, live: LiveAllowlist, path: str | Path, *, interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        self.live = live
        self.path = Path(path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> ReloadEvent | None:
        """Read once; the event when something changed, else None."""
        source = str(self.path)
        try:
            text = self.path.read_bytes().decode("utf-8")
        except OSError as exc:
            return self.live.fail(f"{source}: cannot read: {exc.strerror or exc}", source=source)
        except UnicodeDecodeError as exc:
            return self.live.fail(f"{source}: not UTF-8: {exc.reason} at byte {exc.start}", source=source)
        return self.live.apply_text(text, source=source)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="allowlist-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:
                logger.exception("allowlist file poll failed", **fields(path=str(self.path)))

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
