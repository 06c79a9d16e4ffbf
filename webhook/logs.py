"""Structured JSON logs on stderr, one object per line.

stdout belongs to findings (JSON lines a collector ingests), so logs never go there. One style
everywhere (``tests/unit/test_logs.py`` checks it): the module's ``logger``, a constant message
that says what happened and what follows, and every value in camelCase fields, so a log pipeline
can filter on them::

    logger.warning("sink delivery failed; retrying", **fields(sink=label, error=str(exc)[:300], retryIn=2.0))

A record's structured fields travel in ``extra={"fields": {...}}``; ``fields(...)`` builds that.
User agents, user names and other audit text are attacker input: callers put them in fields only
through :func:`webhook.core.useragent.display`, and no request body is ever logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

__all__ = ["LOG_LEVELS", "JsonFormatter", "configure", "fields"]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_RESERVED = frozenset(("ts", "level", "logger", "msg"))


def fields(**values: Any) -> dict[str, Any]:
    """``logger.info("msg", **fields(uid=..., verdict=...))``: structured fields for one record."""
    return {"extra": {"fields": values}}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...fields, "exc"}``; anything not JSON-able becomes a string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                if value is not None:
                    out[key if key not in _RESERVED else f"field_{key}"] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure(level: str = "info", stream: IO[str] | None = None) -> None:
    """Route every logger (ours, uvicorn's, the kubernetes client's) through one JSON handler.

    uvicorn's access log is silenced: per-request lines come from our handlers, which know
    the verdict and never print a body.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    # The kubernetes client logs request bodies at debug level; keep it at warning.
    logging.getLogger("kubernetes").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
