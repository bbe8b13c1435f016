{{/*
Names follow upstream's chart so that an upgrade from it adopts the same objects: the Deployment's
selector is immutable and the scratch PVC must keep its name.
*/}}

{{- define "vm-import-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
fullnameOverride as given (the Harvester Addon sets harvester-vm-import-controller); otherwise the
release name, prefixed to the chart name unless it already contains it.
*/}}
{{- define "vm-import-controller.fullname" -}}
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

{{- define "vm-import-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries, except app.kubernetes.io/name which each caller adds. */}}
{{- define "vm-import-controller.commonLabels" -}}
helm.sh/chart: {{ include "vm-import-controller.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vm-import-controller.labels" -}}
app.kubernetes.io/name: {{ include "vm-import-controller.name" . }}
{{ include "vm-import-controller.commonLabels" . }}
{{- end }}

{{- define "vm-import-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vm-import-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vm-import-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vm-import-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The scratch PVC's class: pvcClaim.storageClassName (documented by upstream's values) or
pvcClaim.storageClass (what upstream's template actually read); "-" means the empty class.
*/}}
{{- define "vm-import-controller.storageClass" -}}
{{- /* coalesce of nothing is nil, which include would turn into "<no value>" (and helm then into ""): default it. */ -}}
{{- coalesce .Values.pvcClaim.storageClassName .Values.pvcClaim.storageClass | default "" }}
{{- end }}
