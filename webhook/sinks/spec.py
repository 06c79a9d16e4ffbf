"""What ``--sink`` accepts, and opening the sink it names (the same for ``serve`` and ``tail``).

``stdout`` (JSON lines, the default), ``file:PATH`` (JSON lines, size-rotated, duplicates
dropped by finding id + sequence, :mod:`webhook.sinks.file`), ``k8s-events[:NAMESPACE]`` (one
Kubernetes Event per finding, :mod:`webhook.sinks.kube_events`), ``http:URL`` (POST the finding
as JSON) and ``slack:URL`` (POST ``{"text": ...}`` for Slack-compatible incoming webhooks), both
:mod:`webhook.sinks.http`; ``falcosidekick:URL`` (POST the Falco alert falcosidekick reads,
:mod:`webhook.sinks.falcosidekick`) and ``otlp:URL`` (OTLP/HTTP protobuf log records,
:mod:`webhook.sinks.otlp`).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from webhook.sinks.base import JsonLinesSink, Sink
from webhook.sinks.falcosidekick import FalcosidekickSink
from webhook.sinks.file import FileSink
from webhook.sinks.http import HttpSink
from webhook.sinks.kube_events import KubernetesEventsSink
from webhook.sinks.otlp import OtlpSink

__all__ = ["URL_KINDS", "SinkKind", "SinkSpec", "open_sink", "parse_sink"]

SinkKind = Literal["stdout", "file", "k8s-events", "http", "slack", "falcosidekick", "otlp"]
URL_KINDS = ("http", "slack", "falcosidekick", "otlp")
"""The sinks whose target is a URL: a secret, never shown whole."""


@dataclass(frozen=True, slots=True)
class SinkSpec:
    kind: SinkKind
    target: str = ""

    @property
    def key(self) -> str:
        """Stable name for the checkpoint's backlog (no secret in it: URLs are hashed)."""
        return f"{self.kind}:{hashlib.sha256(self.target.encode()).hexdigest()[:12]}"

    @property
    def label(self) -> str:
        """For logs and metrics: webhook URLs are secrets, so only scheme and host are shown."""
        if self.kind in URL_KINDS:
            parts = urllib.parse.urlsplit(self.target)
            return f"{self.kind}:{parts.scheme}://{parts.hostname or '?'}/..."
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_sink(text: str) -> SinkSpec:
    """``stdout`` | ``file:PATH`` | ``k8s-events[:NAMESPACE]`` | ``http:URL`` | ``slack:URL`` |
    ``falcosidekick:URL`` | ``otlp:URL``."""
    kind, _, target = text.partition(":")
    if kind == "stdout" and not target:
        return SinkSpec("stdout")
    if kind == "file" and target:
        return SinkSpec("file", target)
    if kind == "k8s-events":
        return SinkSpec("k8s-events", target)
    if kind in URL_KINDS:
        scheme = urllib.parse.urlsplit(target).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"{kind} sink needs an http(s) URL, e.g. {kind}:https://example.com/hook")
        return SinkSpec(kind, target)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown sink {text.split(':', 1)[0]!r}: use stdout, file:PATH, k8s-events[:NAMESPACE], "
        "http:URL, slack:URL, falcosidekick:URL or otlp:URL"
    )


def open_sink(spec: SinkSpec) -> Sink:
    """The sink ``spec`` names, ready to deliver; raises when it cannot be opened (no API access)."""
    if spec.kind == "stdout":
        return JsonLinesSink()
    if spec.kind == "file":
        return FileSink(spec.target)
    if spec.kind == "k8s-events":
        return KubernetesEventsSink(default_namespace=spec.target or None)
    if spec.kind == "falcosidekick":
        return FalcosidekickSink(spec.target)
    if spec.kind == "otlp":
        return OtlpSink(spec.target)
    return HttpSink(spec.target, slack=spec.kind == "slack")
