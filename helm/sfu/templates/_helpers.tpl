{{/* Chart name, possibly overridden. */}}
{{- define "sfu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's resources. */}}
{{- define "sfu.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "sfu.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sfu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the server pods. */}}
{{- define "sfu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sfu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret holding SFU_API_KEYS, if any. */}}
{{- define "sfu.secretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if or .Values.apiKeys.keys .Values.apiKeys.generate }}
{{- include "sfu.fullname" . }}
{{- end }}
{{- end }}

{{/* The key in that Secret. */}}
{{- define "sfu.secretKey" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecretKey }}{{ else }}SFU_API_KEYS{{ end }}
{{- end }}

{{/* "true" when the release creates the Secret holding SFU_API_KEYS. */}}
{{- define "sfu.apiKeysManaged" -}}
{{- if and (not .Values.apiKeys.existingSecret) (or .Values.apiKeys.keys .Values.apiKeys.generate) }}true{{ end }}
{{- end }}

{{/* "true" when clients get a TURN relay (external servers or the bundled coturn). */}}
{{- define "sfu.turnEnabled" -}}
{{- if or .Values.turn.servers .Values.turn.coturn.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the release's Secret holds the TURN shared secret (given or generated). */}}
{{- define "sfu.turnSecretManaged" -}}
{{- if and (include "sfu.turnEnabled" .) (not .Values.turn.existingSecret) }}true{{ end }}
{{- end }}

{{/* The Secret holding the TURN shared secret. */}}
{{- define "sfu.turnSecretName" -}}
{{- .Values.turn.existingSecret | default (include "sfu.fullname" .) }}
{{- end }}

{{/* The key in that Secret. */}}
{{- define "sfu.turnSecretKey" -}}
{{- if .Values.turn.existingSecret }}{{ .Values.turn.existingSecretKey }}{{ else }}SFU_TURN_SECRET{{ end }}
{{- end }}

{{/* TURN URLs handed to clients: turn.servers, or the bundled coturn at turn.coturn.host. */}}
{{- define "sfu.turnServers" -}}
{{- if .Values.turn.servers }}
{{- join "," .Values.turn.servers }}
{{- else if .Values.turn.coturn.enabled }}
{{- $c := .Values.turn.coturn }}
{{- printf "turn:%s:%v?transport=udp,turn:%s:%v?transport=tcp" $c.host $c.port $c.host $c.port }}
{{- end }}
{{- end }}

{{/* Name of the coturn resources. */}}
{{- define "sfu.coturnName" -}}
{{- printf "%s-turn" (include "sfu.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/* Labels that select the coturn pod. */}}
{{- define "sfu.coturnSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sfu.name" . }}-turn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: turn
{{- end }}

{{/* Checks of value combinations the server or the chart cannot run with; fails the render. */}}
{{- define "sfu.validate" -}}
{{- if not (has .Values.kind (list "Deployment" "StatefulSet" "DaemonSet")) }}
{{- fail "kind must be Deployment, StatefulSet or DaemonSet" }}
{{- end }}
{{- if not (or .Values.apiKeys.existingSecret .Values.apiKeys.keys .Values.apiKeys.generate) }}
{{- fail "apiKeys: no API key configured, and the server refuses to start on 0.0.0.0 without one (the chart never runs the public development key). Set apiKeys.generate=true (a random key kept across upgrades), apiKeys.keys (KEY: SECRET pairs) or apiKeys.existingSecret." }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- if and .Values.tls.secretName .Values.tls.selfSigned }}
{{- fail "tls: set either tls.secretName or tls.selfSigned, not both" }}
{{- end }}
{{- if not (or .Values.tls.secretName .Values.tls.selfSigned) }}
{{- fail "tls.enabled needs a certificate: set tls.secretName to an existing kubernetes.io/tls Secret (e.g. from cert-manager), or tls.selfSigned=true" }}
{{- end }}
{{- end }}
{{- $ice := int .Values.media.iceTcpPort }}
{{- if or (lt $ice 0) (gt $ice 65535) }}
{{- fail "media.iceTcpPort must be a port number (0 turns ICE over TCP off)" }}
{{- end }}
{{- if eq $ice (int .Values.http.port) }}
{{- fail "media.iceTcpPort must differ from http.port (both are TCP ports)" }}
{{- end }}
{{- if .Values.turn.coturn.enabled }}
{{- if and (not .Values.turn.servers) (not .Values.turn.coturn.host) }}
{{- fail "turn.coturn.enabled needs turn.coturn.host: the public name or IP clients use to reach the relay (or list the relay's URLs in turn.servers)" }}
{{- end }}
{{- if gt (int .Values.turn.coturn.minPort) (int .Values.turn.coturn.maxPort) }}
{{- fail "turn.coturn.minPort must not be above turn.coturn.maxPort" }}
{{- end }}
{{- end }}
{{- if and .Values.cluster.relay.secret (lt (len .Values.cluster.relay.secret) 16) }}
{{- fail "cluster.relay.secret must be at least 16 characters" }}
{{- end }}
{{- $relay := int .Values.cluster.relay.port }}
{{- if or (lt $relay 0) (gt $relay 65535) }}
{{- fail "cluster.relay.port must be a port number (0 turns the relay off)" }}
{{- end }}
{{- if and .Values.cluster.redis.url .Values.cluster.redis.existingSecret }}
{{- fail "cluster.redis: set either url or existingSecret, not both" }}
{{- end }}
{{- if and .Values.cluster.redis.url (not (regexMatch "^rediss?://" .Values.cluster.redis.url)) }}
{{- fail "cluster.redis.url must be a redis:// URL (redis://HOST:PORT)" }}
{{- end }}
{{- end }}

{{/* Labels on the coturn resources (not the server's selector labels). */}}
{{- define "sfu.coturnLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sfu.coturnSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Whether the chart runs its own Redis (cluster mode without an external one). */}}
{{- define "sfu.ownRedis" -}}
{{- if and .Values.cluster.enabled (not .Values.cluster.redis.url) (not .Values.cluster.redis.existingSecret) }}true{{ end }}
{{- end }}

{{- define "sfu.redisName" -}}
{{ include "sfu.fullname" . }}-redis
{{- end }}

{{- define "sfu.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sfu.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* "true" when the pods run the media relay between them. */}}
{{- define "sfu.relayEnabled" -}}
{{- if and .Values.cluster.enabled (gt (int .Values.cluster.relay.port) 0) }}true{{ end }}
{{- end }}

{{/* "true" when the release's Secret holds the cluster secret (given or generated). */}}
{{- define "sfu.clusterSecretManaged" -}}
{{- if and (include "sfu.relayEnabled" .) (not .Values.cluster.relay.existingSecret) }}true{{ end }}
{{- end }}

{{/* The Secret holding the cluster secret, and its key. */}}
{{- define "sfu.clusterSecretName" -}}
{{- .Values.cluster.relay.existingSecret | default (include "sfu.fullname" .) }}
{{- end }}

{{- define "sfu.clusterSecretKey" -}}
{{- if .Values.cluster.relay.existingSecret }}{{ .Values.cluster.relay.existingSecretKey }}{{ else }}SFU_CLUSTER_SECRET{{ end }}
{{- end }}
