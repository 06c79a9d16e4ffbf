"""The ``otlp:URL`` sink: each finding as one OpenTelemetry log record, OTLP/HTTP protobuf.

The request is an ``ExportLogsServiceRequest`` built with the official ``opentelemetry-proto``
classes (the ones ``opentelemetry-exporter-otlp-proto-http`` encodes with) and POSTed through
:func:`webhook.sinks.http.post`, so it has the outbox's at-least-once delivery, retries and
metrics like every sink. The SDK's exporter is not used: it batches in its own thread, retries
by itself and reports only success or failure, so a finding it drops could not be kept.

- body: :meth:`Finding.one_line` (escaped, for people); attributes: the finding's ECS fields,
  flattened to dotted keys (``user_agent.original``, ``orchestrator.cluster.name``, ...).
- severity: ``severity_text`` is ours; ``severity_number`` follows OpenTelemetry's syslog
  mapping of the falcosidekick priority we give the same severity (low → INFO2, medium → WARN,
  high → ERROR, critical → ERROR2).
- resource: ``service.name=ua-sentinel``, ``service.version``, ``k8s.cluster.name``.
- URL: a bare ``http(s)://host:4318`` gets ``/v1/logs`` (as ``OTEL_EXPORTER_OTLP_ENDPOINT``);
  a URL with a path is used as given (as ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``).

``opentelemetry-proto`` is the optional extra ``ua-sentinel[otlp]``; it is imported when an
``otlp`` sink is opened, so the other sinks work without it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import urllib.parse
from types import ModuleType
from typing import Any

from webhook import __version__
from webhook.core.findings import Finding, Severity
from webhook.errors import SetupError
from webhook.logs import fields
from webhook.sinks.http import post

__all__ = ["SEVERITY_NUMBER", "OtlpSink", "logs_url"]

logger = logging.getLogger(__name__)

SEVERITY_NUMBER: dict[Severity, int] = {"low": 10, "medium": 13, "high": 17, "critical": 18}
"""OpenTelemetry SeverityNumber: INFO2, WARN, ERROR, ERROR2."""

CONTENT_TYPE = "application/x-protobuf"


def logs_url(url: str) -> str:
    """``/v1/logs`` added to a URL without a path (the OTLP/HTTP default), else ``url`` as given."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/v1/logs"))
    return url


def _proto() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
    except ImportError:
        raise SetupError(
            "the otlp sink needs the opentelemetry-proto package: pip install 'ua-sentinel[otlp]'"
        ) from None
    return logs_service_pb2, logs_pb2, common_pb2, resource_pb2


def _nanos(timestamp: str) -> int:
    try:
        when = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return 0  # OTLP: 0 = unknown; the receiver uses the observed time
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class OtlpSink:
    """POST each finding as an OTLP ``ExportLogsServiceRequest``; non-2xx raises ``SinkError``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = logs_url(url)
        self.timeout = timeout
        self._service, self._logs, self._common, self._resource = _proto()

    def _value(self, value: Any) -> Any:
        common = self._common
        if isinstance(value, bool):
            return common.AnyValue(bool_value=value)
        if isinstance(value, int):
            return common.AnyValue(int_value=value)
        if isinstance(value, float):
            return common.AnyValue(double_value=value)
        if isinstance(value, dict):
            return common.AnyValue(
                kvlist_value=common.KeyValueList(
                    values=[common.KeyValue(key=k, value=self._value(v)) for k, v in value.items()]
                )
            )
        if isinstance(value, list | tuple):
            return common.AnyValue(array_value=common.ArrayValue(values=[self._value(v) for v in value]))
        return common.AnyValue(string_value=str(value))

    def _attributes(self, data: dict[str, Any], prefix: str = "") -> list[Any]:
        """Nested objects become dotted keys (ECS's flat form); lists stay arrays."""
        out: list[Any] = []
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, dict) and value:
                out.extend(self._attributes(value, f"{prefix}{key}."))
            else:
                out.append(self._common.KeyValue(key=f"{prefix}{key}", value=self._value(value)))
        return out

    def request(self, finding: Finding) -> bytes:
        """The serialized ``ExportLogsServiceRequest`` holding this one finding."""
        severity: Severity = finding.ua_sentinel.get("severity", "medium")
        resource = {"service.name": "ua-sentinel", "service.version": __version__}
        if finding.cluster_name:
            resource["k8s.cluster.name"] = finding.cluster_name
        record = self._logs.LogRecord(
            time_unix_nano=_nanos(finding.timestamp),
            observed_time_unix_nano=time.time_ns(),
            severity_number=SEVERITY_NUMBER.get(severity, 13),
            severity_text=severity,
            body=self._common.AnyValue(string_value=f"ua-sentinel {finding.one_line()}"),
            attributes=self._attributes(finding.to_dict()),
        )
        message = self._service.ExportLogsServiceRequest(
            resource_logs=[
                self._logs.ResourceLogs(
                    resource=self._resource.Resource(attributes=self._attributes(resource)),
                    scope_logs=[
                        self._logs.ScopeLogs(
                            scope=self._common.InstrumentationScope(name="ua-sentinel", version=__version__),
                            log_records=[record],
                        )
                    ],
                )
            ]
        )
        data: bytes = message.SerializeToString()
        return data

    def deliver(self, finding: Finding) -> None:
        reply = post(self.url, self.request(finding), content_type=CONTENT_TYPE, timeout=self.timeout)
        self._check_partial_success(finding, reply)

    def _check_partial_success(self, finding: Finding, reply: bytes) -> None:
        """OTLP: a rejected record must not be retried; it is logged as an error instead."""
        response = self._service.ExportLogsServiceResponse()
        try:
            response.ParseFromString(reply)
        except Exception:  # a reply that is not protobuf (a proxy's page): the POST itself succeeded
            return
        if response.partial_success.rejected_log_records:
            logger.error(
                "OTLP receiver rejected the finding; not retried",
                **fields(findingId=finding.id, reason=response.partial_success.error_message[:300]),
            )

    def close(self) -> None:
        return None
