"""The framework floor for item 2: the smallest FastAPI app on the same uvicorn TLS server.

It reads the body (any webhook must receive it) and answers a constant ``allowed: true``; no
parsing, no join, no metrics, no logging. Same uvicorn settings as ``serve`` (h11, asyncio loop,
no access log, TLS from the same certificate).

    python -m bench.floor_app --cert tls.crt --key tls.key --port 9443
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}'


def make_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    config = uvicorn.Config(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        http="h11",
        ssl_context_factory=lambda _config, _default: context,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=90,
    )
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
