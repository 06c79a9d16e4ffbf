"""The tailer's checkpoint mirrored in a ConfigMap it owns, so a rescheduled pod resumes without a volume.

``tail --checkpoint-configmap NAME`` keeps, besides ``<state>/checkpoint.json``, a copy of the
whole checkpoint (positions, detector windows, backlog, stats, baseline rows) in key
``checkpoint.json.gz`` of ``binaryData``: gzip of the checkpoint's JSON, which carries its own
SHA-256; the annotation ``ua-sentinel.io/checkpoint-sha256`` is the SHA-256 of the gzip bytes,
so a torn or edited copy is refused before it is decompressed.

- **Writes** are updates carrying the ``resourceVersion`` this process last read or wrote
  (optimistic concurrency). A conflict means another writer changed the object: the write fails
  (:class:`StateWriteError`, an ``OSError``, which the tailer counts as a checkpoint error and
  retries after ``checkpoint_interval``), an error is logged, and the object is read again so
  the retry overwrites it with this process's checkpoint (the Lease holder is the only rightful
  writer; a conflict is a misconfiguration or a holder that has not yet noticed it lost).
- **Size**: the apiserver refuses a ConfigMap whose data exceed 1 MiB (``MAX_BYTES``). A
  checkpoint whose gzip would not fit is not written (nor truncated): the previous copy stays,
  :attr:`StateConfigMap.oversize` counts it, one error line says so (again only after a copy
  fit in between). A pod restarted from that older copy reads from its older position again:
  findings repeat with the same ids, none is lost (unless the backlog itself is what no longer
  fits and the log source has since dropped those events).
- **Reads** (at start) refuse a copy whose checksum does not match or that decompresses to more
  than ``MAX_INFLATED`` bytes; the caller then falls back as for a corrupt local checkpoint.
- ``may_write`` (the Lease holder's test) is asked before every write: a process that does not
  hold the Lease never writes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import logging
import zlib
from collections.abc import Callable
from typing import Any, Final

import orjson

from webhook.errors import DeliveryError, SetupError
from webhook.kube.client import configured_api_client
from webhook.logs import fields

__all__ = [
    "CHECKSUM_ANNOTATION",
    "KEY",
    "MAX_BYTES",
    "StateConfigMap",
    "StateReadError",
    "StateWriteError",
    "decode",
    "encode",
]

logger = logging.getLogger(__name__)

KEY: Final = "checkpoint.json.gz"
CHECKSUM_ANNOTATION: Final = "ua-sentinel.io/checkpoint-sha256"
WRITER_ANNOTATION: Final = "ua-sentinel.io/checkpoint-writer"
MAX_BYTES: Final = 1024 * 1024
"""The apiserver's limit on a ConfigMap's data + binaryData values (``core.MaxSecretSize``)."""
MAX_INFLATED: Final = 256 * 1024 * 1024
"""A copy decompressing to more than this is refused (a gzip bomb planted in the ConfigMap)."""
TIMEOUT: Final = (5.0, 30.0)
"""(connect, read) seconds of each API call: a write blocks the tailer's loop."""


class StateWriteError(DeliveryError, OSError):
    """The ConfigMap copy was not written (API error, conflict, not the Lease holder); retried."""


class StateReadError(SetupError):
    """The ConfigMap cannot be read at start (RBAC, API down): the tailer does not guess a position."""


def encode(checkpoint: bytes) -> tuple[bytes, str]:
    """gzip (``mtime`` 0: the same checkpoint gives the same bytes) and the SHA-256 of the result."""
    compressed = gzip.compress(checkpoint, compresslevel=6, mtime=0)
    return compressed, hashlib.sha256(compressed).hexdigest()


def decode(compressed: bytes, checksum: str | None, *, limit: int = MAX_INFLATED) -> bytes:
    """The checkpoint JSON from a copy; ValueError when the checksum or the gzip is wrong, or too big."""
    if checksum != hashlib.sha256(compressed).hexdigest():
        raise ValueError("checksum mismatch" if checksum else "no checksum annotation")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not gzip: {exc}") from None
    if len(data) > limit:
        raise ValueError(f"decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise ValueError("truncated gzip")
    return data


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)[:300]


class StateConfigMap:
    """The checkpoint's ConfigMap: :meth:`load` at start, :meth:`save` after each local one.

    ``api`` is a ``CoreV1Api`` (None: one is made from the in-cluster config or the kubeconfig).
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        api: Any = None,
        writer: str = "",
        may_write: Callable[[], bool] | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.writer = writer
        self.may_write = may_write
        self.max_bytes = max_bytes
        self._api = api
        self._metadata: dict[str, Any] | None = None
        """The object's metadata as last read or written (its resourceVersion); None: absent."""
        self._known = False
        """:attr:`_metadata` reflects the server (after a read or a write)."""
        self.writes = 0
        self.oversize = 0
        """Checkpoints not copied because their gzip exceeded ``max_bytes`` (the older copy kept)."""
        self.conflicts = 0
        self.last_size = 0
        """Bytes of the last gzip built (written or not)."""
        self._oversize_logged = False

    @property
    def label(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CoreV1Api(configured_api_client())
        return self._api

    # -- reading -------------------------------------------------------------------------------
    def _get(self) -> dict[str, Any] | None:
        """The object as JSON (raw: no model parsing of a 1 MiB blob), or None when absent."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.read_namespaced_config_map(
                self.name, self.namespace, _preload_content=False, _request_timeout=TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                self._metadata, self._known = None, True
                return None
            raise
        obj: dict[str, Any] = orjson.loads(response.data)
        self._remember(obj)
        return obj

    def _remember(self, obj: dict[str, Any]) -> None:
        metadata = dict(obj.get("metadata") or {})
        metadata.pop("managedFields", None)  # the server keeps its own; never sent back
        self._metadata, self._known = metadata, True

    def load(self) -> bytes | None:
        """The checkpoint JSON of the copy; None when there is none. Raises :class:`StateReadError`
        when the API refuses or fails, ValueError when the copy is corrupt."""
        try:
            obj = self._get()
        except Exception as exc:
            status = _status(exc)
            hint = " (RBAC: the Role needs get on this ConfigMap)" if status == 403 else ""
            raise StateReadError(
                f"--checkpoint-configmap {self.namespace}/{self.name}: cannot read it: "
                f"{status or ''} {_reason(exc)}{hint}".replace("  ", " ")
            ) from None
        if obj is None:
            return None
        binary = obj.get("binaryData") or {}
        if KEY not in binary:
            return None  # created empty (the chart does): no checkpoint yet
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        try:
            compressed = base64.b64decode(binary[KEY], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"binaryData is not base64: {exc}") from None
        return decode(compressed, annotations.get(CHECKSUM_ANNOTATION))

    # -- writing -------------------------------------------------------------------------------
    def save(self, checkpoint: bytes) -> bool:
        """Copy one checkpoint; True when written, False when too big (the older copy kept).

        Raises :class:`StateWriteError` when it could not be written.
        """
        compressed, checksum = encode(checkpoint)
        self.last_size = len(compressed)
        if len(compressed) + len(KEY) > self.max_bytes:
            self.oversize += 1
            if not self._oversize_logged:
                self._oversize_logged = True
                logger.error(
                    "checkpoint too big for its ConfigMap: the older copy is kept; a pod restarted "
                    "without its state directory would read again from that older position",
                    **fields(
                        configmap=self.label, compressedBytes=len(compressed), limitBytes=self.max_bytes
                    ),
                )
            return False
        if self._oversize_logged:
            self._oversize_logged = False
            logger.info(
                "checkpoint fits its ConfigMap again",
                **fields(configmap=self.label, compressedBytes=len(compressed)),
            )
        if self.may_write is not None and not self.may_write():
            raise StateWriteError(f"{self.label}: not written, this process does not hold the Lease")
        self._write(compressed, checksum)
        return True

    def _body(self, compressed: bytes, checksum: str) -> dict[str, Any]:
        metadata = dict(self._metadata or {"name": self.name, "namespace": self.namespace})
        annotations = dict(metadata.get("annotations") or {})
        annotations[CHECKSUM_ANNOTATION] = checksum
        if self.writer:
            annotations[WRITER_ANNOTATION] = self.writer
        metadata["annotations"] = annotations
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "binaryData": {KEY: base64.b64encode(compressed).decode("ascii")},
        }

    def _write(self, compressed: bytes, checksum: str) -> None:
        try:
            if not self._known:
                self._get()
            body = self._body(compressed, checksum)
            if self._metadata is None:
                response = self.api.create_namespaced_config_map(
                    self.namespace, body, _preload_content=False, _request_timeout=TIMEOUT
                )
            else:
                response = self.api.replace_namespaced_config_map(
                    self.name, self.namespace, body, _preload_content=False, _request_timeout=TIMEOUT
                )
        except Exception as exc:
            status = _status(exc)
            if status == 409:
                self._conflict()
            else:
                self._known = self._known and status is not None  # unknown outcome: read first
            raise StateWriteError(f"{self.label}: not written: {status or ''} {_reason(exc)}") from None
        self._remember(orjson.loads(response.data))
        self.writes += 1

    def _conflict(self) -> None:
        """Another writer changed (or created) the object since this process read it."""
        self.conflicts += 1
        self._known = False  # read it again before the next write, even if this read fails
        other = None
        with contextlib.suppress(Exception):
            self._get()
            other = ((self._metadata or {}).get("annotations") or {}).get(WRITER_ANNOTATION)
        logger.error(
            "checkpoint ConfigMap changed by another writer; this process's checkpoint overwrites it "
            "at the next checkpoint (it holds the Lease, when leader election is on)",
            **fields(configmap=self.label, writer=self.writer, otherWriter=other),
        )
