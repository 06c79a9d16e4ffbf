"""The chart's `source:` section (managed clusters): the Deployment running `tail --source` with
leader election, its ServiceAccount and least-privilege Role, the admission webhook left out
unless asked, and NOTES giving the cloud-side setup per source kind. Rendered by the real helm."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any, get_args

import pytest
import yaml

from webhook.cli import build_parser
from webhook.inputs.source import SourceKind, SourceSpecError, parse_source

from .conftest import CHART, FULLNAME, NAMESPACE, PROMETHEUS, ROOT, Helm, Render

Notes = Callable[..., str]
SOURCE = f"{FULLNAME}-source"
GROUP = "/aws/eks/prod-eu/cluster"
ROLE_ARN = "arn:aws:iam::123456789012:role/ua-sentinel-source"
EKS: dict[str, Any] = {
    "source": {
        "enabled": True,
        "sources": [f"cloudwatch:{GROUP}"],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN}},
    }
}


def _with(**source: Any) -> dict[str, Any]:
    return {"source": {**EKS["source"], **source}}


def _container(render: Render, values: dict[str, Any]) -> dict[str, Any]:
    deployment = render(values).one("Deployment", SOURCE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_off_by_default_and_the_admission_webhook_stays(render: Render) -> None:
    rendered = render()
    names = {o["metadata"]["name"] for o in rendered.objects}
    assert SOURCE not in names
    assert rendered.all("ValidatingWebhookConfiguration")


def test_the_deployment_runs_tail_on_each_source_with_leader_election_on_its_lease(render: Render) -> None:
    values = _with(sources=[f"cloudwatch:{GROUP}", "cloudwatch:/aws/eks/other/cluster"])
    values["clusterName"] = "prod-eu"
    deployment = render(values).one("Deployment", SOURCE)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SOURCE
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "tail"
    assert _pairs(args, "--source") == [f"cloudwatch:{GROUP}", "cloudwatch:/aws/eks/other/cluster"]
    assert "--leader-elect" in args
    assert _pairs(args, "--leader-elect-lease") == [f"{NAMESPACE}/{SOURCE}"]
    assert _pairs(args, "--leader-elect-lease-duration") == ["15"]
    assert _pairs(args, "--leader-elect-renew-deadline") == ["10"]
    assert _pairs(args, "--leader-elect-retry-period") == ["2"]
    assert _pairs(args, "--state") == ["/var/lib/ua-sentinel"]
    assert _pairs(args, "--allowlist-configmap") == [f"{NAMESPACE}/{FULLNAME}-allowlist"]
    assert _pairs(args, "--sink") == ["stdout"]  # the top-level sinks by default
    assert _pairs(args, "--cluster-name") == ["prod-eu"]
    env = {e["name"] for e in container["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env  # the Lease holder's identity is the pod's name
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/var/lib/ua-sentinel"] == "state"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_its_leader_election_flags_are_the_cli_s(render: Render) -> None:
    """The chart's tail arguments, minus the sources (another part of the CLI), parse with the
    real parser and give the durations the values set."""
    values = _with(
        leaderElection={"leaseDurationSeconds": 30, "renewDeadlineSeconds": 20, "retryPeriodSeconds": 4}
    )
    args = _container(render, values)["args"]
    kept: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--source":
            skip = True
        else:
            kept.append(a)
    parsed = build_parser().parse_args([*kept, "/var/log/audit.log"])
    assert parsed.leader_elect is True
    assert parsed.leader_elect_lease == f"{NAMESPACE}/{SOURCE}"
    assert (parsed.leader_elect_lease_duration, parsed.leader_elect_renew_deadline) == (30, 20)
    assert parsed.leader_elect_retry_period == 4


def test_sinks_of_its_own_replace_the_top_level_ones(render: Render) -> None:
    values = _with(sinks=["k8s-events", "http:http://collector:8080/findings"])
    args = _container(render, values)["args"]
    assert _pairs(args, "--sink") == ["k8s-events", "http:http://collector:8080/findings"]


def test_its_role_allows_its_lease_the_allowlist_and_events_only(render: Render) -> None:
    rendered = render(EKS)
    role = rendered.one("Role", SOURCE)
    rules = [
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())), set(r["verbs"]))
        for r in role["rules"]
    ]
    assert (("coordination.k8s.io",), ("leases",), (SOURCE,), {"get", "update"}) in rules
    # create cannot be limited by name (RBAC sees no name on a create)
    assert (("coordination.k8s.io",), ("leases",), (), {"create"}) in rules
    assert (("",), ("configmaps",), (f"{FULLNAME}-allowlist",), {"get", "list", "watch"}) in rules
    for _groups, resources, _names, verbs in rules:
        assert "secrets" not in resources and "*" not in resources and "*" not in verbs
        assert "delete" not in verbs
    binding = rendered.one("RoleBinding", SOURCE)
    assert binding["roleRef"]["name"] == SOURCE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SOURCE, "namespace": NAMESPACE}]
    assert not [o for o in rendered.all("ClusterRole") if o["metadata"]["name"].startswith(SOURCE)]


def test_cloud_identity_annotations_go_on_its_service_account(render: Render) -> None:
    account = render(EKS).one("ServiceAccount", SOURCE)
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE_ARN}
    gke = {"iam.gke.io/gcp-service-account": "ua-sentinel@proj.iam.gserviceaccount.com"}
    assert (
        render(_with(serviceAccount={"annotations": gke})).one("ServiceAccount", SOURCE)["metadata"][
            "annotations"
        ]
        == gke
    )


def test_azure_workload_identity_labels_the_pods(render: Render) -> None:
    azure = {"azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000000"}
    labels = render(_with(serviceAccount={"annotations": azure})).one("Deployment", SOURCE)["spec"][
        "template"
    ]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    eks_labels = render(EKS).one("Deployment", SOURCE)["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in eks_labels


def test_two_replicas_get_a_disruption_budget_one_does_not(render: Render) -> None:
    pdb = render(EKS, kube_version="1.29.0", api_versions=("policy/v1",)).one("PodDisruptionBudget", SOURCE)
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert (
        render(EKS, kube_version="1.20.0").one("PodDisruptionBudget", SOURCE)["apiVersion"]
        == "policy/v1beta1"
    )
    assert not [
        o for o in render(_with(replicas=1)).all("PodDisruptionBudget") if o["metadata"]["name"] == SOURCE
    ]


def test_managed_mode_leaves_the_admission_webhook_out_unless_asked(render: Render) -> None:
    assert not render(EKS).all("ValidatingWebhookConfiguration")
    assert render(_with(admissionWebhook=True)).all("ValidatingWebhookConfiguration")
    assert not render({**_with(admissionWebhook=True), "webhook": {"enabled": False}}).all(
        "ValidatingWebhookConfiguration"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_with(sources=["/var/log/audit.log"]), "/source/sources/0"),
        (_with(sources=["kafka:audit"]), "/source/sources/0"),
        (_with(sources=[]), "/source/sources"),
        (_with(replicas=0), "/source/replicas"),
        (
            _with(leaderElection={"leaseDurationSeconds": "15s"}),
            "/source/leaderElection/leaseDurationSeconds",
        ),
        (_with(serviceAccount={"name": "x"}), "'name' not allowed"),
        (_with(sinks=["file:/tmp/x"]), "/source/sinks/0"),
        (_with(managed=True), "'managed' not allowed"),
        (_with(envFrom=[{"secret": {"name": "x"}}]), "/source/envFrom/0"),
    ],
)
def test_schema_refuses_what_the_source_cannot_run(
    render_error: Callable[..., str], values: dict[str, Any], message: str
) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


# One valid name per kind, as each cloud spells it (see the chart README for the naming rules).
PUBSUB = "pubsub:projects/prod-eu-4711/subscriptions/ua-sentinel-audit"
EVENTHUB = "eventhub:aks-audit-ns/kube-audit"
AZBLOB = "azblob:aksaudit01/insights-logs-kube-audit-admin"
WI_CLIENT_ID = "00000000-0000-0000-0000-000000000000"


ADMITTED = [
    f"cloudwatch:{GROUP}",
    PUBSUB,
    "pubsub:projects/example.com:audit-prj/subscriptions/S~1+x%2.y_z",
    EVENTHUB,
    "eventhub:aks-audit-ns.servicebus.windows.net/kube.audit_1",
    AZBLOB,
    "azblob:abc/insights-logs-kube-audit",
    "azblob:aksaudit01/insights-logs-kube-audit-admin/resourceId=/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG",
]


@pytest.mark.parametrize("source", ADMITTED)
def test_schema_admits_each_cloud_source_and_the_deployment_reads_it(render: Render, source: str) -> None:
    args = _container(render, _with(sources=[source]))["args"]
    assert _pairs(args, "--source") == [source]


def test_every_source_the_chart_admits_the_cli_reads_once_it_knows_the_kind() -> None:
    """The schema and `tail --source` agree: each admitted example parses to itself with the real
    parser for every kind the CLI reads (SourceKind); a kind it does not read yet is refused as
    such, not as a bad name. Every kind the CLI reads has a form in the schema."""
    known = set(get_args(SourceKind)) - {"file"}
    assert known <= {"cloudwatch", "pubsub", "eventhub", "azblob"}, known
    assert "cloudwatch" in known
    for source in ADMITTED:
        if source.split(":", 1)[0] in known:
            assert parse_source(source).label == source
        else:
            with pytest.raises(SourceSpecError, match="not supported yet"):
                parse_source(source)


@pytest.mark.parametrize(
    "source",
    [
        "pubsub:projects/p/subscriptions/s",  # project ids are 6-30 characters
        "pubsub:projects/prod-eu-4711/subscriptions/goog-audit",  # reserved by Google
        "pubsub:projects/prod-eu-4711/subscriptions/1audit",  # must start with a letter
        "pubsub:projects/prod-eu-4711/topics/audit",  # a topic cannot be pulled
        "eventhub:ns/hub",  # namespaces are 6-50 characters
        "eventhub:aks-audit-ns",  # no hub
        "eventhub:aks-audit-ns/-hub",  # hubs start with a letter or digit
        "azblob:AKSAudit/insights-logs-kube-audit",  # accounts are lowercase
        "azblob:aksaudit01/insights--logs",  # no double hyphen in a container
        "azblob:aksaudit01/ab",  # containers are 3-63 characters
        "azblob:aksaudit01/insights-logs-kube-audit-admin/",  # an empty prefix
        "cloudwatch:",
    ],
)
def test_schema_refuses_names_the_cloud_would_refuse(render_error: Callable[..., str], source: str) -> None:
    error = render_error(_with(sources=[source]))
    assert "values don't meet the specifications of the schema" in error
    assert "/source/sources/0" in error, error


@pytest.mark.parametrize(
    "name", ["AZURE_EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING", "AWS_SECRET_ACCESS_KEY"]
)
def test_a_secret_is_never_a_plain_value(render_error: Callable[..., str], name: str) -> None:
    error = render_error(
        _with(sources=[EVENTHUB], env=[{"name": name, "value": "Endpoint=sb://x/;SharedAccessKey=k"}])
    )
    assert "/source/env/0" in error, error


def test_secrets_come_from_secret_refs_and_plain_settings_stay_plain(render: Render) -> None:
    ref = {"secretKeyRef": {"name": "ua-sentinel-azure", "key": "connection-string"}}
    env = [
        {"name": "AZURE_EVENTHUB_CONNECTION_STRING", "valueFrom": ref},
        {"name": "AWS_REGION", "value": "eu-west-1"},
    ]
    env_from = [{"secretRef": {"name": "ua-sentinel-azure"}}]
    container = _container(render, _with(sources=[EVENTHUB], env=env, envFrom=env_from))
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["AZURE_EVENTHUB_CONNECTION_STRING"] == {
        "name": "AZURE_EVENTHUB_CONNECTION_STRING",
        "valueFrom": ref,
    }
    assert by_name["AWS_REGION"]["value"] == "eu-west-1"
    assert {"POD_NAME", "POD_NAMESPACE"} <= set(by_name)
    assert container["envFrom"] == env_from
    assert "envFrom" not in _container(render, EKS)


@pytest.mark.parametrize("source", [f"cloudwatch:{GROUP}", PUBSUB, EVENTHUB, AZBLOB])
def test_every_source_kind_has_one_reader_on_the_lease(render: Render, source: str) -> None:
    """Detector windows need all events of a user in one process: one reader whatever the kind."""
    deployment = render(_with(sources=[source])).one("Deployment", SOURCE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--leader-elect" in container["args"]
    assert _pairs(container["args"], "--leader-elect-lease") == [f"{NAMESPACE}/{SOURCE}"]


def test_service_monitor_scrapes_the_source_pods_metrics_port(render: Render) -> None:
    """Without it the source alerts would read nothing: the ua_sentinel_source_* series come from
    the source Deployment's own plain-HTTP port."""
    rendered = render(
        {**_with(sources=[PUBSUB]), "serviceMonitor": {"enabled": True}}, api_versions=PROMETHEUS
    )
    monitor = rendered.one("PodMonitor", SOURCE)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    pod = rendered.one("Deployment", SOURCE)["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (container,) = pod["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert not render({"serviceMonitor": {"enabled": True}}, api_versions=PROMETHEUS).all("PodMonitor")


def test_durations_client_go_refuses_fail_the_render_with_a_fix(render_error: Callable[..., str]) -> None:
    error = render_error(
        _with(
            leaderElection={"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2}
        )
    )
    assert "leaseDurationSeconds (10) must exceed renewDeadlineSeconds (10)" in error
    error = render_error(
        _with(leaderElection={"leaseDurationSeconds": 15, "renewDeadlineSeconds": 2, "retryPeriodSeconds": 2})
    )
    assert "renewDeadlineSeconds (2) must exceed 1.2 x retryPeriodSeconds (2)" in error


# --- NOTES -----------------------------------------------------------------------------------


def test_notes_equal_what_helm_install_prints_in_managed_mode(notes: Notes, installed_notes: Notes) -> None:
    assert notes(EKS).strip() == installed_notes(EKS).strip()


def test_notes_for_an_eks_source_give_the_cloud_side_setup_not_apiserver_flags(notes: Notes) -> None:
    text = notes(EKS)
    assert (
        "aws eks update-cluster-config --name prod-eu "
        """--logging '{"clusterLogging":[{"types":["audit"],"enabled":true}]}'"""
    ) in text
    assert f'"Resource": "arn:aws:logs:REGION:ACCOUNT:log-group:{GROUP}:*"' in text
    assert '"logs:DescribeLogStreams", "logs:GetLogEvents"' in text
    assert (
        f"eksctl create iamserviceaccount --cluster prod-eu --namespace {NAMESPACE} --name {SOURCE}" in text
    )
    assert "admission webhook (ValidatingWebhookConfiguration) is NOT installed" in text
    assert f"get lease {SOURCE}" in text
    # Nobody can set kube-apiserver flags on a managed cluster: that section is not printed.
    assert "--audit-webhook-mode" not in text and "audit-webhook.kubeconfig" not in text
    assert "no eks.amazonaws.com/role-arn" not in text


def test_notes_warn_when_the_eks_source_has_no_aws_identity(notes: Notes) -> None:
    text = notes(_with(serviceAccount={"annotations": {}}))
    assert "WARNING: source.serviceAccount.annotations has no eks.amazonaws.com/role-arn" in text


def test_notes_name_the_cluster_placeholder_for_a_group_not_named_by_eks(notes: Notes) -> None:
    text = notes(_with(sources=["cloudwatch:my-audit-copy"]))
    assert "aws eks update-cluster-config --name CLUSTER --logging" in text


def test_notes_say_when_the_admission_webhook_is_installed_anyway(notes: Notes) -> None:
    text = notes(_with(admissionWebhook=True))
    assert "WARNING: source.admissionWebhook=true" in text
    assert "is NOT installed" not in text


def test_notes_say_an_empty_dir_checkpoint_does_not_follow_a_failover(notes: Notes) -> None:
    assert "source.state is an emptyDir" in notes(EKS)
    pvc = {"persistentVolumeClaim": {"claimName": "ua-sentinel-state"}}
    assert "source.state is an emptyDir" not in notes(_with(state=pvc))


def test_notes_without_a_source_are_unchanged(notes: Notes) -> None:
    text = notes()
    assert "--audit-webhook-mode=batch" in text
    assert "Managed cluster" not in text


def test_notes_for_a_pubsub_source_give_the_sink_subscription_and_workload_identity(notes: Notes) -> None:
    gsa = "audit-reader@prod-eu-4711.iam.gserviceaccount.com"
    values = _with(sources=[PUBSUB], serviceAccount={"annotations": {"iam.gke.io/gcp-service-account": gsa}})
    values["clusterName"] = "prod-eu"
    text = notes(values)
    project = "--project=prod-eu-4711"
    assert f'gcloud pubsub topics create "$TOPIC" {project}' in text
    assert (
        "gcloud logging sinks create ua-sentinel-audit "
        f"pubsub.googleapis.com/projects/prod-eu-4711/topics/$TOPIC {project}" in text
    )
    assert (
        """--log-filter='resource.type="k8s_cluster" AND resource.labels.cluster_name="prod-eu" """
        """AND protoPayload.serviceName="k8s.io"'"""
    ) in text
    assert "--role=roles/pubsub.publisher" in text and "--format='value(writerIdentity)'" in text
    assert f'gcloud pubsub subscriptions create ua-sentinel-audit {project} --topic="$TOPIC"' in text
    assert f"--role=roles/pubsub.subscriber --member=serviceAccount:{gsa}" in text
    assert f"gcloud iam service-accounts add-iam-policy-binding {gsa} {project}" in text
    assert (
        "--role=roles/iam.workloadIdentityUser "
        f'--member="serviceAccount:prod-eu-4711.svc.id.goog[{NAMESPACE}/{SOURCE}]"' in text
    )
    assert "gcloud iam service-accounts create audit-reader " in text
    assert "no iam.gke.io/gcp-service-account" not in text
    assert "aws eks" not in text and "az monitor" not in text
    assert "--audit-webhook-mode" not in text


def test_notes_for_a_pubsub_source_without_identity_name_a_default_account(notes: Notes) -> None:
    text = notes(_with(sources=[PUBSUB], serviceAccount={"annotations": {}}))
    assert "--member=serviceAccount:ua-sentinel-source@prod-eu-4711.iam.gserviceaccount.com" in text
    assert 'resource.labels.cluster_name="CLUSTER"' in text
    assert "NOTE: source.serviceAccount.annotations has no iam.gke.io/gcp-service-account" in text


def test_notes_for_an_eventhub_source_give_the_diagnostic_setting_and_the_receiver_role(notes: Notes) -> None:
    values = _with(
        sources=[EVENTHUB],
        serviceAccount={"annotations": {"azure.workload.identity/client-id": WI_CLIENT_ID}},
    )
    values["clusterName"] = "aks-prod"
    text = notes(values)
    assert "az monitor diagnostic-settings create --name ua-sentinel-audit" in text
    assert (
        '--resource "$(az aks show --resource-group RESOURCE_GROUP --name aks-prod --query id --output tsv)"'
        in text
    )
    assert "--event-hub kube-audit" in text
    assert "--namespace-name aks-audit-ns --name RootManageSharedAccessKey --query id" in text
    assert """--logs '[{"category":"kube-audit-admin","enabled":true}]'""" in text
    assert 'az role assignment create --role "Azure Event Hubs Data Receiver"' in text
    assert (
        "az eventhubs eventhub show --resource-group RESOURCE_GROUP "
        "--namespace-name aks-audit-ns --name kube-audit" in text
    )
    assert (
        f"--subject system:serviceaccount:{NAMESPACE}:{SOURCE} --audience api://AzureADTokenExchange" in text
    )
    assert "--query oidcIssuerProfile.issuerUrl" in text
    assert "--enable-oidc-issuer --enable-workload-identity" in text
    assert "--rights Listen" in text and "AZURE_EVENTHUB_CONNECTION_STRING=" in text
    assert "az eventhubs eventhub consumer-group create --resource-group RESOURCE_GROUP" in text
    assert "AZURE_EVENTHUB_CONSUMER_GROUP, value: ua-sentinel" in text
    assert "WARNING: no Azure identity" not in text
    assert "Storage Blob Data Reader" not in text


def test_notes_for_an_azblob_source_give_the_archive_setting_and_the_blob_reader_role(notes: Notes) -> None:
    text = notes(
        _with(sources=["azblob:aksaudit01/insights-logs-kube-audit"], envFrom=[{"secretRef": {"name": "x"}}])
    )
    assert (
        '--storage-account "$(az storage account show '
        "--resource-group RESOURCE_GROUP --name aksaudit01 --query id" in text
    )
    # the container Azure Monitor writes category kube-audit to is insights-logs-kube-audit
    assert """--logs '[{"category":"kube-audit","enabled":true}]'""" in text
    assert 'az role assignment create --role "Storage Blob Data Reader"' in text
    assert '/blobServices/default/containers/insights-logs-kube-audit"' in text
    assert "--event-hub" not in text and "consumer-group" not in text
    assert "WARNING: no Azure identity" not in text  # a connection string comes from envFrom
    assert "is not one Azure Monitor writes" not in text


def test_notes_warn_when_an_azure_source_has_no_identity_or_its_container_gets_nothing(notes: Notes) -> None:
    region = [{"name": "AZURE_AUTHORITY_HOST", "value": "https://login.microsoftonline.com"}]
    text = notes(
        _with(
            sources=[EVENTHUB, "azblob:aksaudit01/my-audit"], serviceAccount={"annotations": {}}, env=region
        )
    )
    assert "refuses every read" in text and text.count("WARNING: no Azure identity") == 2
    assert "source.env has no AZURE_EVENTHUB_CONNECTION_STRING" in text
    assert "source.env has no AZURE_STORAGE_CONNECTION_STRING" in text
    secret = [
        {"name": "AZURE_EVENTHUB_CONNECTION_STRING", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    ]
    text = notes(
        _with(
            sources=[EVENTHUB, "azblob:aksaudit01/my-audit"], serviceAccount={"annotations": {}}, env=secret
        )
    )
    assert text.count("WARNING: no Azure identity") == 1  # the Event Hub has its connection string
    assert "WARNING: container my-audit is not one Azure Monitor writes the audit log to" in text


def test_notes_give_each_configured_source_its_own_setup(notes: Notes, installed_notes: Notes) -> None:
    values = _with(sources=[f"cloudwatch:{GROUP}", PUBSUB, EVENTHUB, AZBLOB])
    text = notes(values)
    assert text.index("EKS: CloudWatch Logs group") < text.index("GKE: Pub/Sub subscription")
    assert text.index("GKE: Pub/Sub subscription") < text.index(
        "AKS: Event Hub kube-audit in namespace aks-audit-ns"
    )
    assert "AKS: Storage Account aksaudit01, container insights-logs-kube-audit-admin" in text
    assert text.strip() == installed_notes(values).strip()


# --- the README's copy-paste paths --------------------------------------------------------------


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], text)


def _readme_helm_installs() -> dict[str, list[str]]:
    """Each `### <cloud>` path of the README's "Managed clusters" section: its `helm install`
    command, shell variables and command substitutions filled in as a shell would."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Managed clusters\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for part in section.split("\n### ")[1:]:
        title = part.split("\n", 1)[0]
        blocks = re.findall(r"```sh\n(.*?)```", part, re.S)
        script = "\n".join(blocks).replace("\\\n", " ")
        variables: dict[str, str] = {}
        for line in script.splitlines():
            if re.fullmatch(r"(\w+=\S+\s*)+", line.strip()):
                for name, value in re.findall(r"(\w+)=(\S+)", line):
                    variables[name] = _expand(value, variables)
        for line in script.splitlines():
            if line.strip().startswith("helm install"):
                line = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "00000000-0000-0000-0000-000000000000", line)
                found[title] = shlex.split(_expand(line, variables))
    return found


def test_readme_has_one_copy_paste_path_per_cloud() -> None:
    titles = list(_readme_helm_installs())
    assert [t.split(":")[0] for t in titles] == ["EKS", "GKE", "AKS", "AKS"], titles


@pytest.mark.parametrize("title", sorted(_readme_helm_installs()))
def test_readme_helm_install_renders_a_source_with_its_cloud_identity(helm: Helm, title: str) -> None:
    """The README's command, as `helm template` (same flags): the schema accepts it, and the
    identity it sets lands on the source's ServiceAccount (or the pods, for Azure)."""
    argv = _readme_helm_installs()[title]
    assert argv[:4] == ["helm", "install", "ua-sentinel", "charts/ua-sentinel"], argv
    flags = [a for a in argv[4:] if a != "--create-namespace"]
    out = helm.run("template", "ua-sentinel", str(CHART), *flags).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    (account,) = [
        o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "ua-sentinel-source"
    ]
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "ua-sentinel-source"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (source,) = [container["args"][i + 1] for i, a in enumerate(container["args"]) if a == "--source"]
    annotations = account["metadata"]["annotations"]
    kind = source.split(":", 1)[0]
    identity = {
        "cloudwatch": "eks.amazonaws.com/role-arn",
        "pubsub": "iam.gke.io/gcp-service-account",
        "eventhub": "azure.workload.identity/client-id",
        "azblob": "azure.workload.identity/client-id",
    }[kind]
    assert identity in annotations and "$" not in annotations[identity], annotations
    if kind in ("eventhub", "azblob"):
        assert deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert not [o for o in objects if o["kind"] == "ValidatingWebhookConfiguration"]
