"""Start-up shared by ``serve`` and ``tail``: the live allowlist's source, and the sinks.

Both long-running commands take ``--allowlist FILE | --allowlist-configmap NS/NAME`` and
``--sink`` (repeatable); this module turns those flags into running parts, with one wording for
what the user can fix (:class:`SettingsError`, one line naming the flag):

- a ConfigMap named without a namespace is in ``$POD_NAMESPACE`` (the chart sets it in both
  workloads), for both commands;
- an allowlist file is read once at start, and a broken one is fatal: there is no last good
  allowlist to keep yet;
- a ConfigMap is watched; until its first outcome the built-in allowlist judges (``serve``
  reports not ready meanwhile; ``tail`` waits for it, bounded, see
  :meth:`AllowlistSource.wait_first`);
- neither: the built-in allowlist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.live_allowlist import DEFAULT_POLL_INTERVAL, FileSource, LiveAllowlist
from webhook.errors import SetupError
from webhook.kube.client import api_client, parse_configmap_ref, pod_namespace
from webhook.kube.configmap import ConfigMapSource
from webhook.kube.events import EventWriter
from webhook.logs import fields
from webhook.sinks.base import ClusterSink, Sink
from webhook.sinks.spec import SinkSpec, open_sink, parse_sink
from webhook.sinks.table import OutputFormat, output_sink

__all__ = ["AllowlistSource", "SettingsError", "allowlist_flags", "open_allowlist", "open_sinks"]

logger = logging.getLogger(__name__)


class SettingsError(SetupError, ValueError):
    """A setting the user can fix (a flag, a file, API access); the message is one line naming it."""


def allowlist_flags(file: str | None, configmap: str | None) -> tuple[Path | None, tuple[str, str] | None]:
    """``--allowlist`` / ``--allowlist-configmap`` → (file, (namespace, name)), at most one given.

    ``NAME`` alone is in ``$POD_NAMESPACE``.
    """
    if file is not None and configmap is not None:
        raise SettingsError("give --allowlist or --allowlist-configmap, not both")
    ref = None
    if configmap is not None:
        try:
            ref = parse_configmap_ref(configmap, pod_namespace())
        except ValueError as exc:
            raise SettingsError(f"--allowlist-configmap {exc}") from None
    return (Path(file) if file is not None else None), ref


class AllowlistSource:
    """The live allowlist and what keeps it current: a polled file, a watched ConfigMap, or nothing."""

    def __init__(
        self,
        live: LiveAllowlist,
        *,
        file: FileSource | None = None,
        configmap: ConfigMapSource | None = None,
    ) -> None:
        self.live = live
        self.current: Callable[[], Allowlist] = live.current_or_fallback
        """What the Detector calls per event: the allowlist in force, the built-in one until loaded."""
        self.file = file
        self.configmap = configmap
        self._first = threading.Event()
        if configmap is not None:
            live.subscribe(lambda _event: self._first.set())

    def start(self) -> None:
        if self.file is not None:
            self.file.start()
        if self.configmap is not None:
            self.configmap.start()

    def wait_first(self, timeout: float) -> bool:
        """After :meth:`start`: wait for the ConfigMap's first outcome (applied, refused, missing,
        forbidden), at most ``timeout`` seconds; False (and a warning) if it did not come."""
        configmap = self.configmap
        if configmap is None or self._first.wait(timeout):
            return True
        logger.warning(
            "allowlist ConfigMap not read within the wait; judging by the built-in allowlist until it is",
            **fields(configmap=configmap.source, waitSeconds=round(timeout, 2)),
        )
        return False

    def stop(self) -> None:
        if self.file is not None:
            self.file.stop()
        if self.configmap is not None:
            self.configmap.stop()


def open_allowlist(
    file: Path | None,
    configmap: tuple[str, str] | None,
    *,
    interval: float = DEFAULT_POLL_INTERVAL,
) -> AllowlistSource:
    """The allowlist source for the flags (see :func:`allowlist_flags`), not started yet.

    A file is read now: unreadable or invalid raises :class:`SettingsError`. A ConfigMap needs API
    access now (else :class:`SettingsError`); it is first read once started.
    """
    builtin = default_allowlist()
    if file is not None:
        live = LiveAllowlist(fallback=builtin)
        file_source = FileSource(live, file, interval=interval)
        event = file_source.poll()
        if event is None or not event.ok:
            raise SettingsError(event.message if event is not None else "allowlist file unchanged")
        return AllowlistSource(live, file=file_source)
    if configmap is not None:
        live = LiveAllowlist(fallback=builtin)
        try:
            api = api_client()
        except Exception as exc:
            raise SettingsError(f"--allowlist-configmap: no Kubernetes API access: {exc}") from None
        namespace, name = configmap
        return AllowlistSource(
            live, configmap=ConfigMapSource(live, namespace, name, api=api, events=EventWriter(api))
        )
    return AllowlistSource(LiveAllowlist(builtin, fallback=builtin))


def open_sinks(
    texts: Iterable[str], *, cluster_name: str | None = None, output: OutputFormat | None = None
) -> list[tuple[SinkSpec, Sink]]:
    """Every ``--sink``, parsed and opened; a bad one, or one that cannot open: :class:`SettingsError`.

    With ``cluster_name`` (``--cluster-name``) every sink stamps each finding with it. ``stdout``
    takes the form ``output`` asks (``-o``; by default a table on a terminal, JSON lines
    otherwise); its spec, and so a checkpoint's backlog key, is the same in every form.
    """
    opened: list[tuple[SinkSpec, Sink]] = []
    for text in texts:
        try:
            spec = parse_sink(text)
        except ValueError as exc:
            raise SettingsError(f"--sink {exc}") from None
        try:
            sink = output_sink(output) if spec.kind == "stdout" else open_sink(spec)
            opened.append((spec, ClusterSink(sink, cluster_name) if cluster_name else sink))
        except Exception as exc:  # a sink that cannot even be opened (k8s-events without API access)
            raise SettingsError(f"--sink {spec.label}: {exc}") from None
    return opened
