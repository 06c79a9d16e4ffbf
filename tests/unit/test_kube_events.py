"""webhook.kube.events: the one Event writer, for the allowlist Events and the finding Events."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from tests.unit.test_findings import finding_for
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.kube.events import MAX_MESSAGE, EventWriter, reporting_instance
from webhook.sinks.kube_events import KubernetesEventsSink, finding_event


class FakeApi:
    """Records ``create_namespaced_event`` calls; answers from a script of statuses."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script)
        self.created: list[tuple[str, dict[str, Any]]] = []

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.created.append((namespace, body))
        answer = self.script.pop(0) if self.script else 201
        if isinstance(answer, Exception):
            raise answer
        if answer >= 300:
            raise client.ApiException(status=answer, reason="scripted")


def _configmap() -> Any:
    meta = SimpleNamespace(name="allowlist", namespace="ua", uid="u-1", resource_version="7")
    return SimpleNamespace(metadata=meta)


def test_the_reporting_instance_is_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "ua-sentinel-abc")
    monkeypatch.setenv("NODE_NAME", "node-1")
    assert reporting_instance() == "ua-sentinel-abc"
    assert EventWriter(FakeApi()).instance == "ua-sentinel-abc"
    monkeypatch.delenv("POD_NAME")
    assert reporting_instance() not in ("", "node-1")  # the host name


def test_an_event_about_an_object_names_it_and_caps_the_message() -> None:
    api = FakeApi()
    writer = EventWriter(api, instance="pod-1")
    text = "x" * 5000
    assert writer.about(
        _configmap(), kind="ConfigMap", type_="Warning", reason="AllowlistInvalid", message=text
    )
    ((namespace, body),) = api.created
    assert namespace == body["metadata"]["namespace"] == "ua"
    assert body["metadata"]["name"].startswith("allowlist.")
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "allowlist",
        "namespace": "ua",
        "uid": "u-1",
        "resourceVersion": "7",
    }
    assert (body["type"], body["reason"]) == ("Warning", "AllowlistInvalid")
    assert body["message"] == text[:MAX_MESSAGE]
    assert (body["reportingComponent"], body["reportingInstance"]) == ("ua-sentinel", "pod-1")
    assert body["source"] == {"component": "ua-sentinel", "host": "pod-1"}
    assert body["firstTimestamp"] == body["lastTimestamp"] and body["count"] == 1


def test_already_exists_is_delivered_and_a_failure_never_raises() -> None:
    writer = EventWriter(FakeApi(409, 403, OSError("connection refused")), instance="pod-1")
    about = {"kind": "ConfigMap", "type_": "Normal", "reason": "AllowlistApplied", "message": "ok"}
    assert writer.about(_configmap(), **about) is True  # 409
    assert writer.about(_configmap(), **about) is False  # 403
    assert writer.about(_configmap(), **about) is False  # no connection


def test_create_returns_the_status_and_raises_transport_errors() -> None:
    writer = EventWriter(FakeApi(201, 409, 403, OSError("down")), instance="pod-1")
    assert [writer.create("ua", {}) for _ in range(3)] == [201, 409, 403]
    with pytest.raises(OSError):
        writer.create("ua", {})


def test_a_finding_event_is_about_the_refused_object_or_our_pod(audit_lines: list[bytes]) -> None:
    detector = Detector(Allowlist.from_yaml('agents: ["kubectl/*", "kube-*"]\n'))
    found: list[Finding] = [f for line in audit_lines for f in detector.process(parse_event(line))]
    finding = next(f for f in found if f.kubernetes["audit"].get("objectRef", {}).get("namespace"))
    writer = EventWriter(FakeApi(), instance="tailer-x")
    namespace = finding.kubernetes["audit"]["objectRef"]["namespace"]
    remote = finding_event(writer, finding, namespace, own=False)
    local = finding_event(writer, finding, "ua-sentinel", own=True)
    assert remote["involvedObject"]["namespace"] == remote["metadata"]["namespace"] == namespace
    pod = {"apiVersion": "v1", "kind": "Pod", "namespace": "ua-sentinel", "name": "tailer-x"}
    assert local["involvedObject"] == pod
    for body in (remote, local):
        assert body["metadata"]["name"] == f"ua-sentinel.{finding.id[:24]}.{finding.event.sequence}"
        assert body["metadata"]["annotations"] == {"ua-sentinel.io/finding-id": finding.id}
        assert (body["type"], body["reason"]) == ("Warning", "UnusualAgentForbidden")
        assert body["reportingInstance"] == "tailer-x" and finding.id in body["message"]


def test_a_control_character_in_the_refused_name_is_escaped_in_the_event() -> None:
    """``GET .../secrets/%1B%5B41mEVIL`` audits a name holding a raw ESC."""
    finding = finding_for(
        requestURI="/api/v1/namespaces/team/secrets/%1B%5B41mEVIL",
        verb="get",
        objectRef={
            "resource": "secrets\u202e",
            "namespace": "team",
            "name": "\x1b[41mEVIL",
            "apiVersion": "v1",
        },
    )
    body = finding_event(EventWriter(FakeApi(), instance="tailer-x"), finding, "team", own=False)
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "secrets\\u202e",
        "namespace": "team",
        "name": "\\x1b[41mEVIL",
    }
    assert "\x1b" not in json.dumps(body, ensure_ascii=False) and "\u202e" not in json.dumps(
        body, ensure_ascii=False
    )
    assert body["message"].startswith(f"finding {finding.id} ")


def test_a_real_object_name_is_kept_as_it_is() -> None:
    name = "a" * 200 + ".b-c.d"  # a DNS subdomain, as long as they come
    finding = finding_for(
        verb="get", objectRef={"resource": "secrets", "namespace": "team", "name": name, "apiVersion": "v1"}
    )
    body = finding_event(EventWriter(FakeApi(), instance="tailer-x"), finding, "team", own=False)
    assert body["involvedObject"]["name"] == name and body["involvedObject"]["kind"] == "Secret"


def test_a_namespace_no_object_can_have_sends_the_event_to_our_own() -> None:
    finding = finding_for(
        verb="get",
        objectRef={"resource": "secrets", "namespace": "te\x1bam", "name": "x", "apiVersion": "v1"},
    )
    api = FakeApi()
    sink = KubernetesEventsSink.__new__(KubernetesEventsSink)
    sink._events, sink.namespace = EventWriter(api, instance="tailer-x"), "ua-sentinel"
    sink.deliver(finding)
    ((namespace, body),) = api.created
    assert namespace == "ua-sentinel" and body["involvedObject"]["kind"] == "Pod"


def test_the_event_message_keeps_the_finding_id_and_source_ip_under_a_huge_uri() -> None:
    finding = finding_for(requestURI="/api/v1/namespaces/team/secrets?" + "&" * 700_000)
    body = finding_event(EventWriter(FakeApi(), instance="tailer-x"), finding, "team", own=False)
    assert finding.id in body["message"] and "203.0.113.7" in body["message"]
