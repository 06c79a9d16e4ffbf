"""The kube-apiserver metrics the chart's alerts and dashboard read, on the real kube-apiserver 1.20:
with its audit webhook down it counts `apiserver_audit_error_total{plugin="webhook"}`, the
series UASentinelAPIServerAuditErrors fires on (tests/chart/test_chart_monitoring.py checks the
ua_sentinel_* names against a running serve and tail)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .harness import ControlPlane, ControlPlaneFactory
from .procs import free_port, wait_until
from .webhooks import WebhookTLS

CHART = Path(__file__).parents[2] / "charts" / "ua-sentinel"


def samples(cp: ControlPlane) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = cp.kubectl("admin", "get", "--raw", "/metrics").stdout
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_apiserver_counts_the_audit_events_its_webhook_backend_drops(
    control_plane_factory: ControlPlaneFactory, webhook_tls: WebhookTLS
) -> None:
    down = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    cp = control_plane_factory(
        audit_webhook_url=f"{down}/audit",
        webhook_ca=webhook_tls.ca,
        client_cert=webhook_tls.apiserver_client,
        extra_args=("--audit-webhook-initial-backoff=100ms",),  # give up after ~1 s, not ~80 s
    )
    webhook_errors = ("apiserver_audit_error_total", frozenset({("plugin", "webhook")}))

    def errors_counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        found = samples(cp)
        return found if found.get(webhook_errors, 0) > 0 else None

    found = wait_until(errors_counted, timeout=90, what="apiserver_audit_error_total{plugin=webhook} > 0")
    names = {name for name, _ in found}
    used = set()
    for path in (CHART / "templates" / "prometheusrule.yaml", CHART / "dashboards" / "ua-sentinel.json"):
        used |= set(re.findall(r"\bapiserver_\w+", path.read_text()))
    assert used >= {"apiserver_audit_error_total", "apiserver_audit_event_total"}
    assert used <= names, f"not on the real kube-apiserver's /metrics: {sorted(used - names)}"
