"""TLS serving for ``serve``: the SSL context, certificate hot reload, client-certificate roles.

Certificate rotation (cert-manager, a Secret volume) replaces files without a restart. Mounted
Secrets change through a symlink swap and send no reliable filesystem event, so the files are
re-read every ``interval`` seconds and compared by content hash (kopf does the same). A change
is built into a *new* ``SSLContext`` first; only a context that loaded cleanly is used:

- A failed ``load_cert_chain`` (say a new certificate read before its new key) leaves an
  ``SSLContext`` half-replaced and every later handshake fails, so the listening context is
  never loaded into after start.
- Loading into the live context does change what new handshakes present (verified in
  ``tests/integration/test_tls.py``), but a key-type change (RSA to ECDSA) would leave both
  certificates loaded and clients could keep getting the old one.

So the listening context's ``sni_callback`` (called for every handshake, with or without SNI,
on OpenSSL >= 1.1.1) switches the connection to the newest context. Established connections
keep their session: in-flight requests finish undisturbed.

Client certificates (``--client-ca``, ``--audit-client-ca``) are requested with
``CERT_OPTIONAL`` so kubelet probes and Prometheus still reach ``/healthz``, ``/readyz`` and
``/metrics``; which CA signed the peer's certificate is worked out once per connection and
handed to the app in the ASGI scope (:data:`PEER_ROLES_KEY`), where each route checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import h11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from uvicorn.protocols.http.h11_impl import H11Protocol

from webhook.errors import SetupError
from webhook.logs import fields

__all__ = [
    "CIPHERS",
    "DEFAULT_CERT_INTERVAL",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "PEER_ROLES_KEY",
    "CertificateError",
    "CertificateReloader",
    "CertificateState",
    "PeerRole",
    "TLSFiles",
    "peer_aware_protocol",
    "run_uvicorn",
]

logger = logging.getLogger(__name__)

DEFAULT_CERT_INTERVAL: Final = 5.0
"""Seconds between re-reads of the certificate files."""
DEFAULT_KEEP_ALIVE: Final = 90.0
"""Idle keep-alive seconds: the apiserver (Go) closes idle connections after 90 s; TLS setup is the
expensive part of a webhook call, so we never close first."""
DEFAULT_GRACEFUL: Final = 10.0
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
"""Seconds a client has to send a whole request (headers and body) once it has started one, and
to start the first one on a new connection. uvicorn has no such limit: a slowloris client that
trickles a header byte now and then would hold its connection (and a file descriptor) forever."""
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a new connection has to finish its TLS handshake. asyncio's default is 60 s, and a
connection that never sends a ClientHello never reaches the request timer (the HTTP protocol
only sees a connection once its handshake is done)."""
CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""TLS 1.2 suites: forward secret AEAD only (no CBC, SHA-1, RSA key exchange). kube-apiserver's
Go client offers these first. TLS 1.3 suites are all AEAD and are not affected by this list."""
PEER_ROLES_KEY: Final = "ua_sentinel.peer_roles"
"""ASGI scope key: frozenset of :data:`PeerRole` the connection's client certificate proves."""

PeerRole = Literal["client", "audit"]


@dataclass(frozen=True, slots=True)
class CertificateState:
    """What the certificate reloader reports (metrics): the serving certificate in use."""

    loaded: bool
    not_after: float | None
    reloads: int
    errors: int


class CertificateError(SetupError, ValueError):
    """The certificate files cannot be served; the message names the file and the problem."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None
    audit_client_ca: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca, self.audit_client_ca) if p is not None]


@dataclass(frozen=True, slots=True)
class _Material:
    """One consistent read of every file, and the context built from it."""

    digest: str
    context: ssl.SSLContext
    not_after: float
    serial: str
    fingerprint: str
    client_cas: tuple[x509.Certificate, ...]
    audit_cas: tuple[x509.Certificate, ...]


def _read(files: TLSFiles) -> tuple[str, dict[Path, bytes]]:
    data: dict[Path, bytes] = {}
    for path in files.paths():
        try:
            data[path] = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(b"\0".join(data[p] for p in files.paths())).hexdigest()
    return digest, data


def _load_cas(path: Path, pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        cas = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate bundle: {exc}") from None
    return cas


def _build(files: TLSFiles, digest: str, data: dict[Path, bytes]) -> _Material:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    # load_cert_chain only takes paths: load exactly the bytes we hashed from a private copy.
    with tempfile.TemporaryDirectory(prefix="ua-sentinel-tls-") as tmp:
        cert_copy, key_copy = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_copy.write_bytes(data[files.cert])
        fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data[files.key])
        try:
            context.load_cert_chain(cert_copy, key_copy)
        except ssl.SSLError as exc:
            raise CertificateError(
                f"{files.cert} / {files.key}: cannot be served: {exc.reason or exc}"
            ) from None
    leaf = _load_cas(files.cert, data[files.cert])[0]
    client_cas = _load_cas(files.client_ca, data[files.client_ca]) if files.client_ca else ()
    audit_cas = _load_cas(files.audit_client_ca, data[files.audit_client_ca]) if files.audit_client_ca else ()
    if client_cas or audit_cas:
        bundle = b"\n".join(data[p] for p in (files.client_ca, files.audit_client_ca) if p is not None)
        context.load_verify_locations(cadata=bundle.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_OPTIONAL
    return _Material(
        digest=digest,
        context=context,
        not_after=leaf.not_valid_after_utc.timestamp(),
        serial=format(leaf.serial_number, "x"),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        client_cas=client_cas,
        audit_cas=audit_cas,
    )


def _issued_by(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


class CertificateReloader:
    """Owns the listening SSL context and swaps in rebuilt contexts when the files change."""

    def __init__(self, files: TLSFiles, *, interval: float = DEFAULT_CERT_INTERVAL) -> None:
        self.files = files
        self.interval = interval
        digest, data = _read(files)
        self._material = _build(files, digest, data)
        self.context = self._material.context
        self.context.sni_callback = self._switch
        self.reloads = 0
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _switch(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._material.context
        if conn.context is not current:
            conn.context = current

    def check(self) -> bool:
        """Re-read the files; swap in a new context when their content changed. True when swapped."""
        try:
            digest, data = _read(self.files)
            if digest == self._material.digest:
                if self.last_error is not None:  # the files are back to what is being served
                    logger.info("certificate files readable again; serving them unchanged")
                    self.last_error = None
                return False
            material = _build(self.files, digest, data)
        except CertificateError as exc:
            self.errors += 1
            if str(exc) != self.last_error:
                logger.warning(
                    "certificate change refused; still serving the previous one", **fields(reason=str(exc))
                )
            self.last_error = str(exc)
            return False
        self._material = material
        self.reloads += 1
        self.last_error = None
        logger.info(
            "serving certificate reloaded",
            **fields(serial=material.serial, sha256=material.fingerprint, notAfter=material.not_after),
        )
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                logger.exception("certificate check failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="certificate-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def roles(self, der: bytes | None) -> frozenset[PeerRole]:
        """Which of our client CAs directly issued the peer certificate (already verified by TLS)."""
        if not der:
            return frozenset()
        material = self._material
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return frozenset()
        roles: set[PeerRole] = set()
        if _issued_by(cert, material.client_cas):
            roles.add("client")
        if _issued_by(cert, material.audit_cas):
            roles.add("audit")
        return frozenset(roles)

    def state(self) -> CertificateState:
        return CertificateState(
            loaded=True, not_after=self._material.not_after, reloads=self.reloads, errors=self.errors
        )

    def details(self) -> dict[str, Any]:
        material = self._material
        return {
            "loaded": True,
            "serial": material.serial,
            "sha256": material.fingerprint,
            "notAfter": material.not_after,
            "reloads": self.reloads,
            "lastError": self.last_error,
        }


def peer_aware_protocol(
    roles_of: Callable[[bytes | None], frozenset[PeerRole]],
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> type[H11Protocol]:
    """uvicorn's h11 protocol, adding the client certificate's roles to every request's scope,
    and closing connections whose client is too slow to send a request (``request_timeout``)."""

    class PeerAwareProtocol(H11Protocol):
        _request_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            roles = roles_of(der)
            app = self.app

            async def app_with_peer(scope: Any, receive: Any, send: Any) -> None:
                scope[PEER_ROLES_KEY] = roles
                await app(scope, receive, send)

            self.app = app_with_peer
            self._arm_request_timer()  # the first request must come in time too

        def _arm_request_timer(self) -> None:
            if self._request_timer is None:
                self._request_timer = self.loop.call_later(request_timeout, self._request_timed_out)

        def _cancel_request_timer(self) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm_request_timer()  # a new request starts: it has request_timeout to arrive
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._cancel_request_timer()  # the whole request is in (or the connection failed)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_request_timer()
            super().connection_lost(exc)

        def _request_timed_out(self) -> None:
            self._request_timer = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                logger.info(
                    "client too slow to send its request; connection closed",
                    **fields(
                        client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
                        timeoutSeconds=request_timeout,
                        state=str(self.conn.their_state),
                    ),
                )
                self.transport.close()

    return PeerAwareProtocol


async def run_uvicorn(
    app: Any,
    reloader: CertificateReloader,
    *,
    host: str,
    port: int,
    keep_alive: float = DEFAULT_KEEP_ALIVE,
    graceful: float = DEFAULT_GRACEFUL,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` over TLS until SIGINT/SIGTERM; in-flight requests get ``graceful`` seconds.

    ``ready`` is called with the bound port once the socket listens (``port=0`` picks a free one).
    ``handshake_timeout`` bounds each TLS handshake (see :data:`DEFAULT_HANDSHAKE_TIMEOUT`).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=peer_aware_protocol(reloader.roles, request_timeout=request_timeout),
        ssl_context_factory=lambda _config, _default: reloader.context,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=int(keep_alive),
        timeout_graceful_shutdown=int(graceful),
    )
    server = uvicorn.Server(config)
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        with _handshake_timeout(asyncio.get_running_loop(), handshake_timeout):
            await original_startup(sockets)
        if server.started and ready is not None:
            ready(server.servers[0].sockets[0].getsockname()[1])

    server.startup = startup  # type: ignore[method-assign]
    await server.serve()


@contextlib.contextmanager
def _handshake_timeout(loop: asyncio.AbstractEventLoop, seconds: float) -> Iterator[None]:
    """While uvicorn starts, the servers it creates get ``ssl_handshake_timeout=seconds``.

    uvicorn has no setting for it and calls ``loop.create_server`` itself; asyncio fixes a
    server's handshake timeout when it is created, so giving it to that one call is enough.
    """
    create_server = loop.create_server

    async def create_server_with_timeout(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await create_server(*args, **kwargs)

    loop.create_server = create_server_with_timeout  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_server  # the instance attribute goes; the loop's own method shows again
