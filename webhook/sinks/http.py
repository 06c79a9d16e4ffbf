"""The ``http:URL`` and ``slack:URL`` sinks: POST each finding, as JSON or as Slack's ``{"text": ...}``.

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

__all__ = ["HttpSink", "slack_text"]


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
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"ua-sentinel/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            raise SinkError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(str(reason)) from None

    def close(self) -> None:
        return None
