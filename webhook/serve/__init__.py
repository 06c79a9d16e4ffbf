"""``ua-sentinel serve``: the admission webhook and the audit webhook endpoint, over TLS.

- ``service``: settings, the wiring of the components, the run.
- ``routes``: the FastAPI routes (bodies in, protocol modules called, errors to status codes).
- ``tls``: the SSL context, certificate hot reload, client-certificate roles, uvicorn.
- ``admission``: the AdmissionReview decision (no HTTP, no I/O).
- ``join``: the RequestIndex joining an admission call to its ``RequestReceived`` event.
- ``feed``: the Detector and the sinks on a background thread behind a bounded queue.
- ``metrics``: serve's Prometheus metrics.
"""

__all__ = ["admission", "feed", "join", "metrics", "routes", "service", "tls"]
