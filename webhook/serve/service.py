"""``ua-sentinel serve``: one settings object, the wiring of the components, and the run.

Start-up order: certificate files (a bad pair is fatal: there is nothing to serve), then the
allowlist (a broken file is fatal at start; a ConfigMap is watched and ``/readyz`` stays 503
until it loads), then the app. Shutdown (SIGTERM) stops accepting, lets in-flight requests
finish, stops the watchers and drains the detector queue into the sink.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from webhook.core import useragent
from webhook.core.allowlist import MODES
from webhook.core.live_allowlist import DEFAULT_POLL_INTERVAL
from webhook.detect.detector import Detector
from webhook.logs import fields
from webhook.serve import admission
from webhook.serve.feed import DEFAULT_QUEUE_EVENTS, DetectorFeed
from webhook.serve.join import DEFAULT_MAX_ENTRIES, DEFAULT_TTL, RequestIndex
from webhook.serve.metrics import Metrics, StateSources
from webhook.serve.routes import (
    DEFAULT_JOIN_WAIT,
    DEFAULT_MAX_AUDIT_BODY_BYTES,
    DEFAULT_MAX_BODY_BYTES,
    AppState,
    AuditAuth,
    create_app,
)
from webhook.serve.tls import (
    DEFAULT_CERT_INTERVAL,
    DEFAULT_HANDSHAKE_TIMEOUT,
    CertificateReloader,
    TLSFiles,
    run_uvicorn,
)
from webhook.sinks.base import Sink
from webhook.sinks.fanout import FanOutSink
from webhook.startup import SettingsError, allowlist_flags, open_allowlist, open_sinks

__all__ = ["DEFAULT_PORT", "ServeSettings", "Service", "build_settings", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8443
DEFAULT_HOST: Final = "127.0.0.1"
GC_THRESHOLD: Final = (10_000, 10, 10)
"""CPython's cyclic GC thresholds while serving (its default first threshold is 700)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeSettings:
    tls: TLSFiles
    allowlist_file: Path | None = None
    allowlist_configmap: tuple[str, str] | None = None
    """(namespace, name); the ConfigMap's key ``allowlist.yaml``."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    policy: admission.Policy = field(default_factory=admission.Policy)
    join_wait: float = DEFAULT_JOIN_WAIT
    join_ttl: float = DEFAULT_TTL
    join_max_entries: int = DEFAULT_MAX_ENTRIES
    webhook_name: str = "ua-sentinel"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_audit_body_bytes: int = DEFAULT_MAX_AUDIT_BODY_BYTES
    cert_interval: float = DEFAULT_CERT_INTERVAL
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    allowlist_interval: float = DEFAULT_POLL_INTERVAL
    detector_queue: int = DEFAULT_QUEUE_EVENTS
    audit_insecure: bool = False
    """Accept ``/audit`` without a client certificate (only when no CA guards it)."""
    sinks: tuple[str, ...] = ("stdout",)
    """Where findings go: ``stdout`` | ``file:PATH`` | ``k8s-events[:NS]`` | ``http:URL`` | ``slack:URL``
    | ``falcosidekick:URL`` | ``otlp:URL``."""
    cluster_name: str | None = None
    """``orchestrator.cluster.name`` on every finding (``--cluster-name``)."""


class Service:
    """The components of one ``serve`` process; :meth:`start`/:meth:`stop` run in the app's lifespan."""

    def __init__(self, settings: ServeSettings, *, sink: Sink | None = None) -> None:
        self.settings = settings
        try:
            self.certificates = CertificateReloader(settings.tls, interval=settings.cert_interval)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        self.allowlist_source = open_allowlist(
            settings.allowlist_file, settings.allowlist_configmap, interval=settings.allowlist_interval
        )
        self.allowlist = self.allowlist_source.live
        self.index = RequestIndex(ttl=settings.join_ttl, max_entries=settings.join_max_entries)
        self.metrics = Metrics(settings.policy.mode)
        detector = Detector(self.allowlist.current_or_fallback)
        self.sinks: FanOutSink | None = None
        if sink is None:
            self.sinks = sink = FanOutSink(
                open_sinks(settings.sinks, cluster_name=settings.cluster_name, output="json")
            )
        self.feed = DetectorFeed(detector, sink, max_events=settings.detector_queue)
        self.metrics.watch(
            StateSources(
                index=lambda: (self.index.stats, len(self.index)),
                feed=lambda: (self.feed.stats, self.feed.pending),
                allowlist=self.allowlist.status,
                certificate=self.certificates.state,
                outboxes=self.sinks.outboxes if self.sinks is not None else [],
                caches=lambda: {
                    "useragent_parse": useragent.parse.stats(),
                    "allowlist_verdicts": self.allowlist.current_or_fallback().cache_stats(),
                    **admission.cache_stats(),
                },
            )
        )
        tls = settings.tls
        self.state = AppState(
            policy=settings.policy,
            index=self.index,
            allowlist=self.allowlist,
            feed=self.feed,
            metrics=self.metrics,
            certificate=self.certificates.details,
            join_wait=settings.join_wait,
            max_body_bytes=settings.max_body_bytes,
            max_audit_body_bytes=settings.max_audit_body_bytes,
            validate_requires="client" if tls.client_ca else None,
            audit_auth=_audit_auth(settings),
        )

    async def start(self) -> None:
        self.feed.start()
        self.certificates.start()
        self.allowlist_source.start()

    async def stop(self) -> None:
        await self.certificates.stop()
        self.allowlist_source.stop()
        await asyncio.to_thread(self.feed.close)

    def app(self) -> Any:
        return create_app(self.state, on_startup=self.start, on_shutdown=self.stop)


def _audit_auth(settings: ServeSettings) -> AuditAuth:
    """Who may POST ``/audit``: a CA when one is given, else anyone only when asked for."""
    tls = settings.tls
    if tls.audit_client_ca:
        return "audit-client-ca"
    if tls.client_ca:
        return "client-ca"
    return "insecure" if settings.audit_insecure else "refused"


def _warn_audit_auth(auth: AuditAuth) -> None:
    if auth == "insecure":
        logger.warning(
            "/audit accepts unauthenticated audit events (--audit-insecure): anyone who reaches the "
            "port can forge findings and lend an agent to their own writes",
            **fields(auditAuth=auth),
        )
    elif auth == "refused":
        logger.warning(
            "/audit refuses every request (403): no --audit-client-ca or --client-ca; pass one "
            "(or --audit-insecure) to receive audit events, without which verdicts are unknown",
            **fields(auditAuth=auth),
        )


def _tune_gc() -> None:
    """Fewer young-generation GC passes, and none over what start-up left alive.

    ``/audit`` allocates about ten GC-tracked objects per event (400 per EventList); with the
    default threshold the collector ran every ~70 events and took most of the handler's time
    (bench/RESULTS.md, item 3: about 1.5x the events/s with these settings). Objects alive after
    start-up (modules, the app, the allowlist) are frozen: they live for the whole process.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def serve(settings: ServeSettings) -> None:
    """Build everything and serve until SIGTERM/SIGINT. Raises :class:`SettingsError` at start-up."""
    service = Service(settings)
    _tune_gc()
    status = service.allowlist.status()
    logger.info(
        "starting",
        **fields(
            pid=os.getpid(),
            mode=settings.policy.mode,
            webhook=settings.webhook_name,
            allowlist=status.source
            or (
                f"configmap {'/'.join(settings.allowlist_configmap)}"
                if settings.allowlist_configmap
                else None
            ),
            allowlistHash=status.hash,
            joinWait=settings.join_wait,
            clientCA=str(settings.tls.client_ca) if settings.tls.client_ca else None,
            auditClientCA=str(settings.tls.audit_client_ca) if settings.tls.audit_client_ca else None,
            auditAuth=service.state.audit_auth,
        ),
    )
    _warn_audit_auth(service.state.audit_auth)

    def listening(port: int) -> None:
        logger.info(
            "listening", **fields(host=settings.host, port=port, url=f"https://{settings.host}:{port}")
        )

    asyncio.run(
        run_uvicorn(
            service.app(),
            service.certificates,
            host=settings.host,
            port=settings.port,
            handshake_timeout=settings.handshake_timeout,
            ready=listening,
        )
    )


def build_settings(
    *,
    tls_cert: str,
    tls_key: str,
    client_ca: str | None = None,
    audit_client_ca: str | None = None,
    audit_insecure: bool = False,
    allowlist: str | None = None,
    allowlist_configmap: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    mode: str = "warn",
    join_wait: float = DEFAULT_JOIN_WAIT,
    join_ttl: float = DEFAULT_TTL,
    exempt_users: list[str] | None = None,
    exempt_groups: list[str] | None = None,
    webhook_name: str = "ua-sentinel",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cert_interval: float = DEFAULT_CERT_INTERVAL,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    allowlist_interval: float = DEFAULT_POLL_INTERVAL,
    sinks: list[str] | None = None,
    cluster_name: str | None = None,
) -> ServeSettings:
    """Command-line values → :class:`ServeSettings`; :class:`SettingsError` names the bad flag.

    ``exempt_groups`` replaces the default exempt groups when given (so a cluster can drop one).
    """
    allowlist_file, configmap = allowlist_flags(allowlist, allowlist_configmap)
    if audit_insecure and (audit_client_ca or client_ca):
        flag = "--audit-client-ca" if audit_client_ca else "--client-ca"
        raise SettingsError(f"--audit-insecure contradicts {flag}, which guards /audit; give one of them")
    if mode not in MODES:
        raise SettingsError(f"--mode must be one of {', '.join(MODES)}")
    checks = (
        ("--join-wait", join_wait >= 0 and join_wait <= 30, "between 0 and 30 seconds"),
        ("--join-ttl", join_wait < join_ttl <= 3600, "longer than --join-wait and at most 3600 seconds"),
        ("--port", 0 <= port <= 65535, "a TCP port (0 picks a free one)"),
        ("--max-body-bytes", max_body_bytes >= 1024, "at least 1024"),
        ("--cert-reload-interval", cert_interval > 0, "positive"),
        ("--tls-handshake-timeout", 0 < handshake_timeout <= 600, "positive and at most 600 seconds"),
        ("--allowlist-reload-interval", allowlist_interval > 0, "positive"),
    )
    for flag, ok, expected in checks:
        if not ok:
            raise SettingsError(f"{flag} must be {expected}")
    groups = admission.DEFAULT_EXEMPT_GROUPS if exempt_groups is None else tuple(exempt_groups)
    return ServeSettings(
        tls=TLSFiles(
            cert=Path(tls_cert),
            key=Path(tls_key),
            client_ca=Path(client_ca) if client_ca else None,
            audit_client_ca=Path(audit_client_ca) if audit_client_ca else None,
        ),
        allowlist_file=allowlist_file,
        allowlist_configmap=configmap,
        host=host,
        port=port,
        policy=admission.Policy(
            mode=mode,  # narrowed to Mode by the MODES check above
            exempt_users=frozenset(exempt_users or ()),
            exempt_groups=frozenset(groups),
        ),
        join_wait=join_wait,
        join_ttl=join_ttl,
        webhook_name=webhook_name,
        max_body_bytes=max_body_bytes,
        max_audit_body_bytes=max(DEFAULT_MAX_AUDIT_BODY_BYTES, max_body_bytes),
        cert_interval=cert_interval,
        handshake_timeout=handshake_timeout,
        allowlist_interval=allowlist_interval,
        audit_insecure=audit_insecure,
        sinks=tuple(sinks) if sinks else ("stdout",),
        cluster_name=cluster_name or None,
    )
