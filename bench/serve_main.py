"""``ua-sentinel serve`` for before/after comparisons: the real CLI, Service, app and uvicorn TLS
server, with one thing changed.

    python -m bench.serve_main [--join-ttl SECONDS] [--gc-default] -- serve --tls-cert ... (serve's flags)

``--join-ttl`` replaces ``ServeSettings.join_ttl`` (not a flag); ``--gc-default`` skips
``webhook.serve.service._tune_gc`` (CPython's default GC thresholds, nothing frozen: the "before").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from webhook import cli
from webhook.serve import service as serve


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--join-ttl", type=float)
    parser.add_argument("--gc-default", action="store_true")
    args = parser.parse_args(argv[:split])
    original = serve.serve

    def patched(settings: Any) -> None:
        if args.join_ttl is not None:
            settings = dataclasses.replace(settings, join_ttl=args.join_ttl)
        original(settings)

    serve.serve = patched  # type: ignore[assignment]
    if args.gc_default:
        serve._tune_gc = lambda: None  # type: ignore[assignment]
    cli.main(argv[split + 1 :])


if __name__ == "__main__":
    main()
