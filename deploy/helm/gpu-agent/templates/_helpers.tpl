{{/* The agent's name: the release's, or <release>-gpu-agent. */}}
{{- define "gpu-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The scaler's name: gpu-scaler beside gpu-agent, <name>-scaler otherwise. */}}
{{- define "gpu-agent.scalerName" -}}
{{- printf "%s-scaler" (include "gpu-agent.fullname" . | trimSuffix "-agent") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpu-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels: as deploy/'s, so that the Services and the scaler select alike. */}}
{{- define "gpu-agent.selectorLabels" -}}
app: {{ include "gpu-agent.fullname" . }}
{{- end -}}

{{- define "gpu-agent.scalerSelectorLabels" -}}
app: {{ include "gpu-agent.scalerName" . }}
{{- end -}}

{{- define "gpu-agent.webConfigEnabled" -}}
{{- if or .Values.webConfig.tls.enabled .Values.webConfig.basicAuth.enabled -}}true{{- end -}}
{{- end -}}

{{/* The kubelet's probes of the web port: HTTPS and the basic auth header with the web config. */}}
{{- define "gpu-agent.probeHTTP" -}}
port: metrics
{{- if .Values.webConfig.tls.enabled }}
scheme: HTTPS
{{- end }}
{{- if .Values.webConfig.basicAuth.enabled }}
httpHeaders:
  - name: Authorization
    value: {{ printf "Basic %s" (printf "%s:%s" .Values.webConfig.basicAuth.username .Values.webConfig.basicAuth.password | b64enc) | quote }}
{{- end }}
{{- end -}}

{{/*
The --app.* flags, one per line: those whose values differ from the
agent's defaults (values.yaml holds the defaults, and test/deploy holds
them equal to the agent's flag set), so that the defaults render deploy/.
App scraping reads the pods from the pod watch: off with it.
*/}}
{{- define "gpu-agent.appArgs" -}}
{{- if or (not .Values.app.enabled) (not .Values.podWatch) }}
- --app.enabled=false
{{- else }}
{{- range $f := list (list "interval" "app.interval" "1s") (list "timeout" "app.timeout" "0s") (list "maxBodyBytes" "app.max-body-bytes" "4194304") (list "maxSeriesPerPod" "app.max-series-per-pod" "2000") (list "maxTargets" "app.max-targets" "256") (list "concurrency" "app.concurrency" "4") }}
{{- $v := index $.Values.app (index $f 0) }}
{{- if kindIs "float64" $v }}{{ $v = int64 $v }}{{ end }}
{{- if ne (toString $v) (index $f 2) }}
- --{{ index $f 1 }}={{ $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The name the scaler expects in the agents' certificates. */}}
{{- define "gpu-agent.agentServerName" -}}
{{- .Values.grpcTLS.agentServerName | default (printf "%s-stream.%s.svc" (include "gpu-agent.fullname" .) .Release.Namespace) -}}
{{- end -}}
