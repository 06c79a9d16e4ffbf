"""A tiny stand-in for kube-apiserver's ConfigMap list/watch and Event endpoints, over real HTTP.

Enough for the official `kubernetes` client to list one ConfigMap by field selector, watch it
from a resourceVersion (chunked JSON lines, as the apiserver streams them), and create Events.
The e2e suite runs the same code against a real kube-apiserver.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeApiserver"]

_END = object()


class FakeApiserver:
    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.lock = threading.Lock()
        self.resource_version = 100
        self.configmap: dict[str, Any] | None = None
        self.uid = str(uuid.uuid4())
        self.watchers: list[queue.Queue[object]] = []
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.list_failures: list[int] = []
        """Status codes the next list calls answer with, one per call."""
        self.expire_next_watch = False
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> FakeApiserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.end_watches()
        self._http.shutdown()
        self._http.server_close()

    def kubeconfig(self) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )

    # --- changing the ConfigMap --------------------------------------------------------------

    def put(self, data: dict[str, str] | None) -> None:
        """Create, replace (``data``) or delete (None) the ConfigMap; watchers see the change."""
        with self.lock:
            self.resource_version += 1
            before = self.configmap
            if data is None:
                kind = "DELETED"
                obj = before
                self.configmap = None
            else:
                kind = "ADDED" if before is None else "MODIFIED"
                self.configmap = obj = self._object(data)
            if obj is None:
                return
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.resource_version)}}
            for watcher in self.watchers:
                watcher.put({"type": kind, "object": obj})

    def end_watches(self) -> None:
        with self.lock:
            for watcher in self.watchers:
                watcher.put(_END)

    def _object(self, data: dict[str, str]) -> dict[str, Any]:
        return {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": str(self.resource_version),
            },
            "data": data,
        }

    def lists(self) -> int:
        return sum(1 for method, _, q in self.requests if method == "GET" and "watch" not in q)

    def watches(self) -> list[dict[str, list[str]]]:
        return [q for method, _, q in self.requests if method == "GET" and "watch" in q]

    # --- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self
        base = f"/api/v1/namespaces/{self.namespace}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                api.requests.append(("GET", url.path, query))
                if url.path != f"{base}/configmaps":
                    self._json(404, {"kind": "Status", "code": 404, "message": "not found"})
                    return
                if query.get("fieldSelector") != [f"metadata.name={api.name}"]:
                    self._json(400, {"kind": "Status", "code": 400, "message": "expected a field selector"})
                    return
                if "watch" in query:
                    self._watch()
                    return
                with api.lock:
                    if api.list_failures:
                        code = api.list_failures.pop(0)
                        self._json(code, {"kind": "Status", "code": code, "message": "injected failure"})
                        return
                    items = [api.configmap] if api.configmap is not None else []
                    version = str(api.resource_version)
                self._json(
                    200,
                    {
                        "kind": "ConfigMapList",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": version},
                        "items": items,
                    },
                )

            def _watch(self) -> None:
                watcher: queue.Queue[object] = queue.Queue()
                with api.lock:
                    expire = api.expire_next_watch
                    api.expire_next_watch = False
                    api.watchers.append(watcher)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if expire:
                        gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
                        self._chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                    else:
                        while (item := watcher.get()) is not _END:
                            self._chunk(json.dumps(item).encode() + b"\n")
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                finally:
                    with api.lock:
                        api.watchers.remove(watcher)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                api.requests.append(("POST", url.path, {}))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if url.path != f"{base}/events":
                    self._json(404, {"kind": "Status", "code": 404, "message": "not found"})
                    return
                api.events.append(body)
                self._json(201, body)

        return Handler
