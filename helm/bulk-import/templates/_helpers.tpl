{{- define "bulk-import.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulk-import.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulk-import.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulk-import.labels" -}}
helm.sh/chart: {{ include "bulk-import.chart" . }}
{{ include "bulk-import.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bulk-import.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulk-import.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* "true" when the database is PostgreSQL: a postgres:// URL, or an existing Secret (which
     holds a postgres:// URL); "" for SQLite, the default. */}}
{{- define "bulk-import.postgres" -}}
{{- if or .Values.database.existingSecret (regexMatch "^postgres(ql)?://" .Values.database.url) -}}
true
{{- end -}}
{{- end -}}

{{/* Whether the pods carry prometheus.io/* annotations: not with the ServiceMonitor, or
     Prometheus would scrape every pod twice. */}}
{{- define "bulk-import.scrapeAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations (not .Values.metrics.serviceMonitor.enabled) -}}
true
{{- end -}}
{{- end -}}

{{- define "bulk-import.sqliteUrl" -}}
{{- .Values.database.url | default "sqlite:///data/bulk-import.db" -}}
{{- end -}}

{{/* The Secret that holds a PostgreSQL URL under DATABASE_URL. */}}
{{- define "bulk-import.secretName" -}}
{{- .Values.database.existingSecret | default (include "bulk-import.fullname" .) -}}
{{- end -}}

{{- define "bulk-import.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "bulk-import.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Values that no schema can refuse, refused here with the reason (every template that
     renders includes it, so `helm template -s` fails as `helm install` does). */}}
{{- define "bulk-import.validate" -}}
{{- if not (include "bulk-import.postgres" .) -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail "several replicas need PostgreSQL: a SQLite file cannot be shared; set replicaCount: 1, or database.url: postgres://... (or database.existingSecret)" -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "autoscaling needs PostgreSQL: a SQLite file cannot be shared; set autoscaling.enabled: false, or database.url: postgres://... (or database.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.metrics.enabled) -}}
{{- fail "tls.enabled needs metrics.enabled: Kubernetes' gRPC probes cannot speak TLS, so the pods are probed on the metrics port's /livez and /readyz" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret with tls.crt and tls.key (and ca.crt for tls.clientCA)" -}}
{{- end -}}
{{- if and .Values.tls.clientCA (not .Values.tls.enabled) -}}
{{- fail "tls.clientCA needs tls.enabled" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) 50051) -}}
{{- fail "metrics.port must differ from the gRPC port, 50051" -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.config.shutdownGraceSeconds)) -}}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.shutdownGraceSeconds, or running uploads are killed before they end cleanly" -}}
{{- end -}}
{{- if and (not (include "bulk-import.postgres" .)) .Values.database.url (not (hasPrefix "sqlite:///data/" .Values.database.url)) -}}
{{- fail (printf "database.url %s is a SQLite file off the data volume, on the read-only root filesystem: use sqlite:///data/NAME.db (or leave it empty for sqlite:///data/bulk-import.db)" .Values.database.url) -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) -}}
{{- fail "ingress.enabled needs ingress.host: the host name the Ingress serves" -}}
{{- end -}}
{{- end -}}
