"""The checkpoint's ConfigMap copy without an apiserver: its encoding, its checks, its size limit.

What needs the apiserver (create, update, conflicts, RBAC, restore) is in
tests/e2e/test_state_configmap.py, against the real kube-apiserver 1.20.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import uuid
from typing import Any

import pytest

from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.detect.detector import Detector
from webhook.kube.state_configmap import KEY, MAX_BYTES, StateConfigMap, decode, encode
from webhook.sinks.outbox import DEFAULT_MAX_BACKLOG
from webhook.tail.checkpoint import Checkpoint

REFUSAL = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Metadata",
    "stage": "ResponseComplete",
    "verb": "list",
    "sourceIPs": ["10.0.3.17"],
    "objectRef": {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
    "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
}


class _NoApi:
    """Any API call fails the test: an oversized checkpoint must be refused before the network."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected API call {name}")


def backlog(n: int) -> list[dict[str, Any]]:
    """``n`` real findings (the Detector's, as the tailer saves them) of ``n`` distinct recon tools."""
    detector = Detector(Allowlist.from_yaml('agents: ["kubectl/*"]'))
    findings = []
    for i in range(n):
        ts = f"2026-11-27T18:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i * 7919 % 10**6:06d}Z"
        event = {
            **REFUSAL,
            "auditID": str(uuid.UUID(int=i * 2654435761 + 1)),
            "requestURI": f"/api/v1/namespaces/kube-system/secrets?limit={i}",
            "user": {"username": f"user-{i % 997}", "uid": str(i), "groups": ["system:authenticated"]},
            "userAgent": f"recon-{i}/1.{i % 13}.{i % 7} (linux/amd64)",
            "requestReceivedTimestamp": ts,
            "stageTimestamp": ts,
        }
        findings.extend(detector.process(parse_event(json.dumps(event).encode())))
    findings.extend(detector.flush())
    return [f.to_dict() for f in findings]  # as the tailer saves them


def test_a_copy_decodes_to_the_very_checkpoint_and_the_same_checkpoint_encodes_the_same() -> None:
    checkpoint = Checkpoint(position=None, stats={"lines": 3}, backlog={"stdout": backlog(3)}, written_at=1.5)
    compressed, checksum = encode(checkpoint.to_json())
    assert encode(checkpoint.to_json()) == (compressed, checksum)  # mtime 0: no spurious change
    assert checksum == hashlib.sha256(compressed).hexdigest()
    restored = Checkpoint.from_json(decode(compressed, checksum))
    assert restored == checkpoint


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda gz, sha: (gz, "0" * 64), "checksum mismatch"),
        (lambda gz, sha: (gz, None), "no checksum annotation"),
        (lambda gz, sha: (gz[:-9], hashlib.sha256(gz[:-9]).hexdigest()), "truncated gzip"),
        (lambda gz, sha: (b"{}" + gz, hashlib.sha256(b"{}" + gz).hexdigest()), "not gzip"),
    ],
)
def test_a_torn_or_edited_copy_is_refused_before_it_is_used(mangle: Any, error: str) -> None:
    compressed, checksum = encode(Checkpoint(position=None, stats={"lines": 1}).to_json())
    with pytest.raises(ValueError, match=error):
        decode(*mangle(compressed, checksum))


def test_a_gzip_bomb_in_the_configmap_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB
    with pytest.raises(ValueError, match="decompresses to more than 1048576 bytes"):
        decode(bomb, hashlib.sha256(bomb).hexdigest(), limit=1024 * 1024)


def test_a_checkpoint_too_big_for_the_configmap_is_not_written_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote = StateConfigMap("ns", "state", api=_NoApi(), max_bytes=4096)
    big = Checkpoint(position=None, backlog={"stdout": backlog(200)}).to_json()
    with caplog.at_level(logging.INFO, logger="webhook.kube.state_configmap"):
        assert remote.save(big) is False
        assert remote.save(big) is False
    assert remote.oversize == 2 and remote.writes == 0
    assert remote.last_size > 4096
    (record,) = caplog.records  # one line, not one per checkpoint interval
    assert record.levelname == "ERROR" and "the older copy is kept" in record.getMessage()
    logged: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    assert logged == {
        "configmap": "configmap ns/state",
        "compressedBytes": remote.last_size,
        "limitBytes": 4096,
    }


def test_half_the_default_backlog_fits_the_configmap_and_two_sinks_full_of_it_do_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Measured on real findings (~2.4 KB of JSON each); the numbers go to the test's output."""
    findings = backlog(DEFAULT_MAX_BACKLOG)
    assert len(findings) == DEFAULT_MAX_BACKLOG
    half = Checkpoint(position=None, backlog={"stdout": findings[: DEFAULT_MAX_BACKLOG // 2]}).to_json()
    one = Checkpoint(position=None, backlog={"stdout": findings}).to_json()
    two = Checkpoint(position=None, backlog={"stdout": findings, "http:x": findings}).to_json()
    (gz_half, _), (gz_one, _), (gz_two, _) = encode(half), encode(one), encode(two)
    with capsys.disabled():
        print(
            f"\n{DEFAULT_MAX_BACKLOG} findings backlog: {len(one)} bytes of JSON -> {len(gz_one)} gzip "
            f"({len(one) / len(gz_one):.1f}x); half: {len(gz_half)}; two sinks: {len(gz_two)}; "
            f"limit {MAX_BYTES}"
        )
    assert len(gz_half) + len(KEY) <= MAX_BYTES < len(gz_two)
    remote = StateConfigMap("ns", "state", api=_NoApi())
    assert remote.save(two) is False and remote.oversize == 1


def test_a_process_without_the_lease_never_writes() -> None:
    remote = StateConfigMap("ns", "state", api=_NoApi(), may_write=lambda: False)
    with pytest.raises(OSError, match="does not hold the Lease"):
        remote.save(Checkpoint(position=None).to_json())
    assert remote.writes == 0
