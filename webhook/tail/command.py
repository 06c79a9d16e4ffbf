"""Wiring for ``ua-sentinel tail``: allowlist source, detector, baseline, sinks, metrics, signals.

The CLI parses arguments into :class:`TailOptions` and calls :func:`run_tail`; problems the user
can fix raise :class:`~webhook.startup.SettingsError` (one line, exit status 1). The allowlist
source and the sinks are opened by :mod:`webhook.startup`, as ``serve`` opens them.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from webhook.detect.baseline import Baseline
from webhook.detect.config import DEFAULT_CONFIG, DetectorConfig
from webhook.detect.detector import Detector
from webhook.inputs.formats import Format
from webhook.inputs.source import QueueSource, SourceSpec, StreamSource
from webhook.kube.lease import LeaderElectionConfig, LeaderElector, coordination_api, default_identity
from webhook.kube.state_configmap import StateConfigMap
from webhook.logs import fields
from webhook.sinks.outbox import DEFAULT_MAX_BACKLOG
from webhook.sinks.table import OutputFormat
from webhook.startup import AllowlistSource, SettingsError, allowlist_flags, open_allowlist, open_sinks
from webhook.tail.checkpoint import CheckpointStore, StateLocked
from webhook.tail.metrics import TailMetrics
from webhook.tail.queues import QueueFollower
from webhook.tail.streams import StreamFollower
from webhook.tail.tailer import DEFAULT_GRACE, TailConfig, Tailer, make_stop_event

__all__ = ["BASELINE_FILE", "EXIT_LEASE_LOST", "TailOptions", "run_tail"]

logger = logging.getLogger(__name__)

BASELINE_FILE = "baseline.sqlite"
EXIT_LEASE_LOST = 3
"""Exit status of a tail that lost its Lease (the pod restarts and waits as a standby)."""


@dataclass(kw_only=True, slots=True)
class TailOptions:
    path: str
    """The file to follow; empty with ``sources``."""
    state: str
    sources: list[SourceSpec] = field(default_factory=list)
    """Cloud sources (``--source cloudwatch:...``), read instead of ``path``."""
    page_size: int = 1000
    eventhub_consumer_group: str | None = None
    """``--eventhub-consumer-group`` (None: the environment's, else ``$Default``)."""
    """Records per call to a cloud source (CloudWatch allows up to 10,000)."""
    allowlist: str | None = None
    allowlist_configmap: str | None = None
    sinks: list[str] = field(default_factory=lambda: ["stdout"])
    cluster_name: str | None = None
    """``orchestrator.cluster.name`` on every finding (``--cluster-name``)."""
    fmt: Format = "k8s"
    from_start: bool = False
    metrics_port: int | None = None
    detector: DetectorConfig = DEFAULT_CONFIG
    """Checked by the CLI, which parses the detector's flags for replay and tail alike."""
    baseline_days: int = 7
    grace: float = DEFAULT_GRACE
    poll_interval: float = 0.2
    checkpoint_interval: float = 2.0
    max_backlog: int = DEFAULT_MAX_BACKLOG
    configmap_wait: float = 30.0
    """Seconds to wait at start for the allowlist ConfigMap's first outcome before reading."""
    output: OutputFormat | None = None
    """How the ``stdout`` sink writes: ``None`` = a table on a terminal, JSON lines otherwise."""
    leader_election: LeaderElectionConfig | None = None
    """With ``--leader-elect``: read only while holding this Lease (one reader among replicas)."""
    checkpoint_configmap: tuple[str, str] | None = None
    """(namespace, name) with ``--checkpoint-configmap``: the checkpoint is copied there too."""


def _allowlist_source(options: TailOptions) -> AllowlistSource:
    """The allowlist source, started; with a ConfigMap, after its first outcome (bounded)."""
    source = open_allowlist(*allowlist_flags(options.allowlist, options.allowlist_configmap))
    source.start()
    # Events are judged when read, so reading before the first list would judge the lines
    # of a --from-start or a resumed checkpoint by the built-in allowlist: wait for the
    # ConfigMap's first outcome (applied, or refused/missing/forbidden), bounded.
    source.wait_first(options.configmap_wait)
    return source


def _lease_lost() -> None:
    """client-go's OnStoppedLeading: end now, before a standby can take the lease and read.

    A graceful stop would keep reading and delivering while it drains; ``os._exit`` stops at
    once. What was delivered since the last checkpoint is delivered again by the next leader
    (at least once, same ``event.id``).
    """
    logging.shutdown()
    os._exit(EXIT_LEASE_LOST)


def _elect(config: LeaderElectionConfig) -> LeaderElector | None:
    """Wait for the Lease (a SIGTERM while waiting ends the wait: None), then keep renewing it."""
    try:
        api = coordination_api()
    except Exception as exc:
        raise SettingsError(f"--leader-elect: no Kubernetes API access: {exc}") from None
    elector = LeaderElector(config, api=api)
    stop, restore = make_stop_event([signal.SIGTERM, signal.SIGINT])
    try:
        if not elector.acquire(stop):
            return None
    finally:
        restore()
    elector.start_renewing(_lease_lost)
    return elector


def _stream_follower(options: TailOptions) -> StreamFollower | QueueFollower | None:
    """The follower of the cloud sources (None for a file); their clients are made here."""
    if not options.sources:
        return None
    queued = [spec for spec in options.sources if spec.kind == "pubsub"]
    if queued and len(queued) != len(options.sources):
        raise SettingsError("tail: pubsub sources cannot be mixed with other cloud sources yet")
    if queued:
        from webhook.inputs.pubsub import PubSubSource

        subscriptions: list[QueueSource] = [PubSubSource(spec.target) for spec in queued]
        return QueueFollower(subscriptions, poll_interval=options.poll_interval, page_limit=options.page_size)
    sources: list[StreamSource] = []
    for spec in options.sources:
        if spec.kind == "eventhub":
            from webhook.inputs.eventhub import EventHubSource

            sources.append(EventHubSource(spec.target, group=options.eventhub_consumer_group))
        elif spec.kind == "azblob":
            from webhook.inputs.azblob import AzureBlobSource

            sources.append(AzureBlobSource(spec.target))
        else:
            from webhook.inputs.cloudwatch import CloudWatchSource

            sources.append(CloudWatchSource(spec.target))
    return StreamFollower(sources, poll_interval=options.poll_interval, page_limit=options.page_size)


def run_tail(options: TailOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0).

    With leader election, the Lease is held before the state directory is locked and anything is
    read, and released only after the tailer has checkpointed and unlocked it.
    """
    elector = _elect(options.leader_election) if options.leader_election is not None else None
    if options.leader_election is not None and elector is None:
        return 0
    try:
        return _run_tail(options, elector)
    finally:
        if elector is not None:
            elector.release()


def _state_configmap(options: TailOptions, elector: LeaderElector | None) -> StateConfigMap | None:
    """The checkpoint's ConfigMap copy; with leader election, written only while the Lease is held."""
    if options.checkpoint_configmap is None:
        return None
    namespace, name = options.checkpoint_configmap
    remote = StateConfigMap(
        namespace,
        name,
        writer=elector.config.identity if elector is not None else default_identity(),
        may_write=(lambda: elector.is_leader) if elector is not None else None,
    )
    try:
        remote.api  # noqa: B018 - the client is built here, so a missing kubeconfig is a one-line error
    except Exception as exc:
        raise SettingsError(f"--checkpoint-configmap: no Kubernetes API access: {exc}") from None
    return remote


def _run_tail(options: TailOptions, elector: LeaderElector | None = None) -> int:
    state = Path(options.state)
    remote = _state_configmap(options, elector)
    try:
        store = CheckpointStore(state, remote=remote)
    except StateLocked as exc:
        raise SettingsError(str(exc)) from None
    except OSError as exc:
        raise SettingsError(f"--state {state}: {exc.strerror or exc}") from None
    try:
        streams = _stream_follower(options)
        allowlist = _allowlist_source(options)
        sinks = open_sinks(options.sinks, cluster_name=options.cluster_name, output=options.output)
    except BaseException:
        store.close()
        raise
    baseline = Baseline(state / BASELINE_FILE, days=options.baseline_days) if options.baseline_days else None
    metrics = TailMetrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
    # Before the Tailer writes its first checkpoint, which tells a supervisor (or a test) that
    # it has started: a SIGTERM from then on stops it as documented (drain, checkpoint, exit 0).
    stop, restore = make_stop_event([signal.SIGTERM, signal.SIGINT])
    try:
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
            Detector(allowlist.current, config=options.detector, baseline=baseline),
            sinks,
            store=store,
            baseline=baseline,
            streams=streams,
        )
        metrics.watch(tailer, allowlist.live.status)
        logger.info(
            "tailing",
            **fields(
                path=options.path or None,
                sources=[spec.label for spec in options.sources],
                state=options.state,
                sinks=[s.label for s, _ in sinks],
            ),
        )
        tailer.run(stop)
    finally:
        restore()
        allowlist.stop()
    return 0
