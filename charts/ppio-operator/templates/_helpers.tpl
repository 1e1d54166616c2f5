{{/* The chart name. */}}
{{- define "ppio-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects. */}}
{{- define "ppio-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ppio-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ppio-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ppio-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ppio-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ppio-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ppio-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: by digest when one is set, else by tag (default: appVersion). */}}
{{- define "ppio-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret holding the default API key, if any. */}}
{{- define "ppio-operator.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- include "ppio-operator.fullname" . }}-api-key
{{- end }}
{{- end }}

{{/* The rules the operator needs where it watches PpioInstances. */}}
{{- define "ppio-operator.watchRules" -}}
- apiGroups: ["gpus.ppio.com"]
  resources: ["ppioinstances"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gpus.ppio.com"]
  resources: ["ppioinstances/status"]
  verbs: ["patch"]
{{- if not .Values.credentialsNamespaces }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if include "ppio-operator.exportSecrets" . }}
# Connection Secrets (exports.connectionSecrets.enabled): written only when owned by a
# PpioInstance; reading them is the "get" above (here, with credentialsNamespaces).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: [{{ if .Values.credentialsNamespaces }}"get", {{ end }}"create", "update", "delete"]
{{- end }}
{{- if include "ppio-operator.exportServices" . }}
# Services and EndpointSlices (exports.services.enabled): written only when owned by a
# PpioInstance.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "create", "update", "delete"]
{{- end }}
{{- end }}

{{/*
Whether connection Secrets and Services are exported ("true" or empty). Read without assuming
the values exist: `helm upgrade --reuse-values` from a chart without them reuses the old values.
*/}}
{{- define "ppio-operator.exportSecrets" -}}
{{- if ((.Values.exports | default dict).connectionSecrets | default dict).enabled }}true{{- end }}
{{- end }}

{{- define "ppio-operator.exportServices" -}}
{{- if ((.Values.exports | default dict).services | default dict).enabled }}true{{- end }}
{{- end }}

{{/*
The port of /livez and /readyz. Its default is repeated here because `helm upgrade
--reuse-values` from a release of a chart without health.port reuses the old values only,
without this chart's defaults.
*/}}
{{- define "ppio-operator.healthPort" -}}
{{- (.Values.health | default dict).port | default 8081 | int }}
{{- end }}

{{/*
Who may read /metrics ("kubernetes" or "none"); "kubernetes" also when the values lack it
(`helm upgrade --reuse-values` from a chart without metrics.auth).
*/}}
{{- define "ppio-operator.metricsAuth" -}}
{{- (.Values.metrics | default dict).auth | default "kubernetes" }}
{{- end }}

{{/*
A per-install salt for the pod annotation that rolls the pods when the chart-managed key
changes: kept in that Secret (read back with lookup on upgrades), new on a first install, and
the same for every template of one render. Without it the annotation would be a hash of the
key and public inputs, which anyone who may read the Deployment could test guesses against.
*/}}
{{- define "ppio-operator.apiKeySalt" -}}
{{- if not (hasKey .Values "_apiKeySalt") }}
{{- $salt := ((.Values.apiKey | default dict).checksumSalt | default (randAlphaNum 32)) }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-api-key" (include "ppio-operator.fullname" .)) }}
{{- if and (not (.Values.apiKey | default dict).checksumSalt) $existing $existing.data (hasKey $existing.data "salt") }}
{{- $salt = index $existing.data "salt" | b64dec }}
{{- end }}
{{- $_ := set .Values "_apiKeySalt" $salt }}
{{- end }}
{{- .Values._apiKeySalt }}
{{- end }}

{{/*
Whether a CA bundle for the PPIO API is mounted ("true" or empty): ppio.caBundle names a
ConfigMap or a Secret of the release namespace (not both). Safe with --reuse-values from a
chart without it.
*/}}
{{- define "ppio-operator.caBundle" -}}
{{- $b := ((.Values.ppio | default dict).caBundle | default dict) }}
{{- if and $b.configMap $b.secret }}
{{- fail "ppio.caBundle: set configMap or secret, not both" }}
{{- end }}
{{- if or $b.configMap $b.secret }}true{{- end }}
{{- end }}
