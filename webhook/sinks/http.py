"""The ``http:URL`` and ``slack:URL`` sinks: POST each finding, as JSON or as Slack's ``{"text": ...}``;
and :func:`post`, the one HTTP POST every HTTP sink (falcosidekick, OTLP too) delivers with.

Webhook URLs are secrets: they never appear in logs or metrics (see
:attr:`webhook.sinks.spec.SinkSpec.label`), and nothing here logs them.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson

from webhook import __version__
from webhook.core.findings import Finding, dumps
from webhook.sinks.base import SinkError

__all__ = ["HttpSink", "post", "slack_text"]

MAX_REPLY_BYTES = 64 * 1024
"""Of a reply, only this much is read: enough for a status or an OTLP partial-success message."""


def post(url: str, body: bytes, *, content_type: str, timeout: float) -> bytes:
    """POST ``body``; the start of a 2xx reply, else :class:`SinkError` (the outbox retries)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "User-Agent": f"ua-sentinel/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply: bytes = response.read(MAX_REPLY_BYTES)
            return reply
    except urllib.error.HTTPError as exc:
        raise SinkError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SinkError(str(reason)) from None


def slack_text(finding: Finding) -> str:
    """:meth:`Finding.one_line`, named as ours and mrkdwn-escaped."""
    text = f"ua-sentinel {finding.one_line()}"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class HttpSink:
    """POST each finding (JSON, or Slack's ``{"text": ...}``); non-2xx raises :class:`SinkError`."""

    def __init__(self, url: str, *, slack: bool = False, timeout: float = 10.0) -> None:
        self.url = url
        self.slack = slack
        self.timeout = timeout

    def deliver(self, finding: Finding) -> None:
        body = orjson.dumps({"text": slack_text(finding)}) if self.slack else dumps(finding)
        post(self.url, body, content_type="application/json", timeout=self.timeout)

    def close(self) -> None:
        return None
