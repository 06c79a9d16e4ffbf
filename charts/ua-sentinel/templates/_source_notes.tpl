{{/* NOTES section 1 on a managed cluster (source.enabled): the cloud-side setup per source, printed
instead of the kube-apiserver flags nobody can set there. One block per source kind the code
supports (the schema admits only those). */}}
{{- define "ua-sentinel.sourceNotes" -}}
{{- $ns := .Release.Namespace -}}
{{- $name := include "ua-sentinel.sourceName" . -}}
{{- $annotations := .Values.source.serviceAccount.annotations -}}
1. Managed cluster: the cloud keeps the audit log, the source Deployment reads it
   -------------------------------------------------------------------------------
Deployment {{ $name }} runs `ua-sentinel tail --source` with {{ .Values.source.replicas }} replica(s); only the holder
of Lease {{ $ns }}/{{ $name }} reads, a standby takes over when it stops renewing.
{{- if include "ua-sentinel.admissionWebhook" . }}

WARNING: source.admissionWebhook=true: the ValidatingWebhookConfiguration is installed as asked. On a
  managed cluster no audit event reaches /audit, so its verdicts stay "unknown" unless you feed /audit.
{{- else }}

The admission webhook (ValidatingWebhookConfiguration) is NOT installed: on a managed cluster the
apiserver's audit events never reach the webhook's /audit, so it could never learn a requester's
agent (every verdict would be "unknown"). Set source.admissionWebhook=true to install it anyway.
{{- end }}
{{- range .Values.source.sources }}
{{- $cluster := $.Values.clusterName | default "CLUSTER" }}
{{- if hasPrefix "cloudwatch:" . }}
{{- $group := trimPrefix "cloudwatch:" . }}
{{- if and (hasPrefix "/aws/eks/" $group) (hasSuffix "/cluster" $group) }}
{{- $cluster = $group | trimPrefix "/aws/eks/" | trimSuffix "/cluster" }}
{{- end }}

EKS: CloudWatch Logs group {{ $group }}
  a) Have EKS send the kube-apiserver audit log there (the "audit" control-plane log type):

     aws eks update-cluster-config --name {{ $cluster }} --logging '{"clusterLogging":[{"types":["audit"],"enabled":true}]}'

  b) Give ServiceAccount {{ $ns }}/{{ $name }} an IAM role (IRSA) allowed to read the group:

     {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
       "Action": ["logs:DescribeLogStreams", "logs:GetLogEvents"],
       "Resource": "arn:aws:logs:REGION:ACCOUNT:log-group:{{ $group }}:*"}]}

     eksctl create iamserviceaccount --cluster {{ $cluster }} --namespace {{ $ns }} --name {{ $name }} \
       --role-name ua-sentinel-source --role-only --attach-policy-arn POLICY_ARN --approve

     then set source.serviceAccount.annotations."eks.amazonaws.com/role-arn" to the role's ARN
     (and source.env AWS_REGION if the pods do not get the cluster's region).
{{- if not (hasKey $annotations "eks.amazonaws.com/role-arn") }}

WARNING: source.serviceAccount.annotations has no eks.amazonaws.com/role-arn: the source pods have no
  AWS identity (unless EKS Pod Identity gives them one) and CloudWatch refuses every read.
{{- end }}
{{- end }}
{{- if hasPrefix "pubsub:" . }}
{{- $parts := splitList "/" (trimPrefix "pubsub:" .) }}
{{- $project := index $parts 1 }}
{{- $sub := index $parts 3 }}
{{- $gsa := get $annotations "iam.gke.io/gcp-service-account" | default (printf "ua-sentinel-source@%s.iam.gserviceaccount.com" $project) }}

GKE: Pub/Sub subscription projects/{{ $project }}/subscriptions/{{ $sub }}
  a) Route the cluster's Kubernetes audit log (Cloud Audit Logs entries of service k8s.io) to a Pub/Sub
     topic with a log sink, let the sink's writer identity publish, and subscribe:

     TOPIC={{ $sub }}-topic
     gcloud pubsub topics create "$TOPIC" --project={{ $project }}
     gcloud logging sinks create ua-sentinel-audit pubsub.googleapis.com/projects/{{ $project }}/topics/$TOPIC --project={{ $project }} \
       --log-filter='resource.type="k8s_cluster" AND resource.labels.cluster_name="{{ $cluster }}" AND protoPayload.serviceName="k8s.io"'
     gcloud pubsub topics add-iam-policy-binding "$TOPIC" --project={{ $project }} --role=roles/pubsub.publisher \
       --member="$(gcloud logging sinks describe ua-sentinel-audit --project={{ $project }} --format='value(writerIdentity)')"
     gcloud pubsub subscriptions create {{ $sub }} --project={{ $project }} --topic="$TOPIC" \
       --ack-deadline=60 --message-retention-duration=7d

     Writes are in the Admin Activity log (always on); reads (get, list, watch) only reach it once Data
     Access audit logs are enabled for the Kubernetes Engine API (IAM > Audit Logs).
  b) Let ServiceAccount {{ $ns }}/{{ $name }} pull as a Google service account (GKE Workload Identity):

     gcloud iam service-accounts create {{ index (splitList "@" $gsa) 0 }} --project={{ $project }}
     gcloud pubsub subscriptions add-iam-policy-binding {{ $sub }} --project={{ $project }} \
       --role=roles/pubsub.subscriber --member=serviceAccount:{{ $gsa }}
     gcloud iam service-accounts add-iam-policy-binding {{ $gsa }} --project={{ $project }} \
       --role=roles/iam.workloadIdentityUser --member="serviceAccount:{{ $project }}.svc.id.goog[{{ $ns }}/{{ $name }}]"

     then set source.serviceAccount.annotations."iam.gke.io/gcp-service-account" to {{ $gsa }}.
{{- if not (hasKey $annotations "iam.gke.io/gcp-service-account") }}

NOTE: source.serviceAccount.annotations has no iam.gke.io/gcp-service-account: the pods pull as their own
  Kubernetes identity, which works only if roles/pubsub.subscriber was granted to that principal directly.
{{- end }}
{{- end }}
{{- if or (hasPrefix "eventhub:" .) (hasPrefix "azblob:" .) }}
{{- $kind := ternary "eventhub" "azblob" (hasPrefix "eventhub:" .) }}
{{- $parts := splitList "/" (trimPrefix (printf "%s:" $kind) .) }}
{{- $first := index (splitList "." (index $parts 0)) 0 }}
{{- $second := index $parts 1 }}
{{- $category := ternary "kube-audit" "kube-audit-admin" (eq $second "insights-logs-kube-audit") }}
{{- $identity := "ua-sentinel-source" }}
{{- $principal := printf "$(az identity show --resource-group RESOURCE_GROUP --name %s --query principalId --output tsv)" $identity }}
{{- if eq $kind "eventhub" }}

AKS: Event Hub {{ $second }} in namespace {{ $first }}
  a) Stream the cluster's audit log there (diagnostic setting, category {{ $category }}; kube-audit also has
     the reads, get and list, at a much higher volume):

     az monitor diagnostic-settings create --name ua-sentinel-audit \
       --resource "$(az aks show --resource-group RESOURCE_GROUP --name {{ $cluster }} --query id --output tsv)" \
       --event-hub {{ $second }} \
       --event-hub-rule "$(az eventhubs namespace authorization-rule show --resource-group RESOURCE_GROUP --namespace-name {{ $first }} --name RootManageSharedAccessKey --query id --output tsv)" \
       --logs '[{"category":"{{ $category }}","enabled":true}]'

     A consumer group of its own (other readers of the hub's $Default would not disturb it):

     az eventhubs eventhub consumer-group create --resource-group RESOURCE_GROUP --namespace-name {{ $first }} \
       --eventhub-name {{ $second }} --name ua-sentinel

     and source.env: [{name: AZURE_EVENTHUB_CONSUMER_GROUP, value: ua-sentinel}].
{{- else }}

AKS: Storage Account {{ $first }}, container {{ $second }}
  a) Archive the cluster's audit log there (diagnostic setting, category {{ $category }}; Azure Monitor
     writes it to container insights-logs-{{ $category }}):

     az monitor diagnostic-settings create --name ua-sentinel-audit \
       --resource "$(az aks show --resource-group RESOURCE_GROUP --name {{ $cluster }} --query id --output tsv)" \
       --storage-account "$(az storage account show --resource-group RESOURCE_GROUP --name {{ $first }} --query id --output tsv)" \
       --logs '[{"category":"{{ $category }}","enabled":true}]'
{{- if not (hasPrefix "insights-logs-kube-audit" $second) }}

WARNING: container {{ $second }} is not one Azure Monitor writes the audit log to (insights-logs-kube-audit-admin
  or insights-logs-kube-audit): nothing will arrive there.
{{- end }}
{{- end }}
  b) Let ServiceAccount {{ $ns }}/{{ $name }} read it as a managed identity (Azure Workload Identity):

     az aks update --resource-group RESOURCE_GROUP --name {{ $cluster }} --enable-oidc-issuer --enable-workload-identity
     az identity create --resource-group RESOURCE_GROUP --name {{ $identity }}
{{- if eq $kind "eventhub" }}
     az role assignment create --role "Azure Event Hubs Data Receiver" \
       --assignee-object-id "{{ $principal }}" --assignee-principal-type ServicePrincipal \
       --scope "$(az eventhubs eventhub show --resource-group RESOURCE_GROUP --namespace-name {{ $first }} --name {{ $second }} --query id --output tsv)"
{{- else }}
     az role assignment create --role "Storage Blob Data Reader" \
       --assignee-object-id "{{ $principal }}" --assignee-principal-type ServicePrincipal \
       --scope "$(az storage account show --resource-group RESOURCE_GROUP --name {{ $first }} --query id --output tsv)/blobServices/default/containers/{{ $second }}"
{{- end }}
     az identity federated-credential create --resource-group RESOURCE_GROUP --identity-name {{ $identity }} --name ua-sentinel-source \
       --issuer "$(az aks show --resource-group RESOURCE_GROUP --name {{ $cluster }} --query oidcIssuerProfile.issuerUrl --output tsv)" \
       --subject system:serviceaccount:{{ $ns }}:{{ $name }} --audience api://AzureADTokenExchange

     then set source.serviceAccount.annotations."azure.workload.identity/client-id" to
     $(az identity show --resource-group RESOURCE_GROUP --name {{ $identity }} --query clientId --output tsv)
{{- if eq $kind "eventhub" }}
     Or, without Workload Identity, a Listen-only connection string in a Secret named in source.envFrom
     (- secretRef: {name: ua-sentinel-azure}):

     az eventhubs eventhub authorization-rule create --resource-group RESOURCE_GROUP --namespace-name {{ $first }} \
       --eventhub-name {{ $second }} --name ua-sentinel-listen --rights Listen
     kubectl -n {{ $ns }} create secret generic ua-sentinel-azure \
       --from-literal=AZURE_EVENTHUB_CONNECTION_STRING="$(az eventhubs eventhub authorization-rule keys list --resource-group RESOURCE_GROUP --namespace-name {{ $first }} --eventhub-name {{ $second }} --name ua-sentinel-listen --query primaryConnectionString --output tsv)"
{{- else }}
     Or, without Workload Identity, a connection string (a read-only SAS) in a Secret, as
     AZURE_STORAGE_CONNECTION_STRING, named in source.envFrom (- secretRef: {name: ua-sentinel-azure}).
{{- end }}
{{- $connection := ternary "AZURE_EVENTHUB_CONNECTION_STRING" "AZURE_STORAGE_CONNECTION_STRING" (eq $kind "eventhub") }}
{{- $envNames := list }}
{{- range $.Values.source.env }}{{ $envNames = append $envNames .name }}{{ end }}
{{- if and (not (hasKey $annotations "azure.workload.identity/client-id")) (not $.Values.source.envFrom) (not (has $connection $envNames)) }}

WARNING: no Azure identity: source.serviceAccount.annotations has no azure.workload.identity/client-id,
  source.env has no {{ $connection }} and source.envFrom is empty, so {{ $kind }}:{{ index $parts 0 }}/{{ $second }} refuses every read.
{{- end }}
{{- end }}
{{- end }}
{{- if or (not .Values.source.state) (hasKey .Values.source.state "emptyDir") }}

NOTE: source.state is an emptyDir: each pod keeps its own checkpoint, lost with the pod. After a
  failover the new leader starts from its own checkpoint (none on a fresh pod), not from where the
  old leader stopped: findings in between may be missed or repeated.
{{- end }}
{{- end }}
