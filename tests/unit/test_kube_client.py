"""webhook.kube.client: NS/NAME references and the process's own namespace."""

from __future__ import annotations

import pytest

from webhook.kube.client import own_namespace, parse_configmap_ref, pod_namespace


def test_configmap_reference_parsing() -> None:
    assert parse_configmap_ref("ns/cm") == ("ns", "cm")
    assert parse_configmap_ref("cm", "from-pod-namespace") == ("from-pod-namespace", "cm")
    for bad in ("cm", "/cm", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_configmap_ref(bad)


def test_pod_namespace_is_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ua")
    assert pod_namespace() == own_namespace() == "ua"
    monkeypatch.setenv("POD_NAMESPACE", "")
    assert pod_namespace() is None
    monkeypatch.delenv("POD_NAMESPACE")
    assert pod_namespace() is None
    assert own_namespace()  # the service account's namespace in a pod, else "default"
