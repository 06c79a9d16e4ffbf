"""``ua-sentinel tail``: follow the apiserver's audit log, detect, deliver, checkpoint.

Delivery guarantee (at least once, duplicates recognisable): the checkpoint in ``--state``
holds the file identity and offset, the Detector's open windows (:meth:`Detector.snapshot`),
and, per sink, every finding from the lines before that offset that the sink has not
acknowledged. It is replaced atomically and only as a whole, so after ``kill -9`` at any
moment a restart redelivers the saved backlog and re-reads the lines after the offset: the
restored Detector derives the same findings with the same ``event.id`` and ``event.sequence``.
A finding is therefore delivered at least once; one delivered just before the crash may be
delivered again, identical, and sinks can drop it (the file sink does).

Windows close in event time, as in ``replay``. When the tailer is at the end of a *live* log
(the newest event is less than ``grace`` seconds old) it also closes windows older than
``window + grace`` by the wall clock, so a quiet attacker's totals still come out; a late event
of a closed window would then open a new one (replay would have folded it), which ``grace``
makes unlikely. On startup without a checkpoint reading starts at the end of the live file
(``from_start`` reads the rotated backups and the live file from their beginning).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.baseline import Baseline
from webhook.detect.detector import Detector
from webhook.inputs.formats import Format
from webhook.inputs.lines import LineDecoder
from webhook.logs import fields
from webhook.sinks.base import Sink
from webhook.sinks.outbox import DEFAULT_MAX_BACKLOG, Outbox, restore_findings
from webhook.sinks.spec import SinkSpec
from webhook.tail.checkpoint import Checkpoint, CheckpointStore
from webhook.tail.follow import Follower
from webhook.tail.logfiles import Batch
from webhook.tail.queues import QueueFollower
from webhook.tail.streams import StreamFollower

__all__ = ["DEFAULT_GRACE", "TailConfig", "TailStatus", "Tailer", "make_stop_event"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 30.0
FINAL_COPY_RETRIES = (0.2, 1.0)
"""Seconds before each retry of a last checkpoint whose ConfigMap copy failed (a conflict re-reads)."""
MAX_LOGGED_MALFORMED = 20


@dataclass(frozen=True, kw_only=True, slots=True)
class TailConfig:
    path: str
    state_dir: str
    fmt: Format = "k8s"
    from_start: bool = False
    poll_interval: float = 0.2
    checkpoint_interval: float = 2.0
    grace: float = DEFAULT_GRACE
    max_backlog: int = DEFAULT_MAX_BACKLOG
    drain_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class TailStatus:
    """What the tailer reports (metrics). Counts are since this process started: the running
    totals, which survive restarts in the checkpoint, minus those it resumed with."""

    lines: int
    bytes: int
    malformed: int
    rotations: int
    unreadable: int
    lost: int
    checkpoint_errors: int
    findings: dict[str, int]
    """By rule name."""
    checkpoint_lag_bytes: int
    """Bytes of the current file after the last checkpoint (re-read after a crash, or unread)."""
    checkpoint_lag_seconds: float
    event_lag_seconds: float
    """Wall clock minus the newest event time read; 0 before the first event."""
    open_windows: int


@dataclass(slots=True)
class _Totals:
    """Running counters, saved in the checkpoint so they survive restarts."""

    values: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.values[name] += n


class Tailer:
    """One tail run: :meth:`run` until ``stop`` is set, then drain sinks and checkpoint."""

    def __init__(
        self,
        config: TailConfig,
        detector: Detector,
        sinks: Sequence[tuple[SinkSpec, Sink]],
        *,
        store: CheckpointStore,
        baseline: Baseline | None = None,
        streams: StreamFollower | QueueFollower | None = None,
    ) -> None:
        """``streams``: read cloud sources instead of ``config.path`` (positions restored here)."""
        self.config = config
        self.streams = streams
        self.detector = detector
        self.baseline = baseline
        self.store = store
        self.totals = _Totals()
        self._resumed: dict[str, int] = {}
        """The totals restored from the checkpoint: :meth:`status` counts from them."""
        self._lag_bytes = 0
        self._follow_seen: dict[str, int] = {}
        self._live = False
        """The last lines read were fresh (newest event within ``grace`` of the wall clock)."""
        self._malformed_logged = 0
        self._decoder = LineDecoder(config.fmt, parse_event, lambda _line, reason: self._malformed(reason))
        self.outboxes = [
            Outbox(
                spec,
                sink,
                max_backlog=config.max_backlog,
                on_failure=self._sink_failed,
                on_drop=self._sink_dropped,
            )
            for spec, sink in sinks
        ]
        checkpoint = store.load()
        self.follower: Follower | None = None
        if checkpoint is None and streams is not None:
            streams.restore(None, from_start=config.from_start or store.lost)
        elif checkpoint is None:
            # After a lost checkpoint the safe position is the beginning, not the end of the log.
            self.follower = Follower(config.path, from_start=config.from_start or store.lost)
        else:
            self._restore(checkpoint)
        self._checkpointed_at = 0.0
        self._saved_key: tuple[Any, ...] = ()
        self._checkpoint_offset = 0
        self._checkpoint_error: str | None = None
        self.checkpoint()  # a first start records where it starts, before reading anything

    # -- lifecycle ------------------------------------------------------------------------
    def _restore(self, checkpoint: Checkpoint) -> None:
        self.detector.restore(checkpoint.detector)
        if self.baseline is not None and checkpoint.baseline:
            self.baseline.merge(checkpoint.baseline)  # committed with the first checkpoint below
        self.totals.values.update(checkpoint.stats)
        self._resumed = dict(self.totals.values)
        if self.streams is not None:
            # A state directory used by a file tailer before: the sources start afresh.
            self.streams.restore(checkpoint.streams or None, from_start=self.config.from_start)
        else:
            self.follower = Follower(
                self.config.path, checkpoint.position, from_start=checkpoint.position is None
            )
        known = {outbox.spec.key for outbox in self.outboxes}
        for outbox in self.outboxes:
            saved = restore_findings(checkpoint.backlog.get(outbox.spec.key, []))
            if saved:
                logger.info(
                    "redelivering the checkpoint's backlog",
                    **fields(sink=outbox.spec.label, findings=len(saved)),
                )
                outbox.put(saved)
        for key, items in checkpoint.backlog.items():
            if key not in known and items:
                logger.error(
                    "checkpoint backlog of a sink no longer configured: findings dropped",
                    **fields(sink=key, findings=len(items)),
                )
        position = checkpoint.position
        logger.info(
            "resuming from checkpoint",
            **fields(
                path=position.path if position else None,
                offset=position.offset if position else None,
                streams=sum(len(s.get("streams") or {}) for s in checkpoint.streams.values()),
            ),
        )

    @property
    def reader(self) -> Follower | StreamFollower | QueueFollower:
        """What the loop reads: the file follower or the stream follower."""
        reader = self.streams if self.streams is not None else self.follower
        assert reader is not None
        return reader

    def run(self, stop: threading.Event) -> None:
        """Read, detect and deliver until ``stop`` is set; then drain and write a last checkpoint.

        A checkpoint is written only between batches: if reading, detecting or delivering a batch
        raises, the last one stays (it is before that batch), so a restart reads the batch again
        and no finding of it is passed over undelivered.
        """
        between_batches = False
        try:
            while not stop.is_set():
                batch = self.reader.read()
                if batch.lines or batch.consumed:
                    self._deliver(self._detect(batch))
                elif self.reader.idle:
                    self._deliver(self._close_by_wall_clock())
                if time.time() - self._checkpointed_at >= self.config.checkpoint_interval:
                    self.checkpoint(force=False)
                self._measure_lag()
                if not (batch.lines or batch.consumed):
                    stop.wait(self.config.poll_interval)
            between_batches = True
        finally:
            self.shutdown(checkpoint=between_batches)

    def shutdown(self, *, checkpoint: bool = True) -> None:
        """Give sinks ``drain_timeout`` to empty their queues, checkpoint what is left, close.

        ``checkpoint`` False (stopped by an error in a batch): the last checkpoint is kept.
        """
        deadline = time.monotonic() + self.config.drain_timeout
        for outbox in self.outboxes:
            outbox.drain(max(0.0, deadline - time.monotonic()))
        if checkpoint:
            with contextlib.suppress(OSError):
                self.checkpoint()
            # A ConfigMap copy refused at the last moment (a conflict, a blip) would hand the next
            # leader an older checkpoint (repeats): try again, briefly, before the Lease goes.
            for wait in FINAL_COPY_RETRIES if self.store.remote is not None else ():
                if self._checkpoint_error is None:
                    break
                time.sleep(wait)
                with contextlib.suppress(OSError):
                    self.checkpoint()
        else:
            logger.error(
                "stopped by an error: the last checkpoint is kept, a restart reads on from it",
                **fields(state=self.config.state_dir),
            )
        for outbox in self.outboxes:
            outbox.close()
        self.reader.close()
        if self.baseline is not None:
            self.baseline.close()
        self.store.close()

    # -- one batch ------------------------------------------------------------------------
    def _malformed(self, reason: str) -> None:
        self.totals.add("malformed")
        self._malformed_logged += 1
        if self._malformed_logged <= MAX_LOGGED_MALFORMED or self._malformed_logged % 1000 == 0:
            logger.warning(
                "malformed audit input skipped",
                **fields(malformed=self.totals.values["malformed"], reason=reason),
            )

    def _detect(self, batch: Batch) -> list[Finding]:
        self.totals.add("lines", len(batch.lines))
        self.totals.add("bytes", batch.consumed)
        for _ in range(batch.overlong):
            self._malformed("line longer than the 4 MiB limit and not readable as an audit event, skipped")
        for reason in batch.malformed:
            self._malformed(reason)
        self.totals.add("skipped_records", batch.skipped)
        findings: list[Finding] = []
        skipped = self._decoder.skipped
        for event in self._decoder.lines_of(batch.lines, self.detector.prefilter):
            findings.extend(self.detector.process(event))
            if self.detector.last_rejection is not None:
                self._malformed(f"event skipped: {self.detector.last_rejection}")
        self.totals.add("skipped_records", self._decoder.skipped - skipped)
        watermark = self.detector.watermark
        if batch.lines and watermark is not None:
            self._live = time.time() - watermark <= self.config.grace
        return findings

    def _close_by_wall_clock(self) -> list[Finding]:
        if not self._live:
            return []  # the lines read last were old (catching up, or replaying history): event time only
        return self.detector.close_expired(time.time() - self.config.grace)

    def _deliver(self, findings: list[Finding]) -> None:
        if not findings:
            return
        for finding in findings:
            self.totals.add(f"findings.{finding.rule.name}")
        for outbox in self.outboxes:
            outbox.put(findings)

    # -- checkpoint and metrics -----------------------------------------------------------
    def _sync_follow_stats(self) -> None:
        if self.follower is None:
            return
        stats = self.follower.stats
        for name in ("rotations", "truncations", "unreadable", "lost"):
            delta = getattr(stats, name) - self._follow_seen.get(name, 0)
            if delta <= 0:
                continue
            self._follow_seen[name] = getattr(stats, name)
            self.totals.add(name, delta)

    def _state_key(self) -> tuple[Any, ...]:
        """Changes whenever a checkpoint would differ (so an idle tailer does not fsync)."""
        if self.follower is None:
            assert self.streams is not None
            where: tuple[Any, ...] = self.streams.state_key()
            follow: tuple[int, ...] = ()
        else:
            position = self.follower.position()
            where = (position.path, position.ino, position.offset, position.fp)
            stats = self.follower.stats
            follow = (stats.rotations, stats.truncations, stats.unreadable, stats.lost)
        return (
            where,
            self.detector.stats.events,
            self.detector.stats.findings,
            tuple((o.delivered, o.dropped, len(o)) for o in self.outboxes),
            tuple(sorted(self.totals.values.items())),
            follow,
        )

    def checkpoint(self, *, force: bool = True) -> None:
        """Save position + detector + backlog atomically; the baseline's new sightings go in it too
        and are committed to SQLite after it, so the baseline is never ahead of the checkpoint.

        With ``force`` False nothing is written when nothing changed since the last one.
        """
        key = self._state_key()
        if not force and key == self._saved_key:
            self._checkpointed_at = time.time()
            return
        try:
            self._save()
        except (OSError, sqlite3.Error) as exc:
            # A full or failing disk under --state: keep reading and delivering (the sinks do not
            # depend on it), retry every checkpoint_interval. A crash now resumes from the last
            # checkpoint written, so lines are read again and nothing is lost.
            self._checkpointed_at = time.time()
            self.totals.add("checkpoint_errors")
            if str(exc) != self._checkpoint_error:
                logger.error(
                    "cannot write the checkpoint; still reading and delivering, retrying; a restart now "
                    "would read again from the last checkpoint written",
                    **fields(
                        state=self.config.state_dir, error=str(exc), retryIn=self.config.checkpoint_interval
                    ),
                )
            self._checkpoint_error = str(exc)
            return
        if self._checkpoint_error is not None:
            logger.info("checkpoint written again", **fields(state=self.config.state_dir))
            self._checkpoint_error = None

    def _save(self) -> None:
        self._sync_follow_stats()
        # The key first: a sink thread acknowledging findings while the checkpoint is built and
        # fsynced must make the next key differ, or that checkpoint's backlog stays on disk.
        key = self._state_key()
        position = self.follower.position() if self.follower is not None else None
        checkpoint = Checkpoint(
            position=position,
            streams=self.streams.positions() if self.streams is not None else {},
            detector=self.detector.snapshot(),
            backlog={o.spec.key: [f.to_dict() for f in o.pending()] for o in self.outboxes},
            stats=dict(self.totals.values),
            baseline=self.baseline.pending() if self.baseline is not None else [],
        )
        self.store.save(checkpoint)
        if isinstance(self.streams, QueueFollower):
            self.streams.committed()  # durable now: the messages it counted may be acknowledged
        if self.baseline is not None:
            self.baseline.flush()  # after the checkpoint, which holds the same rows (never ahead)
        self._saved_key = key
        self._checkpointed_at = checkpoint.written_at
        self._checkpoint_offset = position.offset if position else 0

    def _measure_lag(self) -> None:
        """On the tailer's thread, which alone may touch the follower's open file."""
        if self.follower is None:
            return
        position = self.follower.position()
        offset = position.offset if position else 0
        self._lag_bytes = max(0, offset - self._checkpoint_offset) + self.follower.pending_bytes()

    def status(self) -> TailStatus:
        """Safe from any thread (a metrics scrape): copies, no file access."""
        totals = dict(self.totals.values)  # one C call: atomic while the tailer thread adds
        since = {name: value - self._resumed.get(name, 0) for name, value in totals.items()}
        watermark = self.detector.watermark
        return TailStatus(
            lines=since.get("lines", 0),
            bytes=since.get("bytes", 0),
            malformed=since.get("malformed", 0),
            rotations=since.get("rotations", 0),
            unreadable=since.get("unreadable", 0),
            lost=since.get("lost", 0),
            checkpoint_errors=since.get("checkpoint_errors", 0),
            findings={
                name.removeprefix("findings."): value
                for name, value in since.items()
                if name.startswith("findings.")
            },
            checkpoint_lag_bytes=self._lag_bytes,
            checkpoint_lag_seconds=max(0.0, time.time() - self._checkpointed_at),
            event_lag_seconds=max(0.0, time.time() - watermark) if watermark is not None else 0.0,
            open_windows=self.detector.open_windows,
        )

    def _sink_failed(self, label: str) -> None:
        self.totals.add("sink_failures")

    def _sink_dropped(self, label: str, count: int) -> None:
        self.totals.add("dropped", count)


def make_stop_event(signals: Sequence[int]) -> tuple[threading.Event, Callable[[], None]]:
    """A stop event set by ``signals`` (SIGTERM, SIGINT); returns it and a function restoring handlers."""
    import signal

    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        logger.info("stopping on a signal", **fields(signal=signal.Signals(signum).name))
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return stop, restore
