"""The chart's Grafana dashboard and PrometheusRule (grafana.enabled, prometheusRule.enabled).

Checked with real things: the rules `helm template` renders go through Debian's `promtool check
rules` and the unit tests in tests/chart/promtool/ (`promtool test rules`: each alert fires from
sample series, and stays quiet where it should); every metric any dashboard query or alert names
is one a running `serve` or `tail` exposes on /metrics (a `tail` on a file and a `tail --source
cloudwatch:` reading moto's CloudWatch Logs server, for the per-source metrics), or one of the
kube-apiserver's audit metrics (staging/src/k8s.io/apiserver/pkg/audit/metrics.go).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.procs import free_port
from tests.e2e.tools import ToolError, cache_root, ensure_promtool
from tests.integration.server import ServeProcess, make_pki, wait_for
from tests.tailer.moto import aws_env, moto_server

from .conftest import CHART, NAMESPACE, PROMETHEUS, Render

DASHBOARD = CHART / "dashboards" / "ua-sentinel.json"
PROMTOOL_TESTS = Path(__file__).with_name("promtool")
ALERTS = {
    "UASentinelWebhookLatencyNearTimeout",
    "UASentinelJoinMostlyUnknown",
    "UASentinelAllowlistEditRejected",
    "UASentinelSinkBacklogGrowing",
    "UASentinelSinkDroppingFindings",
    "UASentinelAuditEventsDropped",
    "UASentinelSourceLagging",
    "UASentinelSourceFailing",
    "UASentinelAPIServerAuditErrors",
}
ENABLED = {
    "grafana": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "tailer": {"enabled": True},
}
# The kube-apiserver's audit metrics (subsystem apiserver_audit in
# staging/src/k8s.io/apiserver/pkg/audit/metrics.go, the same from 1.20 to today), as exposed.
APISERVER_METRICS = {
    "apiserver_audit_event_total",
    "apiserver_audit_error_total",
    "apiserver_audit_level_total",
    "apiserver_audit_requests_rejected_total",
}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip


@pytest.fixture(scope="session")
def promtool() -> Path:
    try:
        return ensure_promtool(progress=sys.stderr)
    except ToolError as exc:
        pytest.fail(f"could not get promtool: {exc}", pytrace=False)


def test_promtool_is_extracted_from_the_debian_package_when_not_installed(tmp_path: Path) -> None:
    """A fresh machine has no /usr/bin/promtool: the binary comes out of the `prometheus` .deb
    (cached), without installing the package and the server it would start."""
    try:
        tool = ensure_promtool(progress=sys.stderr, system=tmp_path / "no-promtool")
    except ToolError as exc:
        pytest.fail(f"could not get promtool: {exc}", pytrace=False)
    assert tool.parent.parent == cache_root() / "promtool"
    done = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("promtool, version "), done.stdout + done.stderr


def run_promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def rule_groups(render: Render, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rule = render({**ENABLED, **(values or {})}, api_versions=PROMETHEUS).one("PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts(render: Render, values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule_groups(render, values) for r in group["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and query variables."""
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", []) if "expr" in t]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.fullmatch(r"label_values\((.+),\s*\w+\)", query).group(1))  # type: ignore[union-attr]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed
    by "("), keywords, label names inside {...} or by/without/on/ignoring/group_x (...) lists,
    string contents, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # $__rate_interval, ${datasource}
    text = re.sub(r"\boffset\s+\d+\w*", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text):
        name = match.group(1)
        if name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


# --- off by default ------------------------------------------------------------------------------


def test_dashboard_and_rules_are_off_by_default(render: Render) -> None:
    objects = render({}, api_versions=PROMETHEUS)
    assert "PrometheusRule" not in objects.kinds()
    labelled = [c for c in objects.all("ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    assert labelled == []


# --- the dashboard -------------------------------------------------------------------------------


def test_dashboard_configmap_holds_the_dashboard_file_under_the_sidecar_label(render: Render) -> None:
    config = render(ENABLED, api_versions=PROMETHEUS).one("ConfigMap", "uas-ua-sentinel-grafana-dashboard")
    assert config["metadata"]["namespace"] == NAMESPACE
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["data"]["ua-sentinel.json"] == DASHBOARD.read_text().rstrip("\n")
    assert json.loads(config["data"]["ua-sentinel.json"])["uid"] == "ua-sentinel"


def test_dashboard_configmap_namespace_labels_and_annotations_are_settable(render: Render) -> None:
    values = {
        "grafana": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"dashboards": "security"},
            "annotations": {"grafana_folder": "Security"},
        }
    }
    config = render(values).one("ConfigMap", "uas-ua-sentinel-grafana-dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["labels"]["dashboards"] == "security"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1", "added to the default (helm merges maps)"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Security"}


def test_dashboard_data_source_is_a_variable_everywhere() -> None:
    """Grafana installs name their Prometheus differently; a fixed uid would show empty panels."""
    doc = dashboard()
    (var,) = [v for v in doc["templating"]["list"] if v["name"] == "datasource"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")

    def datasources(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                else:
                    yield from datasources(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasources(item)

    found = list(datasources(doc["panels"])) + list(datasources(doc["templating"]["list"]))
    assert len(found) > 40
    assert all(ds == {"type": "prometheus", "uid": "${datasource}"} for ds in found), found


def test_dashboard_queries_parse_as_promql(promtool: Path, tmp_path: Path) -> None:
    """Each query, its Grafana variables filled in, as a recording rule: promtool parses it."""
    exprs = dashboard_queries(dashboard())
    assert len(exprs) > 30
    filled = [e.replace("$__rate_interval", "5m").replace("$namespace", "ua-sentinel") for e in exprs]
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(filled)]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    done = run_promtool(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    """Webhook latency and verdicts, join resolved/unknown, allowlist reloads and failures,
    findings by rule, sink backlog and errors, tailer lag, each cloud source's lag, events/s and
    errors by kind, the apiserver's audit errors."""
    used = set().union(*map(metric_names, dashboard_queries(dashboard())))
    assert {
        "ua_sentinel_request_duration_seconds_bucket",
        "ua_sentinel_admission_reviews_total",
        "ua_sentinel_join_hits_total",
        "ua_sentinel_join_misses_total",
        "ua_sentinel_allowlist_reloads_total",
        "ua_sentinel_allowlist_reload_errors_total",
        "ua_sentinel_findings_total",
        "ua_sentinel_sink_backlog",
        "ua_sentinel_sink_failures_total",
        "ua_sentinel_sink_dropped_total",
        "ua_sentinel_tail_event_lag_seconds",
        "ua_sentinel_source_lag_seconds",
        "ua_sentinel_source_events_total",
        "ua_sentinel_source_errors_total",
        "ua_sentinel_source_last_success_timestamp_seconds",
        "apiserver_audit_error_total",
    } <= used


# --- the alert rules -----------------------------------------------------------------------------


def test_promtool_check_rules_accepts_what_the_chart_renders(
    render: Render, promtool: Path, tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(render)}))
    done = run_promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    assert set(alerts(render)) == ALERTS


def test_prometheus_rule_needs_the_prometheus_operator(render_error: Any) -> None:
    assert "monitoring.coreos.com/v1" in render_error({"prometheusRule": {"enabled": True}})


@pytest.mark.parametrize("unit", sorted(p.name for p in PROMTOOL_TESTS.glob("*.yaml")))
def test_promtool_unit_tests_fire_each_alert(
    render: Render, promtool: Path, tmp_path: Path, unit: str
) -> None:
    """tests/chart/promtool/<unit> against the rules rendered with the chart's defaults."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(render)}))
    shutil.copy(PROMTOOL_TESTS / unit, tmp_path / unit)
    done = run_promtool(promtool, "test", "rules", unit, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS


@pytest.mark.parametrize(
    ("timeout", "ratio", "threshold"), [(3, 0.8, "2.4"), (10, 0.8, "8"), (30, 0.5, "15")]
)
def test_latency_alert_threshold_follows_the_webhook_timeout(
    render: Render, timeout: int, ratio: float, threshold: str
) -> None:
    values = {
        "webhook": {"timeoutSeconds": timeout},
        "prometheusRule": {"enabled": True, "latencyTimeoutRatio": ratio},
    }
    rule = alerts(render, values)["UASentinelWebhookLatencyNearTimeout"]
    assert rule["expr"].split()[-2:] == [">", threshold]
    assert f"{timeout} s timeout" in rule["annotations"]["summary"]


def test_thresholds_and_alert_labels_are_settable(render: Render) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"release": "kube-prometheus-stack"},
            "alertLabels": {"team": "security"},
            "joinUnknownRatio": 0.9,
            "sourceLagSeconds": 60,
        }
    }
    rule = render({**ENABLED, **values}, api_versions=PROMETHEUS).one("PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    found = alerts(render, values)
    assert all(r["labels"]["team"] == "security" and r["labels"]["severity"] for r in found.values())
    assert found["UASentinelJoinMostlyUnknown"]["expr"].split()[-2:] == [">", "0.9"]
    lagging = found["UASentinelSourceLagging"]["expr"]
    assert lagging.count("> 60") == 2 and "300" not in lagging, lagging
    assert found["UASentinelSourceFailing"]["expr"].split()[-2:] == [">", "60"]


@pytest.mark.parametrize(
    "values",
    [
        {"prometheusRule": {"latencyTimeoutRatio": 0}},
        {"prometheusRule": {"joinUnknownRatio": 1.5}},
        {"prometheusRule": {"sourceLagSeconds": "5m"}},
        {"grafana": {"labels": {"grafana_dashboard": 1}}},
    ],
)
def test_schema_refuses_thresholds_and_labels_that_cannot_work(
    render_error: Any, values: dict[str, Any]
) -> None:
    assert "values don't meet the specifications of the schema" in render_error(values)


# --- every metric named is one the code exports ---------------------------------------------------


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{handler="validate", x=~"$namespace"}'
        "[$__rate_interval]))) / ignoring(pod) group_left(sink) b_total offset 5m > 2.4 "
        "and on(pod) deriv(c[15m]) > 0 or d:recorded unless e > bool 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d:recorded", "e"}


def scrape(url: str, context: Any = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        text: str = response.read().decode()
        return text


def sample_names(text: str) -> set[str]:
    """The series names Prometheus stores from an exposition: counters as _total, histograms as
    _bucket/_sum/_count."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


CLOUD_GROUP = "/aws/eks/metrics/cluster"


def _cloud_group(endpoint: str, env: dict[str, str]) -> None:
    """A log group as EKS writes it: one stream, one audit event (recent, so the lag is small)."""
    logs = boto3.client(
        "logs",
        endpoint_url=endpoint,
        region_name=env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    logs.create_log_group(logGroupName=CLOUD_GROUP)
    logs.create_log_stream(logGroupName=CLOUD_GROUP, logStreamName="kube-apiserver-audit-0a1b2c")
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "5d0c6f3e-0000-4000-8000-000000000001",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/configmaps",
        "verb": "list",
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "userAgent": "kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b",
        "objectRef": {"resource": "configmaps", "namespace": "default", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }
    logs.put_log_events(
        logGroupName=CLOUD_GROUP,
        logStreamName="kube-apiserver-audit-0a1b2c",
        logEvents=[{"timestamp": int(now * 1000), "message": json.dumps(event)}],
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """/metrics of a real `serve` (TLS), a real `tail` on a file and a real `tail --source
    cloudwatch:` on moto's server (after reading one event), each with sinks, after some traffic."""
    work = tmp_path_factory.mktemp("monitoring")
    pki = make_pki(work / "pki")
    sinks = ["--sink", "stdout", "--sink", f"file:{work / 'findings.jsonl'}"]
    serve = ServeProcess(work / "serve", cert=pki.serving.cert, key=pki.serving.key, ca=pki.ca, args=sinks)
    log = work / "audit.log"
    log.write_text("")
    port, cloud_port = free_port(), free_port()
    tail_argv = [sys.executable, "-m", "webhook", "tail", "--state", str(work / "state"), *sinks]
    tail_argv += ["--metrics-port", str(port), str(log)]
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server(work))
        env = aws_env(work, endpoint)
        _cloud_group(endpoint, env)
        cloud_argv = [sys.executable, "-m", "webhook", "tail", "--state", str(work / "cloud-state"), *sinks]
        cloud_argv += ["--source", f"cloudwatch:{CLOUD_GROUP}", "--from-start", "--poll-interval", "0.2"]
        cloud_argv += ["--metrics-port", str(cloud_port)]
        children = {}
        for name, argv, extra in (("tail", tail_argv, {}), ("cloud", cloud_argv, env)):
            with open(work / f"{name}.err", "wb") as err:
                children[name] = subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    env={**os.environ, **extra},
                )
        try:
            serve.start()
            with serve.client() as client:
                client.post("/validate", content=b"{}")  # a bad request: one more labelled series

            def metrics(name: str, at: int, ready: str) -> str | None:
                child = children[name]
                if child.poll() is not None:
                    raise AssertionError(
                        f"{name} exited {child.returncode}: {(work / f'{name}.err').read_text()}"
                    )
                try:
                    text = scrape(f"http://127.0.0.1:{at}/metrics")
                except OSError:
                    return None
                return text if ready in text else None

            tail_text: str = wait_for(lambda: metrics("tail", port, ""), timeout=30, what="tail's /metrics")
            cloud_ready = f'ua_sentinel_source_events_total{{source="cloudwatch:{CLOUD_GROUP}"}} 1.0'
            cloud_text: str = wait_for(
                lambda: metrics("cloud", cloud_port, cloud_ready),
                timeout=60,
                what="the cloud tail's first event",
            )
            with serve.client() as client:
                serve_text = client.get("/metrics").text
            return {"serve": serve_text, "tail": tail_text, "cloud": cloud_text}
        finally:
            serve.stop()
            for child in children.values():
                child.terminate()
                child.wait(timeout=60)


def test_a_cloud_tail_exports_every_source_metric_the_rules_and_dashboard_name(
    render: Render, exported: dict[str, str]
) -> None:
    """The ua_sentinel_source_* names in the alerts and dashboard are the ones a `tail --source`
    process really serves, with the source label they group by."""
    queries = dashboard_queries(dashboard()) + [r["expr"] for r in alerts(render).values()]
    used = {n for expr in queries for n in metric_names(expr) if n.startswith("ua_sentinel_source_")}
    assert used >= {
        "ua_sentinel_source_lag_seconds",
        "ua_sentinel_source_events_total",
        "ua_sentinel_source_errors_total",
        "ua_sentinel_source_last_success_timestamp_seconds",
    }
    families = {s.name: s for f in text_string_to_metric_families(exported["cloud"]) for s in f.samples}
    assert used <= set(families), sorted(used - set(families))
    for name in used:
        assert families[name].labels.get("source") == f"cloudwatch:{CLOUD_GROUP}", families[name]
    assert families["ua_sentinel_source_last_success_timestamp_seconds"].value > 0
    assert not any(n.startswith("ua_sentinel_source_") for n in sample_names(exported["tail"])), (
        "a file tailer exports no per-source metrics: the lag alert falls back to its own"
    )


def test_every_metric_the_dashboard_and_alerts_name_is_exported(
    render: Render, exported: dict[str, str]
) -> None:
    names = sample_names(exported["serve"]) | sample_names(exported["tail"]) | sample_names(exported["cloud"])
    assert {"ua_sentinel_sink_backlog", "ua_sentinel_tail_lines_total"} <= names, (
        "both scraped, sinks present"
    )
    queries = {f"dashboard: {e}": e for e in dashboard_queries(dashboard())}
    queries |= {f"alert {name}: {r['expr']}": r["expr"] for name, r in alerts(render).items()}
    unknown = {
        where: sorted(metric_names(expr) - names - APISERVER_METRICS)
        for where, expr in queries.items()
        if metric_names(expr) - names - APISERVER_METRICS
    }
    assert unknown == {}
    assert all(metric_names(expr) for expr in queries.values()), "every query names a metric"


def test_latency_histogram_reaches_the_longest_webhook_timeout(exported: dict[str, str]) -> None:
    """A p99 near timeoutSeconds can only be seen if the histogram has buckets up to it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    longest = schema["properties"]["webhook"]["properties"]["timeoutSeconds"]["maximum"]
    bounds = {
        float(sample.labels["le"])
        for family in text_string_to_metric_families(exported["serve"])
        for sample in family.samples
        if sample.name == "ua_sentinel_request_duration_seconds_bucket" and sample.labels["le"] != "+Inf"
    }
    assert max(bounds) >= longest
