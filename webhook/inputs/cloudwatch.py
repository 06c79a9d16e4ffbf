"""EKS audit events from CloudWatch Logs (``--source cloudwatch:LOG_GROUP``); the only boto3 user.

EKS with the ``audit`` control-plane log type enabled writes each kube-apiserver audit event as
one CloudWatch log event (``message`` = the Event JSON, as in the apiserver's log file) into the
log group ``/aws/eks/<cluster>/cluster``, streams ``kube-apiserver-audit-<id>``, one stream per
apiserver instance. Streams are read one by one with ``GetLogEvents`` from a ``nextForwardToken``:
an exact position per stream, which ``FilterLogEvents`` (a time and an event id) cannot give.

boto3 is an optional extra (``pip install 'ua-sentinel[aws]'``). Credentials and region come from
its standard chain (IRSA's web identity token, the environment, ~/.aws; the region also from
``AWS_REGION``, which botocore alone ignores), the endpoint from
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` when set (botocore reads them itself).
botocore's own retries are off (``total_max_attempts`` 1): a failed call becomes a
:class:`~webhook.inputs.source.SourceError` at once, and the reader's jittered backoff
(``tail.streams``) is the one retry policy, every failure counted by kind in the metrics.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from webhook.errors import SetupError
from webhook.inputs.source import LogRecord, Page, SourceError, StreamInfo

__all__ = ["AUDIT_STREAM_PREFIX", "CloudWatchSource"]

AUDIT_STREAM_PREFIX = "kube-apiserver-audit-"

_THROTTLED = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
    }
)
_INSTALL = "the cloudwatch source needs boto3: pip install 'ua-sentinel[aws]'"


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import NoRegionError
    except ImportError:
        raise SetupError(_INSTALL) from None
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
        user_agent_extra="ua-sentinel",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its INFO lines are about credentials
    # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is what the other SDKs (and EKS's IRSA
    # and Pod Identity webhooks, besides AWS_DEFAULT_REGION) set.
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
    try:
        return boto3.client("logs", config=config, region_name=region)
    except NoRegionError:
        raise SetupError("the cloudwatch source needs a region: set AWS_REGION") from None


def _error(exc: Exception) -> SourceError:
    """The kind of a failed call, from botocore's exception."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{code}: {str(error.get('Message', ''))[:200]}"
        if code in _THROTTLED or status == 429:
            return SourceError("throttled", message)
        if code in _DENIED or status in (401, 403):
            return SourceError("denied", message)
        if code == "ResourceNotFoundException":
            return SourceError("not-found", message)
        if status >= 500 or code == "ServiceUnavailableException":
            return SourceError("unavailable", message)
        return SourceError("error", message)
    if isinstance(exc, NoCredentialsError):
        return SourceError("denied", str(exc)[:300])
    if isinstance(exc, ConnectionError | HTTPClientError | BotoCoreError):
        return SourceError("unavailable", f"{type(exc).__name__}: {str(exc)[:300]}")
    raise exc


class CloudWatchSource:
    """The ``kube-apiserver-audit-*`` streams of one log group (see :class:`StreamSource`)."""

    def __init__(self, group: str, client: Any = None) -> None:
        self.group = group
        self.client = client if client is not None else _client()

    @property
    def label(self) -> str:
        return f"cloudwatch:{self.group}"

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response: dict[str, Any] = getattr(self.client, method)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise _error(exc) from None
        return response

    def streams(self) -> list[StreamInfo]:
        """Every audit stream of the group (``DescribeLogStreams``, all pages)."""
        out: list[StreamInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamNamePrefix": AUDIT_STREAM_PREFIX}
            if token:
                kwargs["nextToken"] = token
            response = self._call("describe_log_streams", **kwargs)
            for item in response.get("logStreams", []):
                name = item.get("logStreamName")
                if isinstance(name, str):
                    last = item.get("lastIngestionTime")
                    out.append(
                        StreamInfo(name, int(item.get("creationTime") or 0), int(last) if last else None)
                    )
            token = response.get("nextToken")
            if not token:
                return out

    def page(self, stream: str, token: str | None, *, limit: int) -> Page:
        kwargs: dict[str, Any] = {
            "logGroupName": self.group,
            "logStreamName": stream,
            "startFromHead": True,  # required with a nextForwardToken
            "limit": limit,
        }
        if token is not None:
            kwargs["nextToken"] = token
        response = self._call("get_log_events", **kwargs)
        records = [
            LogRecord(int(event.get("timestamp") or 0), str(event.get("message") or ""))
            for event in response.get("events", [])
        ]
        return Page(records, str(response.get("nextForwardToken") or token or ""))

    def end(self, stream: str) -> str | None:
        """The token after the newest record: its page read backwards (``startFromHead`` false)."""
        response = self._call(
            "get_log_events", logGroupName=self.group, logStreamName=stream, startFromHead=False, limit=1
        )
        if not response.get("events"):
            return None  # an empty stream: read it from its start (its forward token may skip one)
        token = response.get("nextForwardToken")
        return str(token) if token else None
