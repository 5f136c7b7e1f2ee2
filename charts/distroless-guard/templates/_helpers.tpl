{{/* The chart name, or nameOverride. */}}
{{- define "distroless-guard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or the release name when
it already contains the chart name, or "release-chart". Kept to 45 characters
so that suffixes such as "-webhook-tls" still fit in 63.
*/}}
{{- define "distroless-guard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "distroless-guard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "distroless-guard.labels" -}}
helm.sh/chart: {{ include "distroless-guard.chart" . }}
{{ include "distroless-guard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distroless-guard
{{- end }}

{{/* Labels that select the operator pods; never change them in an upgrade. */}}
{{- define "distroless-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distroless-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "distroless-guard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "distroless-guard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Names shared by the templates and the operator's flags. */}}
{{- define "distroless-guard.webhookService" -}}
{{ include "distroless-guard.fullname" . }}-webhook
{{- end }}
{{- define "distroless-guard.metricsService" -}}
{{ include "distroless-guard.fullname" . }}-metrics
{{- end }}
{{- define "distroless-guard.tlsSecret" -}}
{{ include "distroless-guard.fullname" . }}-webhook-tls
{{- end }}
{{- define "distroless-guard.leaseName" -}}
{{ include "distroless-guard.fullname" . }}-leader
{{- end }}
{{- define "distroless-guard.webhookConfig" -}}
{{ include "distroless-guard.fullname" . }}
{{- end }}

{{- define "distroless-guard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaces no webhook ever sees: the control plane's, the release's own
(so the operator can always be repaired), and the admin's extra ones.
*/}}
{{- define "distroless-guard.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-node-lease" "kube-public" .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
{{- $ns = append $ns . }}
{{- end }}
{{- toJson ($ns | uniq) }}
{{- end }}

{{/* namespaceSelector of both webhooks. */}}
{{- define "distroless-guard.namespaceSelector" -}}
{{- $extra := .Values.webhook.namespaceSelector | default dict }}
{{- $exprs := list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" (include "distroless-guard.excludedNamespaces" . | fromJsonArray)) }}
{{- range ($extra.matchExpressions | default list) }}
{{- $exprs = append $exprs . }}
{{- end }}
{{- $sel := dict "matchExpressions" $exprs }}
{{- with $extra.matchLabels }}
{{- $_ := set $sel "matchLabels" . }}
{{- end }}
{{- toYaml $sel }}
{{- end }}

{{/* caBundle already written by the operator, kept across upgrades (empty when rendering offline). */}}
{{- define "distroless-guard.existingCaBundle" -}}
{{- $kind := index . 0 }}
{{- $name := index . 1 }}
{{- $existing := lookup "admissionregistration.k8s.io/v1" $kind "" $name }}
{{- if $existing }}
{{- range $existing.webhooks }}
{{- if and .clientConfig .clientConfig.caBundle }}
{{- .clientConfig.caBundle }}
{{- break }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
