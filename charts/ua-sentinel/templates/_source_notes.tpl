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
{{- if hasPrefix "cloudwatch:" . }}
{{- $group := trimPrefix "cloudwatch:" . }}
{{- $cluster := "CLUSTER" }}
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
{{- end }}
{{- if or (not .Values.source.state) (hasKey .Values.source.state "emptyDir") }}

NOTE: source.state is an emptyDir: each pod keeps its own checkpoint, lost with the pod. After a
  failover the new leader starts from its own checkpoint (none on a fresh pod), not from where the
  old leader stopped: findings in between may be missed or repeated.
{{- end }}
{{- end }}
