{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "ua-sentinel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name.
Kept to 40 characters so that the longest derived name ("-audit-client-ca") fits in 63. */}}
{{- define "ua-sentinel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ua-sentinel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ua-sentinel.tailerName" -}}{{ include "ua-sentinel.fullname" . }}-tailer{{- end }}
{{- define "ua-sentinel.allowlistName" -}}{{ include "ua-sentinel.fullname" . }}-allowlist{{- end }}
{{/* Serving certificate Secret (tls.crt, tls.key, ca.crt). */}}
{{- define "ua-sentinel.tlsSecretName" -}}
{{- if eq .Values.certs.mode "secret" }}{{ .Values.certs.secret.name }}{{ else }}{{ include "ua-sentinel.fullname" . }}-tls{{ end }}
{{- end }}
{{/* The apiserver's audit client certificate (tls.crt, tls.key) and its CA (ca.crt). */}}
{{- define "ua-sentinel.auditClientSecretName" -}}{{ include "ua-sentinel.fullname" . }}-audit-client{{- end }}
{{/* ConfigMaps holding CA certificates given as values (ca.crt). */}}
{{- define "ua-sentinel.auditClientCAName" -}}{{ include "ua-sentinel.fullname" . }}-audit-client-ca{{- end }}
{{- define "ua-sentinel.clientCAName" -}}{{ include "ua-sentinel.fullname" . }}-client-ca{{- end }}
{{- define "ua-sentinel.servingCAName" -}}{{ include "ua-sentinel.fullname" . }}-serving-ca{{- end }}
{{/* The DNS name the apiserver uses for the Service (and the certificate's common name). */}}
{{- define "ua-sentinel.serviceDNS" -}}{{ include "ua-sentinel.fullname" . }}.{{ .Release.Namespace }}.svc{{- end }}

{{/* Labels --------------------------------------------------------------------------------- */}}

{{- define "ua-sentinel.labels" -}}
helm.sh/chart: {{ include "ua-sentinel.chart" . }}
app.kubernetes.io/name: {{ include "ua-sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ua-sentinel
{{- end }}

{{/* Call with (list $ "webhook"). */}}
{{- define "ua-sentinel.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "ua-sentinel.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ua-sentinel.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{/* Allowlist ConfigMap content: the value as given, or the built-in list. */}}
{{- define "ua-sentinel.allowlist" -}}
{{- if kindIs "map" .Values.allowlist }}
{{- toYaml .Values.allowlist }}
{{- else if .Values.allowlist }}
{{- .Values.allowlist }}
{{- else }}
{{- .Files.Get "files/allowlist.yaml" }}
{{- end }}
{{- end }}

{{/* Admission rules ------------------------------------------------------------------------
Default: CREATE, UPDATE, DELETE and CONNECT on every resource, minus events and leases, minus status
subresources. admissionregistration/v1 rules can only include, never exclude, and "*" in apiGroups
would take core events along, so the default is spelled out:
  - the core group with its resources named (all of them but events),
  - one rule over every other API group the cluster serves at install/upgrade time
    (.Capabilities.APIVersions), minus webhook.excludedGroups.
A lone "*" never matches a subresource, so the non-status subresources are listed (the rule resource
"*" + "/exec" means the exec subresource of any resource). A CRD group installed later is covered after the next `helm upgrade`;
set webhook.rules for anything else. */}}
{{- define "ua-sentinel.coreResources" -}}
{{- list "bindings" "configmaps" "endpoints" "limitranges" "namespaces" "nodes" "persistentvolumeclaims" "persistentvolumes" "pods" "podtemplates" "replicationcontrollers" "resourcequotas" "secrets" "serviceaccounts" "services" | toJson }}
{{- end }}
{{- define "ua-sentinel.subresources" -}}
{{- list "*/attach" "*/binding" "*/ephemeralcontainers" "*/eviction" "*/exec" "*/portforward" "*/proxy" "*/resize" "*/scale" "*/token" "*/approval" "*/finalize" "*/rollback" | toJson }}
{{- end }}
{{- define "ua-sentinel.apiGroups" -}}
{{- $groups := dict }}
{{- range $gv := .Capabilities.APIVersions }}
{{- $parts := splitList "/" $gv }}
{{- if and (eq (len $parts) 2) (not (has (first $parts) $.Values.webhook.excludedGroups)) }}
{{- $_ := set $groups (first $parts) true }}
{{- end }}
{{- end }}
{{- keys $groups | sortAlpha | toJson }}
{{- end }}
{{- define "ua-sentinel.webhookRules" -}}
{{- if .Values.webhook.rules }}
{{- toYaml .Values.webhook.rules }}
{{- else }}
{{- $ops := list "CREATE" "UPDATE" "DELETE" "CONNECT" }}
{{- $sub := include "ua-sentinel.subresources" . | fromJsonArray }}
{{- $core := include "ua-sentinel.coreResources" . | fromJsonArray }}
- apiGroups: [""]
  apiVersions: ["*"]
  operations: {{ toJson $ops }}
  resources: {{ concat $core $sub | toJson }}
  scope: "*"
{{- $groups := include "ua-sentinel.apiGroups" . | fromJsonArray }}
{{- if $groups }}
- apiGroups: {{ toJson $groups }}
  apiVersions: ["*"]
  operations: {{ toJson $ops }}
  resources: {{ concat (list "*") $sub | toJson }}
  scope: "*"
{{- end }}
{{- end }}
{{- end }}

{{/* Certificates ---------------------------------------------------------------------------
helm mode: a CA and a serving certificate made with genCA/genSignedCert. An existing Secret is
reused (lookup), so caBundle stays stable across upgrades. `helm template` (and tools that render
with it, like Argo CD) cannot look up, so they make new certificates on every render. */}}
{{- define "ua-sentinel.helmServingCerts" -}}
{{- $name := include "ua-sentinel.tlsSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name | default dict }}
{{- $data := get $existing "data" | default dict }}
{{- if and (get $data "ca.crt") (get $data "tls.crt") (get $data "tls.key") }}
ca.crt: {{ get $data "ca.crt" }}
tls.crt: {{ get $data "tls.crt" }}
tls.key: {{ get $data "tls.key" }}
{{- else }}
{{- $fullname := include "ua-sentinel.fullname" . }}
{{- $dns := include "ua-sentinel.serviceDNS" . }}
{{- $altNames := list $fullname (printf "%s.%s" $fullname .Release.Namespace) $dns (printf "%s.cluster.local" $dns) }}
{{- $ips := list }}
{{- if .Values.service.clusterIP }}{{ $ips = append $ips .Values.service.clusterIP }}{{ end }}
{{- $ca := genCA (printf "%s-ca" $fullname) (int .Values.certs.helm.validityDays) }}
{{- $cert := genSignedCert $dns $ips $altNames (int .Values.certs.helm.validityDays) $ca }}
ca.crt: {{ $ca.Cert | b64enc }}
tls.crt: {{ $cert.Cert | b64enc }}
tls.key: {{ $cert.Key | b64enc }}
{{- end }}
{{- end }}

{{/* The apiserver's audit client certificate, signed by a CA of its own (not the serving CA): the
serving certificate is good for client auth too, and must not open /audit. */}}
{{- define "ua-sentinel.helmAuditClientCerts" -}}
{{- $name := include "ua-sentinel.auditClientSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name | default dict }}
{{- $data := get $existing "data" | default dict }}
{{- if and (get $data "ca.crt") (get $data "tls.crt") (get $data "tls.key") }}
ca.crt: {{ get $data "ca.crt" }}
tls.crt: {{ get $data "tls.crt" }}
tls.key: {{ get $data "tls.key" }}
{{- else }}
{{- $ca := genCA (printf "%s-audit-client-ca" (include "ua-sentinel.fullname" .)) (int .Values.certs.helm.validityDays) }}
{{- $cert := genSignedCert "kube-apiserver-audit" nil nil (int .Values.certs.helm.validityDays) $ca }}
ca.crt: {{ $ca.Cert | b64enc }}
tls.crt: {{ $cert.Cert | b64enc }}
tls.key: {{ $cert.Key | b64enc }}
{{- end }}
{{- end }}

{{/* Pod spec pieces ------------------------------------------------------------------------ */}}

{{- define "ua-sentinel.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* Chart-level checks that JSON schema cannot express; each message says how to fix it. */}}
{{- define "ua-sentinel.validate" -}}
{{- if eq .Values.certs.mode "secret" }}
{{- if not .Values.certs.secret.name }}
{{- fail "certs.mode=secret needs certs.secret.name: a kubernetes.io/tls Secret (tls.crt, tls.key) in the release namespace" }}
{{- end }}
{{- if not .Values.certs.secret.caBundle }}
{{- fail "certs.mode=secret needs certs.secret.caBundle: the PEM of the CA that signed the serving certificate" }}
{{- end }}
{{- if and .Values.audit.requireClientCert (not .Values.certs.secret.auditClientCA) }}
{{- fail "certs.mode=secret with audit.requireClientCert=true needs certs.secret.auditClientCA: the PEM of the CA that signed the apiserver's audit client certificate" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.certs.mode "cert-manager") (not (.Capabilities.APIVersions.Has "cert-manager.io/v1")) }}
{{- fail "certs.mode=cert-manager but the cluster does not serve cert-manager.io/v1: install cert-manager first (or pass --api-versions cert-manager.io/v1 to helm template)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- fail "serviceMonitor.enabled=true but the cluster does not serve monitoring.coreos.com/v1 (Prometheus Operator); install it or pass --api-versions monitoring.coreos.com/v1 to helm template" }}
{{- end }}
{{- end }}

{{/* Managed clusters (source) ---------------------------------------------------------------- */}}

{{- define "ua-sentinel.sourceName" -}}{{ include "ua-sentinel.fullname" . }}-source{{- end }}

{{/* "true" when the ValidatingWebhookConfiguration is installed: webhook.enabled, and on a managed
cluster (source.enabled) only when asked (source.admissionWebhook), since no audit event reaches
serve there and every verdict would be "unknown". */}}
{{- define "ua-sentinel.admissionWebhook" -}}
{{- if and .Values.webhook.enabled (or (not .Values.source.enabled) .Values.source.admissionWebhook) }}true{{ end }}
{{- end }}
