"""A minimal TLS webhook endpoint that records what the real apiserver sends (harness self-tests).

It proves the plumbing our server will sit behind: the audit webhook backend (batch mode, client
certificate) and a ValidatingWebhookConfiguration (client certificate via the admission config).
`/validate` allows every request and returns one warning; `/audit` stores the EventList.
It is not a stand-in for ua-sentinel: scenario tests run the real `ua-sentinel serve`.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from .procs import wait_until
from .webhooks import WebhookTLS

__all__ = ["Recorded", "Recorder"]

WARNING = "recorder saw this request"


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    client_cn: str | None  # common name of the client certificate the caller presented


class Recorder:
    """Serves https://127.0.0.1:<port>/{audit,validate} in a thread; a context manager."""

    def __init__(self, tls: WebhookTLS) -> None:
        self.calls: list[Recorded] = []
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.serving.cert, tls.serving.key)
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="recorder", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def wait_for(
        self, predicate: Callable[[Recorded], bool], *, timeout: float = 15.0, what: str
    ) -> Recorded:
        def probe() -> Recorded | None:
            with self._lock:
                return next((c for c in self.calls if predicate(c)), None)

        return wait_until(probe, timeout=timeout, what=what)

    def _record(self, call: Recorded) -> None:
        with self._lock:
            self.calls.append(call)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
                recorder._record(Recorded(self.path, dict(self.headers), body, self._client_cn()))
                reply: dict[str, Any] = {}
                if self.path.startswith("/validate"):
                    uid = body["request"]["uid"]
                    reply = {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": True, "warnings": [WARNING]},
                    }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _client_cn(self) -> str | None:
                der = (
                    self.connection.getpeercert(binary_form=True)
                    if isinstance(self.connection, ssl.SSLSocket)
                    else None
                )
                if not der:
                    return None
                names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
                    NameOID.COMMON_NAME
                )
                return str(names[0].value) if names else None

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
