{{/* Names. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "berth.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Whether the scaled backends are all there: S3, PostgreSQL and Redis. */}}
{{- define "berth.scaled" -}}
{{- if and (eq .Values.storage.type "s3") (or .Values.database.url .Values.database.existingSecret) (or .Values.redis.url .Values.redis.existingSecret) -}}
true
{{- end -}}
{{- end }}

{{/* Refusals: what would only fail at run time. */}}
{{- define "berth.checks" -}}
{{- $many := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $many (not (include "berth.scaled" .)) }}
{{- fail "more than one replica (replicaCount > 1, or autoscaling) needs storage.type=s3, database.url or database.existingSecret, and redis.url or redis.existingSecret: a replica's volume, SQLite file and in-process sessions are its own" }}
{{- end }}
{{- if and (eq .Values.storage.type "s3") (not .Values.storage.s3.bucket) }}
{{- fail "storage.type=s3 needs storage.s3.bucket" }}
{{- end }}
{{- if and (eq .Values.berth.auth "token") (not .Values.berth.externalURL) }}
{{- fail "berth.auth=token needs berth.externalURL: the URL clients reach the registry at, where they send their passwords for tokens" }}
{{- end }}
{{- if and (ne .Values.berth.auth "none") (not .Values.berth.htpasswd.existingSecret) (not .Values.berth.htpasswd.users) }}
{{- fail "berth.auth=basic or token needs users: berth.htpasswd.existingSecret or berth.htpasswd.users" }}
{{- end }}
{{- end }}

{{/* The Secret of the chart's own: what is given inline. */}}
{{- define "berth.secretName" -}}
{{ include "berth.fullname" . }}
{{- end }}

{{/* The registry's name in tokens: berth.service, or the host of berth.externalURL. */}}
{{- define "berth.service" -}}
{{- if .Values.berth.service }}
{{- .Values.berth.service }}
{{- else if .Values.berth.externalURL }}
{{- (urlParse .Values.berth.externalURL).host }}
{{- else }}
{{- "berth" }}
{{- end }}
{{- end }}

{{/* The container's settings: the ConfigMap, and the secrets as variables. */}}
{{- define "berth.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "berth.fullname" . }}
{{- with include "berth.secretEnv" . }}
env:
  {{- . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The secrets, as variables: each from the chart's Secret or the one named. */}}
{{- define "berth.secretEnv" -}}
{{- $secret := include "berth.secretName" . -}}
{{- if or .Values.database.url .Values.database.existingSecret }}
- name: BERTH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default $secret }}
      key: {{ if .Values.database.existingSecret }}url{{ else }}database-url{{ end }}
{{- end }}
{{- if or .Values.redis.url .Values.redis.existingSecret }}
- name: BERTH_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default $secret }}
      key: {{ if .Values.redis.existingSecret }}url{{ else }}redis-url{{ end }}
{{- end }}
{{- if and (eq .Values.storage.type "s3") (or .Values.storage.s3.existingSecret .Values.storage.s3.accessKeyId) }}
- name: BERTH_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.existingSecret | default $secret }}
      key: accessKeyId
- name: BERTH_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.existingSecret | default $secret }}
      key: secretAccessKey
{{- end }}
{{- if and .Values.berth.ui.enabled (ne .Values.berth.auth "none") }}
- name: BERTH_UI_SESSION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.berth.ui.sessionKeySecret | default $secret }}
      key: ui-session-key
{{- end }}
{{- with .Values.berth.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The files Berth reads: users, access rules, the token key, the lifecycle rules. */}}
{{- define "berth.configMounts" -}}
{{- if ne .Values.berth.auth "none" }}
- name: users
  mountPath: /etc/berth/users
  readOnly: true
{{- end }}
{{- if .Values.berth.access.rules }}
- name: access
  mountPath: /etc/berth/access
  readOnly: true
{{- end }}
{{- if .Values.berth.lifecycle }}
- name: lifecycle
  mountPath: /etc/berth/lifecycle
  readOnly: true
{{- end }}
{{- if eq .Values.berth.auth "token" }}
- name: token
  mountPath: /etc/berth/token
  readOnly: true
{{- end }}
{{- end }}

{{- define "berth.configVolumes" -}}
{{- $secret := include "berth.secretName" . -}}
{{- if ne .Values.berth.auth "none" }}
- name: users
  secret:
    secretName: {{ .Values.berth.htpasswd.existingSecret | default $secret }}
    items:
      - key: htpasswd
        path: htpasswd
{{- end }}
{{- if .Values.berth.access.rules }}
- name: access
  configMap:
    name: {{ include "berth.fullname" . }}-access
{{- end }}
{{- if .Values.berth.lifecycle }}
- name: lifecycle
  configMap:
    name: {{ include "berth.fullname" . }}-lifecycle
{{- end }}
{{- if eq .Values.berth.auth "token" }}
- name: token
  secret:
    secretName: {{ .Values.berth.tokenKey.existingSecret | default $secret }}
    items:
      - key: token-key.pem
        path: token-key.pem
{{- end }}
{{- end }}

{{/* Whether the gc CronJob runs: on the scaled backends only (a pod of its own cannot share
     the one replica's ReadWriteOnce volume). */}}
{{- define "berth.gcJob" -}}
{{- if and .Values.gc.enabled (include "berth.scaled" .) -}}
true
{{- end -}}
{{- end }}
