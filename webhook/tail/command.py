"""Wiring for ``ua-sentinel tail``: allowlist source, detector, baseline, sinks, metrics, signals.

The CLI parses arguments into :class:`TailOptions` and calls :func:`run_tail`; problems the user
can fix raise :class:`TailSetupError` (one line, exit status 1).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from webhook.core.allowlist import Allowlist, AllowlistError, default_allowlist
from webhook.core.findings import Sink
from webhook.detect.baseline import Baseline
from webhook.detect.detector import Detector, DetectorConfig
from webhook.inputs.formats import Format
from webhook.sinks.outbox import DEFAULT_MAX_BACKLOG, SinkSpec, open_sink, parse_sink
from webhook.tail.checkpoint import CheckpointStore, StateLocked
from webhook.tail.metrics import TailMetrics
from webhook.tail.tailer import DEFAULT_GRACE, TailConfig, Tailer, make_stop_event

__all__ = ["BASELINE_FILE", "TailOptions", "TailSetupError", "run_tail"]

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.sqlite"


class TailSetupError(Exception):
    """A configuration problem the user can fix; the CLI prints it as one line."""


@dataclass(kw_only=True, slots=True)
class TailOptions:
    path: str
    state: str
    allowlist: str | None = None
    allowlist_configmap: str | None = None
    sinks: list[str] = field(default_factory=lambda: ["stdout"])
    fmt: Format = "k8s"
    from_start: bool = False
    metrics_port: int | None = None
    window: float = DetectorConfig().window.total_seconds()
    burst_threshold: int = DetectorConfig().burst_threshold
    burst_window: float = DetectorConfig().burst_window.total_seconds()
    baseline_days: int = 7
    grace: float = DEFAULT_GRACE
    poll_interval: float = 0.2
    checkpoint_interval: float = 2.0
    max_backlog: int = DEFAULT_MAX_BACKLOG
    configmap_wait: float = 30.0
    """Seconds to wait at start for the allowlist ConfigMap's first outcome before reading."""


def _allowlist_source(options: TailOptions) -> tuple[Callable[[], Allowlist], Callable[[], None]]:
    """The allowlist getter the Detector calls per event, and a function stopping its reloader."""
    from webhook.core.live_allowlist import FileSource, LiveAllowlist

    if options.allowlist and options.allowlist_configmap:
        raise TailSetupError("give --allowlist or --allowlist-configmap, not both")
    if options.allowlist_configmap:
        from webhook.kube import configmap as k8s

        try:
            namespace, name = k8s.parse_configmap_ref(options.allowlist_configmap)
        except ValueError as exc:
            raise TailSetupError(f"--allowlist-configmap {exc}") from None
        live = LiveAllowlist(fallback=default_allowlist())
        api = k8s.api_client()
        cm_source = k8s.ConfigMapSource(live, namespace, name, api=api, recorder=k8s.EventRecorder(api))
        # Events are judged when read, so reading before the first list would judge the lines
        # of a --from-start or a resumed checkpoint by the built-in allowlist: wait for the
        # ConfigMap's first outcome (applied, or refused/missing/forbidden), bounded.
        first = threading.Event()
        live.subscribe(lambda _event: first.set())
        cm_source.start()
        if not first.wait(options.configmap_wait):
            log.warning(
                "allowlist ConfigMap %s/%s not read within %.0f s; judging by the built-in allowlist "
                "until it is",
                namespace,
                name,
                options.configmap_wait,
            )
        return live.current_or_fallback, cm_source.stop
    if options.allowlist:
        try:
            initial = Allowlist.from_file(options.allowlist)
        except AllowlistError as exc:
            raise TailSetupError(str(exc)) from None
        live = LiveAllowlist(initial)
        file_source = FileSource(live, options.allowlist)
        file_source.poll()
        file_source.start()
        return live.current_or_fallback, file_source.stop
    static = default_allowlist()
    return (lambda: static), (lambda: None)


def _sinks(options: TailOptions) -> list[tuple[SinkSpec, Sink]]:
    out: list[tuple[SinkSpec, Sink]] = []
    for text in options.sinks:
        try:
            spec = parse_sink(text)
        except ValueError as exc:
            raise TailSetupError(f"--sink {exc}") from None
        try:
            out.append((spec, open_sink(spec)))
        except Exception as exc:  # a sink that cannot even be opened is a setup error
            raise TailSetupError(f"--sink {spec.label}: {exc}") from None
    return out


def run_tail(options: TailOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0)."""
    for name, value in (("--window", options.window), ("--burst-window", options.burst_window)):
        if value <= 0:
            raise TailSetupError(f"{name} must be positive")
    if options.burst_threshold < 1 or options.baseline_days < 0:
        raise TailSetupError("--burst-threshold must be >= 1 and --baseline-days >= 0")
    state = Path(options.state)
    try:
        store = CheckpointStore(state)
    except StateLocked as exc:
        raise TailSetupError(str(exc)) from None
    except OSError as exc:
        raise TailSetupError(f"--state {state}: {exc.strerror or exc}") from None
    try:
        allowlist, stop_reloader = _allowlist_source(options)
        sinks = _sinks(options)
    except BaseException:
        store.close()
        raise
    baseline = Baseline(state / BASELINE_FILE, days=options.baseline_days) if options.baseline_days else None
    config = DetectorConfig(
        window=dt.timedelta(seconds=options.window),
        burst_threshold=options.burst_threshold,
        burst_window=dt.timedelta(seconds=options.burst_window),
    )
    metrics = TailMetrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
    tailer = Tailer(
        TailConfig(
            path=options.path,
            state_dir=options.state,
            fmt=options.fmt,
            from_start=options.from_start,
            poll_interval=options.poll_interval,
            checkpoint_interval=options.checkpoint_interval,
            grace=options.grace,
            max_backlog=options.max_backlog,
        ),
        Detector(allowlist, config=config, baseline=baseline),
        sinks,
        store=store,
        baseline=baseline,
    )
    metrics.watch(tailer)
    stop, restore = make_stop_event([signal.SIGTERM, signal.SIGINT])
    log.info("tailing %s (state %s, sinks %s)", options.path, options.state, [s.label for s, _ in sinks])
    try:
        tailer.run(stop)
    finally:
        restore()
        stop_reloader()
    return 0
