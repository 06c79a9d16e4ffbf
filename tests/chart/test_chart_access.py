"""Who may do what: RBAC, the NetworkPolicy, the tailer's host access, the monitors and the
`helm test` pod."""

from __future__ import annotations

from typing import Any

from .conftest import FULLNAME, NAMESPACE, PROMETHEUS, Render, arg

TAILER = {"tailer": {"enabled": True}}


def tailer_spec(render: Render, values: dict[str, Any] | None = None) -> dict[str, Any]:
    merged = {"tailer": {"enabled": True, **(values or {})}}
    spec: dict[str, Any] = render(merged).one("DaemonSet")["spec"]["template"]["spec"]
    return spec


# --- RBAC ------------------------------------------------------------------------------------


def test_role_reads_one_configmap_and_writes_events_only(render: Render) -> None:
    rendered = render()
    role = rendered.one("Role")
    allowlist = f"{FULLNAME}-allowlist"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [allowlist],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    assert rendered.one("ConfigMap", allowlist)


def test_role_is_bound_to_the_service_accounts_the_pods_use(render: Render) -> None:
    for values, workloads in (({}, ["Deployment"]), (TAILER, ["Deployment", "DaemonSet"])):
        rendered = render(values)
        binding = rendered.one("RoleBinding")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": rendered.one("Role")["metadata"]["name"],
        }
        subjects = {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]}
        accounts = {
            ("ServiceAccount", a["metadata"]["name"], NAMESPACE) for a in rendered.all("ServiceAccount")
        }
        pod_specs = [rendered.one(kind)["spec"]["template"]["spec"] for kind in workloads]
        used = {("ServiceAccount", spec["serviceAccountName"], NAMESPACE) for spec in pod_specs}
        assert subjects == accounts == used


def test_test_pod_has_no_api_token(render: Render) -> None:
    rendered = render()
    pod = rendered.one("Pod")["spec"]
    assert pod["automountServiceAccountToken"] is False
    # the chart's account, not the namespace's "default" one (which may not exist yet)
    assert pod["serviceAccountName"] == rendered.one("ServiceAccount")["metadata"]["name"]


# --- NetworkPolicy ---------------------------------------------------------------------------


def test_network_policy_is_on_and_opens_only_the_https_port(render: Render) -> None:
    rendered = render()
    policy = rendered.one("NetworkPolicy")
    deployment = rendered.one("Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert "from" not in rule  # no control-plane CIDRs given: any source, /audit still needs the cert


def test_network_policy_admits_only_the_control_plane_when_told_where_it_is(render: Render) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    cidrs = ["10.0.0.10/32", "10.0.0.11/32"]
    values = {"networkPolicy": {"controlPlaneCIDRs": cidrs, "metricsFrom": [prometheus]}}
    rendered = render(values)
    (rule,) = rendered.one("NetworkPolicy")["spec"]["ingress"]
    peers = rule["from"]
    assert peers[:2] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}]
    assert prometheus in peers
    test_pod_labels = rendered.one("Pod")["metadata"]["labels"]
    (test_peer,) = [p for p in peers if "podSelector" in p]
    assert test_peer["podSelector"]["matchLabels"].items() <= test_pod_labels.items()
    assert len(peers) == 4


def test_network_policy_can_be_turned_off(render: Render) -> None:
    assert not render({"networkPolicy": {"enabled": False}}).all("NetworkPolicy")


# --- Tailer ----------------------------------------------------------------------------------


def test_tailer_is_off_by_default(render: Render) -> None:
    assert not render().all("DaemonSet")


def test_tailer_runs_on_control_plane_nodes(render: Render) -> None:
    spec = tailer_spec(render)
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    tolerated = {(t["key"], t["operator"], t["effect"]) for t in spec["tolerations"]}
    assert ("node-role.kubernetes.io/control-plane", "Exists", "NoSchedule") in tolerated
    assert ("node-role.kubernetes.io/master", "Exists", "NoSchedule") in tolerated  # before 1.24


def test_tailer_reads_the_audit_log_directory_read_only(render: Render) -> None:
    spec = tailer_spec(render, {"auditLogPath": "/srv/kube/audit/kube-apiserver.log"})
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert volumes["audit-log"]["hostPath"] == {"path": "/srv/kube/audit", "type": "Directory"}
    assert mounts["audit-log"] == {"name": "audit-log", "mountPath": "/srv/kube/audit", "readOnly": True}
    assert c["args"][-1] == "/srv/kube/audit/kube-apiserver.log"
    state = volumes["state"]["hostPath"]
    assert state == {"path": "/var/lib/ua-sentinel/tailer", "type": "DirectoryOrCreate"}
    assert mounts["state"]["mountPath"] == arg(c["args"], "--state")
    assert "emptyDir" in volumes[mounts["tmp"]["name"]]
    host_paths = [v for v in volumes.values() if "hostPath" in v]
    assert len(host_paths) == 2  # the log directory and the checkpoint, nothing else of the node


def test_tailer_arguments_and_identity(render: Render) -> None:
    spec = tailer_spec(render)
    (c,) = spec["containers"]
    args = c["args"]
    assert args[0] == "tail"
    assert arg(args, "--allowlist-configmap") == f"{NAMESPACE}/{FULLNAME}-allowlist"
    assert arg(args, "--sink") == "stdout" and arg(args, "--metrics-port") == "9090"
    sinks = ["stdout", "k8s-events", "file:/state/findings.jsonl", "falcosidekick:http://sk:2801/"]
    (several,) = tailer_spec(render, {"sinks": sinks})["containers"]
    assert [several["args"][i + 1] for i, a in enumerate(several["args"]) if a == "--sink"] == sinks
    assert "--cluster-name" not in args
    assert args[-1] == "/var/log/kubernetes/audit/audit.log"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The apiserver writes the log as root, mode 0600: the tailer reads it as uid 0, but with no
    # capability, no privilege escalation and a read-only root filesystem.
    sc = c["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    # ...and can be moved to an unprivileged uid where the log is group-readable.
    moved = tailer_spec(
        render,
        {
            "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 4},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True},
        },
    )
    assert moved["securityContext"]["runAsGroup"] == 4
    assert moved["containers"][0]["securityContext"]["runAsUser"] == 65532


# --- Monitors and the helm test pod ----------------------------------------------------------


def test_service_monitor_scrapes_metrics_over_verified_tls(render: Render) -> None:
    rendered = render({"serviceMonitor": {"enabled": True}, **TAILER}, api_versions=PROMETHEUS)
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "https" and endpoint["scheme"] == "https" and endpoint["path"] == "/metrics"
    assert endpoint["tlsConfig"]["serverName"] == f"{FULLNAME}.{NAMESPACE}.svc"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": f"{FULLNAME}-tls", "key": "ca.crt"}
    (pod_endpoint,) = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["port"] == "metrics"
    assert not render().all("ServiceMonitor")


def test_service_monitor_needs_the_prometheus_operator(render_error: Any) -> None:
    assert "monitoring.coreos.com/v1" in render_error({"serviceMonitor": {"enabled": True}})


def test_helm_test_pod_gets_readyz_over_tls_through_the_service(render: Render) -> None:
    rendered = render()
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    service = rendered.one("Service")
    port = service["spec"]["ports"][0]["port"]
    assert env["URL"] == f"https://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/readyz"
    script = c["args"][0]
    assert 'cafile="/ca/ca.crt"' in script and "urlopen" in script
    compile(script, "readyz-test", "exec")
    (volume,) = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == f"{FULLNAME}-tls"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_both_processes_get_the_cluster_name_and_the_webhook_its_sinks(render: Render) -> None:
    sinks = ["stdout", "falcosidekick:http://falcosidekick.falco:2801/", "otlp:http://otel:4318"]
    rendered = render({**TAILER, "clusterName": "prod-eu-1", "sinks": sinks})
    (serve,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    (tail,) = rendered.one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert arg(serve["args"], "--cluster-name") == arg(tail["args"], "--cluster-name") == "prod-eu-1"
    assert [serve["args"][i + 1] for i, a in enumerate(serve["args"]) if a == "--sink"] == sinks
    (default,) = render().one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert arg(default["args"], "--sink") == "stdout" and "--cluster-name" not in default["args"]
