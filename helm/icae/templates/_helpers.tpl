{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "icae.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release name. The longest suffix the chart appends is "-encoder-headless"
(17 characters), so the base name is cut to 46.
*/}}
{{- define "icae.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label: name-version.
*/}}
{{- define "icae.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Call with (dict "root" $ "component" "encoder").
*/}}
{{- define "icae.selectorLabels" -}}
app.kubernetes.io/name: {{ include "icae.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels. Call with (dict "root" $ "component" "encoder").
*/}}
{{- define "icae.labels" -}}
helm.sh/chart: {{ include "icae.chart" .root }}
{{ include "icae.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "icae.name" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of a component's objects: <fullname>-<component>.
*/}}
{{- define "icae.componentName" -}}
{{- printf "%s-%s" (include "icae.fullname" .root) .component }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "icae.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "icae.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The two services the chart runs and what differs between them.
*/}}
{{- define "icae.components" -}}
encoder:
  binary: encoder-svc
  grpcService: icae.v1.EncoderService
decoder:
  binary: decoder-svc
  grpcService: icae.v1.DecoderService
{{- end }}

{{/*
Container image of a component: the CUDA image when gpu.enabled.
Call with (dict "root" $ "values" $.Values.encoder).
*/}}
{{- define "icae.image" -}}
{{- $image := .values.image }}
{{- $tag := default .root.Chart.AppVersion $image.tag }}
{{- if .values.gpu.enabled }}
{{- $repository := default $image.repository .values.gpu.image.repository }}
{{- $gpuTag := default (printf "%s%s" $tag .values.gpu.tagSuffix) .values.gpu.image.tag }}
{{- printf "%s:%s" $repository $gpuTag }}
{{- else }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Redis: Secret name and key of the password, or nothing when there is no password.
*/}}
{{- define "icae.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- default (printf "%s-redis" (include "icae.fullname" .)) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{- define "icae.redis.secretKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.externalRedis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
ICAE_REDIS_URL. Never carries a password: that comes from the Secret as ICAE_REDIS_PASSWORD.
*/}}
{{- define "icae.redis.url" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:%d/%d" (include "icae.fullname" .) (int .Values.redis.port) (int .Values.redis.database) }}
{{- else }}
{{- $url := required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url }}
{{- if regexMatch "^[a-z+]+://[^/]*@" $url }}
{{- fail "externalRedis.url must not carry credentials: put the password in a Secret (externalRedis.existingSecret)" }}
{{- end }}
{{- if not (regexMatch "^rediss?(\\+cluster)?://" $url) }}
{{- fail "externalRedis.url must start with redis://, rediss://, redis+cluster:// or rediss+cluster://" }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}

{{/*
Whether a CA certificate for Redis TLS is mounted.
*/}}
{{- define "icae.redis.caCertEnabled" -}}
{{- if and (not .Values.redis.enabled) (or .Values.externalRedis.caCert.existingSecret .Values.externalRedis.caCert.existingConfigMap) }}true{{ end }}
{{- end }}
