{{/*
Names, labels and small building blocks shared by the templates.
*/}}

{{/* The chart name. */}}
{{- define "redis-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the prefix of every resource name. Release "redis-fleet" (or any release name
that already contains the chart name) gives "redis-fleet", not "redis-fleet-redis-fleet".
*/}}
{{- define "redis-fleet.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings): the full name plus the
namespace, so releases of the same name in two namespaces do not collide ("redis-fleet" alone
for release redis-fleet in namespace redis-fleet).
*/}}
{{- define "redis-fleet.clusterName" -}}
{{- $full := include "redis-fleet.fullname" . }}
{{- $ns := include "redis-fleet.namespace" . }}
{{- if eq $full $ns }}
{{- $full }}
{{- else }}
{{- printf "%s-%s" $full $ns | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The namespace of namespaced resources. */}}
{{- define "redis-fleet.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "redis-fleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource, without a component. */}}
{{- define "redis-fleet.baseLabels" -}}
helm.sh/chart: {{ include "redis-fleet.chart" . }}
app.kubernetes.io/name: {{ include "redis-fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: redis-fleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the operator's resources. */}}
{{- define "redis-fleet.labels" -}}
{{ include "redis-fleet.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pods (immutable in the Deployment selector). */}}
{{- define "redis-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redis-fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "redis-fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "redis-fleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The rebalance Jobs' ServiceAccount. */}}
{{- define "redis-fleet.rebalanceServiceAccountName" -}}
{{- if .Values.rebalance.serviceAccount.create }}
{{- default (printf "%s-rebalance" (include "redis-fleet.fullname" .)) .Values.rebalance.serviceAccount.name }}
{{- else }}
{{- required "rebalance.serviceAccount.name is required when rebalance.serviceAccount.create is false" .Values.rebalance.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag (tag default: appVersion). */}}
{{- define "redis-fleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The sidecar image: sidecar.image, else the operator image. */}}
{{- define "redis-fleet.sidecarImage" -}}
{{- default (include "redis-fleet.image" .) .Values.sidecar.image }}
{{- end }}

{{/* true when the operator watches every namespace (no watchNamespaces). */}}
{{- define "redis-fleet.clusterWide" -}}
{{- if empty .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Rules of the operator in the namespaces it watches (a ClusterRole in cluster-wide mode, a Role
per namespace otherwise). Rebalance Jobs, their pods and the leader Lease live in the release
namespace and are granted there only (see role-local.yaml).
*/}}
{{- define "redis-fleet.operatorRules" -}}
# The resources it reconciles: read and watch; patch for its annotations and the CachePolicy
# finalizer redisfleet.io/cleanup (a JSON patch of metadata.finalizers: no update).
- apiGroups: ["redisfleet.io"]
  resources: ["redisinstances", "cachepolicies"]
  verbs: ["get", "list", "watch", "patch"]
# Status through the status subresource (server-side apply).
- apiGroups: ["redisfleet.io"]
  resources: ["redisinstances/status", "cachepolicies/status"]
  verbs: ["get", "patch"]
# Secrets: get by name, never list or watch. RBAC cannot limit list/watch to some Secrets (not
# by label), and a list returns values, so either would be read access to every Secret here.
# The operator gets the Secrets RedisInstances reference and reads them again every
# --secret-reread (30s): a rotated password is noticed within that period plus a probe
# interval. It writes the generated password Secrets of managed instances and each
# CachePolicy's credentials Secret (<routing ConfigMap>-credentials, the copy sidecars mount)
# by server-side apply: create and patch are what that needs. RBAC cannot name Secrets that do
# not exist yet, so get and patch are not limited by name. No update, no delete (the policy
# owns its Secret: garbage collection removes it).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Routing tables (ConfigMaps), and what a managed Redis consists of: its redis.conf ConfigMap,
# Service and StatefulSet, all owned by their RedisInstance.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on RedisInstances and CachePolicies.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules of the rebalance Jobs in the watched namespaces. */}}
{{- define "redis-fleet.rebalanceRules" -}}
# Read the policy being rebalanced, record progress and checkpoints (annotations, status).
- apiGroups: ["redisfleet.io"]
  resources: ["cachepolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["redisfleet.io"]
  resources: ["cachepolicies/status"]
  verbs: ["get", "patch"]
# Instance credentials and the routing table.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get"]
{{- end }}

{{/*
The sidecar container for an application pod, as a native sidecar (an init container with
restartPolicy Always: it starts before the application and stops after it). Arguments: a dict
with "root" (the chart context). It mounts the policy's credentials Secret (volume
redis-fleet-secrets) under --secrets-dir. Printed by NOTES.txt; the same YAML is in the README
and the example.
*/}}
{{- define "redis-fleet.sidecarContainer" -}}
{{- $root := .root -}}
- name: redis-fleet
  image: {{ include "redis-fleet.sidecarImage" $root }}
  restartPolicy: Always
  args:
    - sidecar
    - --routing-file=/etc/redis-fleet/routing/routing.json
    - --secrets-dir=/etc/redis-fleet/secrets
    - --listen={{ $root.Values.sidecar.listen }}
    - --metrics-addr=0.0.0.0:{{ $root.Values.sidecar.metricsPort }}
  ports:
    - name: fleet-metrics
      containerPort: {{ $root.Values.sidecar.metricsPort }}
  startupProbe:
    httpGet: {path: /readyz, port: fleet-metrics}
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /healthz, port: fleet-metrics}
  resources:
    {{- toYaml $root.Values.sidecar.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities: {drop: ["ALL"]}
    seccompProfile: {type: RuntimeDefault}
  volumeMounts:
    - {name: redis-fleet-routing, mountPath: /etc/redis-fleet/routing, readOnly: true}
    - {name: redis-fleet-secrets, mountPath: /etc/redis-fleet/secrets, readOnly: true}
{{- end }}

{{/*
Egress of the operator and rebalance pods under networkPolicy.enabled (networkpolicy.yaml):
DNS, the API server, Redis by port, and networkPolicy.extraEgress.
*/}}
{{- define "redis-fleet.egressRules" -}}
# DNS, wherever the cluster's resolver runs.
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
# The Kubernetes API server.
- ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.apiServerCidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
# Redis instances: probes, sampling, purges and moved keys.
- ports:
    {{- range .Values.networkPolicy.redisPorts }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
