"""Local HTTP endpoints that judge what a sink POSTs as the receiving project would: a
falcosidekick (its decoder and ``Check()``, :mod:`tests.tailer.falco_payload`) and an OTLP/HTTP
logs receiver (the official ``opentelemetry-proto`` decoding). Each can be scripted to fail its
first requests (503s: the endpoint is down)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .falco_payload import falco_payload_errors


@dataclass
class Received:
    path: str
    content_type: str | None
    body: bytes
    status: int
    errors: list[str] = field(default_factory=list)
    """falcosidekick: why it refused the body; OTLP: why it did not decode."""
    request: Any = None
    """OTLP: the decoded ExportLogsServiceRequest."""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        with server.lock:
            scripted = server.script.pop(0) if server.script else None
            got = Received(self.path, self.headers.get("Content-Type"), body, 0)
            reply = server.judge(got)
            got.status = scripted or got.status
            server.received.append(got)
        data = reply if got.status == 200 else b""
        self.send_response(got.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def falcosidekick(got: Received) -> bytes:
    """falcosidekick's ``/``: 400 for a payload its decoder or ``Check()`` refuses, else 200."""
    got.errors = falco_payload_errors(got.body)
    got.status = 400 if got.errors else 200
    return b""


def otlp_collector(reject: bool = False) -> Any:
    """An OTLP/HTTP logs receiver: 400 unless the body decodes; ``reject``: a partial success."""

    def judge(got: Received) -> bytes:
        try:
            got.request = ExportLogsServiceRequest.FromString(got.body)
        except Exception as exc:
            got.errors, got.status = [str(exc)], 400
            return b""
        got.status = 200
        reply = ExportLogsServiceResponse()
        if reject:
            reply.partial_success.rejected_log_records = 1
            reply.partial_success.error_message = "attribute limit exceeded"
        return reply.SerializeToString()

    return judge


@contextlib.contextmanager
def endpoint(judge: Any, *, fail_first: int = 0) -> Iterator[Any]:
    """A real HTTP server on 127.0.0.1; ``.url``, ``.received``; the first ``fail_first`` get 503."""
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.lock = threading.Lock()
    httpd.script = [503] * fail_first
    httpd.received = []
    httpd.judge = judge
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def plain(value: AnyValue) -> Any:
    """An OTLP AnyValue as Python (arrays → lists, kvlists → dicts)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def otlp_records(received: list[Received]) -> list[tuple[dict[str, Any], Any, dict[str, Any]]]:
    """(resource attributes, log record, record attributes) of every accepted request."""
    out = []
    for got in received:
        if got.status != 200:
            continue
        for resource_logs in got.request.resource_logs:
            resource = {kv.key: plain(kv.value) for kv in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    out.append((resource, record, {kv.key: plain(kv.value) for kv in record.attributes}))
    return out
