"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

Sources that must have one reader (CloudWatch: one position per stream) run as two replicas;
only the holder of the Lease reads. The protocol is client-go's (``tools/leaderelection``):

- **acquire**: every ``retry_period`` (with up to 1.2x jitter) get the Lease; create it when
  absent; take it when its holder is empty or *this* process has not seen its record change for
  ``leaseDurationSeconds`` (the time is this process's own monotonic clock from when it first
  saw the current ``resourceVersion``, never the ``renewTime`` written by another node: clock
  skew between nodes cannot hand the lease out early). Taking it from another holder adds one
  to ``leaseTransitions`` and sets ``acquireTime``.
- **renew**: every ``retry_period`` the holder writes ``renewTime``; a round that has not
  succeeded within ``renew_deadline`` means the lease is lost.
- Every write is an update carrying the ``resourceVersion`` that was read (optimistic
  concurrency): of two candidates taking an expired lease, the apiserver lets one win (409 for
  the other).
- **release** (client-go's ``ReleaseOnCancel``), after a clean stop: the holder empties
  ``holderIdentity`` and sets ``leaseDurationSeconds: 1`` so a standby takes over at once.

A holder that loses the lease must stop before anyone else can start: with the defaults
(15 s / 10 s / 2 s) it gives up at most ``retry_period + renew_deadline`` = 12 s after its last
renewal, and a standby takes over no sooner than 15 s after it saw that renewal. What "give
up" means is the caller's ``on_lost`` (``tail`` ends the process, the OnStoppedLeading
convention: the pod restarts as a standby).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from webhook.errors import SetupError
from webhook.kube.client import configured_api_client
from webhook.logs import fields

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_RENEW_DEADLINE",
    "DEFAULT_RETRY_PERIOD",
    "LeaderElectionConfig",
    "LeaderElector",
    "coordination_api",
    "default_identity",
]

logger = logging.getLogger(__name__)

DEFAULT_LEASE_DURATION: Final = 15
DEFAULT_RENEW_DEADLINE: Final = 10.0
DEFAULT_RETRY_PERIOD: Final = 2.0
JITTER_FACTOR: Final = 1.2
"""client-go's ``JitterFactor``: a wait of ``retry_period`` becomes up to 2.2x that."""


def default_identity() -> str:
    """``$POD_NAME`` (the chart sets it), else ``hostname_<random>`` so two local processes differ."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaderElectionConfig:
    """Where the Lease is and client-go's three durations (its defaults: 15 s, 10 s, 2 s)."""

    namespace: str
    name: str
    identity: str
    lease_duration: int = DEFAULT_LEASE_DURATION
    """Whole seconds: the Lease's ``leaseDurationSeconds`` is an integer."""
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        # client-go's NewLeaderElector checks the same two inequalities.
        if not self.lease_duration > self.renew_deadline:
            raise SetupError(
                f"leader election: the lease duration ({self.lease_duration} s) must exceed "
                f"the renew deadline ({self.renew_deadline} s)"
            )
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise SetupError(
                f"leader election: the renew deadline ({self.renew_deadline} s) must exceed "
                f"{JITTER_FACTOR} x the retry period ({self.retry_period} s)"
            )

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"


def coordination_api() -> Any:
    """A CoordinationV1Api configured as :func:`~webhook.kube.client.api_client` is, minus urllib3's
    retries: a renewal's timeout must bound the whole call (four tries of a hung PUT would run
    past the lease), and the loops here are the retries."""
    from kubernetes import client

    return client.CoordinationV1Api(configured_api_client(retries=False))


def _micro_time(moment: float) -> str:
    """A ``MicroTime`` (RFC 3339, microseconds, UTC) as the apiserver writes it."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_micro(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value) if value else None


def _spec(spec: Any) -> dict[str, Any]:
    """A read Lease's spec (the client's V1LeaseSpec) as the camelCase record this module writes."""
    if spec is None:
        return {}
    return {
        "holderIdentity": spec.holder_identity or "",
        "leaseDurationSeconds": spec.lease_duration_seconds or 0,
        "acquireTime": _as_micro(spec.acquire_time),
        "renewTime": _as_micro(spec.renew_time),
        "leaseTransitions": spec.lease_transitions or 0,
    }


class LeaderElector:
    """One candidate for one Lease: :meth:`acquire`, then :meth:`start_renewing`, then :meth:`release`.

    ``api`` is a ``CoordinationV1Api``; ``clock`` is monotonic seconds (observation times),
    ``wall`` is epoch seconds (what is written in ``acquireTime``/``renewTime``).
    """

    def __init__(
        self,
        config: LeaderElectionConfig,
        *,
        api: Any,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.api = api
        self._clock = clock
        self._wall = wall
        self._observed_version: str | None = None
        self._observed_spec: dict[str, Any] = {}
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: tuple[int | None, str] | None = None
        """(HTTP status or None, reason) of the last round that failed on the API, else None."""
        self._deadline: float | None = None

    # -- what this process has observed ----------------------------------------------------
    @property
    def leader(self) -> str:
        """The holder in the last record observed ('' when none)."""
        holder: str = self._observed_spec.get("holderIdentity") or ""
        return holder

    @property
    def is_leader(self) -> bool:
        return self.leader == self.config.identity

    def _valid(self, now: float) -> bool:
        duration = int(self._observed_spec.get("leaseDurationSeconds") or 0)
        return self._observed_at + duration > now

    def _timeout(self) -> float:
        """Seconds an API call may take: what is left of a renewal's deadline, else the deadline.

        A renewal round is three calls at most; none may outlive the deadline, or a holder stuck
        on a hung apiserver would notice its loss only after a standby had taken over.
        """
        if self._deadline is None:
            return self.config.renew_deadline
        return max(0.05, self._deadline - self._clock())

    def _observe(self, version: str, spec: dict[str, Any]) -> None:
        self._observed_version = version
        self._observed_spec = spec
        self._observed_at = self._clock()

    # -- one round ---------------------------------------------------------------------------
    def _record(self, *, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        now = _micro_time(self._wall())
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": self.config.lease_duration,
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _body(self, spec: dict[str, Any], version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if version is not None:
            metadata["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _write(self, spec: dict[str, Any], version: str | None) -> None:
        """Create (``version`` None) or update with optimistic concurrency; observe what was written."""
        timeout = self._timeout()
        ns, name = self.config.namespace, self.config.name
        if version is None:
            written = self.api.create_namespaced_lease(ns, self._body(spec, None), _request_timeout=timeout)
        else:
            written = self.api.replace_namespaced_lease(
                name, ns, self._body(spec, version), _request_timeout=timeout
            )
        self._observe(written.metadata.resource_version, spec)

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's ``tryAcquireOrRenew``; True when this process holds the lease.

        API errors (conflict, timeout, refusal) are a failed round, logged at debug level; the
        loops decide what a failed round means.
        """
        try:
            won = self._round()
        except Exception as exc:
            self.last_error = (getattr(exc, "status", None), str(getattr(exc, "reason", None) or exc)[:300])
            logger.debug(
                "lease round failed",
                **fields(lease=self.config.lease, status=self.last_error[0], error=self.last_error[1]),
            )
            return False
        self.last_error = None
        return won

    def _round(self) -> bool:
        now = self._clock()
        # 1. Fast path: the holder renews on the record it last wrote, without a read.
        if self.is_leader and self._valid(now) and self._observed_version is not None:
            spec = self._record(
                acquire_time=self._observed_spec.get("acquireTime"),
                transitions=int(self._observed_spec.get("leaseTransitions") or 0),
            )
            try:
                self._write(spec, self._observed_version)
                return True
            except Exception as exc:
                logger.debug(
                    "lease fast renewal failed; reading it",
                    **fields(lease=self.config.lease, status=getattr(exc, "status", None)),
                )
        # 2. Read it, or create it.
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self.api.read_namespaced_lease(
                self.config.name, self.config.namespace, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._write(self._record(acquire_time=None, transitions=0), None)
            return True
        version: str = lease.metadata.resource_version
        spec = _spec(lease.spec)
        # 3. A record seen for the first time starts this process's own clock on it.
        if version != self._observed_version:
            self._observe(version, spec)
        if self.leader and not self.is_leader and self._valid(self._clock()):
            return False
        # 4. Take it (or renew on the slow path), carrying the version read.
        transitions = int(spec.get("leaseTransitions") or 0)
        if self.is_leader:
            new = self._record(acquire_time=spec.get("acquireTime"), transitions=transitions)
        else:
            new = self._record(acquire_time=None, transitions=transitions + 1)
        self._write(new, version)
        return True

    # -- the loops ------------------------------------------------------------------------------
    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the lease (True) or ``stop`` is set (False)."""
        stop = stop or self._stop
        logger.info("waiting for the lease", **fields(lease=self.config.lease, identity=self.config.identity))
        reported: str | None = None
        reported_error: tuple[int | None, str] | None = None
        while not stop.is_set():
            if self.try_acquire_or_renew():
                logger.info(
                    "lease acquired",
                    **fields(
                        lease=self.config.lease,
                        identity=self.config.identity,
                        transitions=int(self._observed_spec.get("leaseTransitions") or 0),
                    ),
                )
                return True
            if self.last_error is not None and self.last_error != reported_error:
                # Forbidden, unreachable, ...: said once per distinct error, then retried quietly.
                reported_error = self.last_error
                logger.warning(
                    "lease unavailable; retrying",
                    **fields(lease=self.config.lease, status=self.last_error[0], error=self.last_error[1]),
                )
            elif self.leader and self.leader != reported:
                reported = self.leader
                logger.info("lease held by another", **fields(lease=self.config.lease, holder=reported))
            wait = self.config.retry_period * (1 + random.random() * JITTER_FACTOR)
            stop.wait(wait)
        return False

    def _renew_round(self) -> bool:
        """client-go's renew: retry every ``retry_period`` until ``renew_deadline``; False = lost."""
        deadline = self._deadline = self._clock() + self.config.renew_deadline
        try:
            while not self._stop.is_set():
                if self.try_acquire_or_renew() and self._clock() < deadline:
                    return True
                if self._clock() + self.config.retry_period >= deadline:
                    return False
                self._stop.wait(self.config.retry_period)
            return True
        finally:
            self._deadline = None

    def _renew_loop(self, on_lost: Callable[[], None]) -> None:
        while not self._stop.wait(self.config.retry_period):
            if not self._renew_round():
                logger.error(
                    "lease lost; stopping",
                    **fields(
                        lease=self.config.lease,
                        identity=self.config.identity,
                        holder=self.leader,
                        renewDeadline=self.config.renew_deadline,
                    ),
                )
                on_lost()
                return

    def start_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew on a daemon thread until :meth:`release`; ``on_lost`` runs there when renewal fails."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._renew_loop, args=(on_lost,), name="lease-renew", daemon=True
            )
            self._thread.start()

    def release(self) -> bool:
        """Stop renewing and hand the lease back (client-go's ``ReleaseOnCancel``); True when done.

        Call it only after reading has stopped and its state is saved and unlocked: a standby
        takes over at once.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.config.renew_deadline + self.config.retry_period)
        if not self.is_leader or self._observed_version is None:
            return True
        now = _micro_time(self._wall())
        spec = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": int(self._observed_spec.get("leaseTransitions") or 0),
        }
        with contextlib.suppress(Exception):
            self._write(spec, self._observed_version)
            logger.info("lease released", **fields(lease=self.config.lease, identity=self.config.identity))
            return True
        logger.warning("lease not released; it expires", **fields(lease=self.config.lease))
        return False
