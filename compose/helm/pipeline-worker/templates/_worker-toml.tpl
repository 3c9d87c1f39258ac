{{/*
worker.toml, in two parts so each Deployment's checksum/config covers only
what its process reads:
  pipeline-worker.workerToml   [kafka] [runtime] [telemetry] [registry] [[pipelines]]
                               (read by `run`, and by `control`)
  pipeline-worker.controlToml  [control] (read by `control` only; `run` ignores it),
                               so adding a tenant restarts the control plane and
                               not the workers (no consumer-group rebalance).
The ConfigMap holds both; they are rendered unindented (the caller indents).
*/}}
{{- define "pipeline-worker.workerToml" -}}
{{- $limitKeys := dict
  "fuel" "fuel"
  "deadlineMs" "deadline_ms"
  "memoryBytes" "memory_bytes"
  "maxStackBytes" "max_stack_bytes"
  "hostcallFuel" "hostcall_fuel"
  "maxResources" "max_resources"
  "maxTableElements" "max_table_elements"
  "maxOutputBytes" "max_output_bytes" -}}
{{- $tlsDir := trimSuffix "/" .Values.kafka.tls.mountPath -}}
# Rendered by the pipeline-worker Helm chart from its values; edit the values, not this.
# Secrets are not here: they come from the environment
# (PIPELINE_WORKER__KAFKA__LIBRDKAFKA__<property>, from kafka.auth.existingSecret).

[kafka]
brokers = {{ include "pipeline-worker.toml" .Values.kafka.brokers }}
group_id = {{ include "pipeline-worker.toml" .Values.kafka.groupId }}
auto_offset_reset = {{ include "pipeline-worker.toml" .Values.kafka.autoOffsetReset }}

[kafka.librdkafka]
{{- range $k, $v := .Values.kafka.librdkafka }}
{{ include "pipeline-worker.toml" $k }} = {{ include "pipeline-worker.toml" (include "pipeline-worker.scalarString" $v) }}
{{- end }}
{{- with .Values.kafka.tls.caSecret.name }}
"ssl.ca.location" = {{ include "pipeline-worker.toml" (printf "%s/ca/%s" $tlsDir $.Values.kafka.tls.caSecret.key) }}
{{- end }}
{{- with .Values.kafka.tls.clientCertSecret.name }}
"ssl.certificate.location" = {{ include "pipeline-worker.toml" (printf "%s/client/%s" $tlsDir $.Values.kafka.tls.clientCertSecret.certKey) }}
"ssl.key.location" = {{ include "pipeline-worker.toml" (printf "%s/client/%s" $tlsDir $.Values.kafka.tls.clientCertSecret.keyKey) }}
{{- end }}

[runtime]
cache_dir = {{ include "pipeline-worker.toml" .Values.cache.dir }}
epoch_tick_ms = {{ include "pipeline-worker.toml" .Values.runtime.epochTickMs }}
drain_timeout_ms = {{ include "pipeline-worker.toml" .Values.runtime.drainTimeoutMs }}
max_in_flight = {{ include "pipeline-worker.toml" .Values.runtime.maxInFlight }}
pooling = {{ include "pipeline-worker.toml" .Values.runtime.pooling }}

[telemetry]
http_listen = {{ include "pipeline-worker.toml" (printf "0.0.0.0:%d" (int .Values.telemetry.port)) }}
log_format = {{ include "pipeline-worker.toml" .Values.telemetry.logFormat }}
{{- with .Values.telemetry.otlpEndpoint }}
otlp_endpoint = {{ include "pipeline-worker.toml" . }}
{{- end }}
{{- if .Values.telemetry.readyWithoutActivation }}
ready_without_activation = true
{{- end }}
{{- if .Values.registry.enabled }}

# Function store and activation log, shared by every worker and the control plane.
# Store credentials, if any, come from the environment (registry.existingSecret).
# worker_id is left to its default, <HOSTNAME>-<pid>: the pod name.
[registry]
store = {{ include "pipeline-worker.toml" (include "pipeline-worker.registryStore" .) }}
activations_topic = {{ include "pipeline-worker.toml" .Values.registry.activationsTopic }}

[registry.store_options]
{{- range $k, $v := .Values.registry.storeOptions }}
{{ include "pipeline-worker.toml" $k }} = {{ include "pipeline-worker.toml" (include "pipeline-worker.scalarString" $v) }}
{{- end }}
{{- end }}
{{- range $p := .Values.pipelines }}

[[pipelines]]
name = {{ include "pipeline-worker.toml" $p.name }}
{{- with $p.tenant }}
tenant = {{ include "pipeline-worker.toml" . }}
{{- end }}
input_topics = {{ include "pipeline-worker.toml" $p.inputTopics }}
{{- if $p.component }}
component = {{ include "pipeline-worker.toml" (include "pipeline-worker.componentPath" (dict "ctx" $ "component" $p.component)) }}
{{- else }}
# no component: runs what tenant {{ $p.tenant }} activates; idle until the first activation
{{- end }}
output_topics = {{ include "pipeline-worker.toml" $p.outputTopics }}
dead_letter_topic = {{ include "pipeline-worker.toml" $p.deadLetterTopic }}
{{- if hasKey $p "batchSize" }}
batch_size = {{ include "pipeline-worker.toml" $p.batchSize }}
{{- end }}
{{- if hasKey $p "concurrency" }}
concurrency = {{ include "pipeline-worker.toml" $p.concurrency }}
{{- end }}
{{- with $p.limits }}

[pipelines.limits]
{{- range $camel, $snake := $limitKeys }}
{{- if and (hasKey $p.limits $camel) (not (kindIs "invalid" (index $p.limits $camel))) }}
{{ $snake }} = {{ include "pipeline-worker.toml" (index $p.limits $camel) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "pipeline-worker.controlToml" -}}
{{- if .Values.control.enabled }}

# Read only by `pipeline-worker control` (the -control Deployment); `run` ignores it.
# Tokens are not here: each tenant has a SHA-256 of its token, or the name of
# the environment variable that carries it (from control.tenants[].existingSecret).
[control]
listen = {{ include "pipeline-worker.toml" (printf "0.0.0.0:%d" (int .Values.control.port)) }}
max_component_bytes = {{ include "pipeline-worker.toml" .Values.control.maxComponentBytes }}
{{- range $t := .Values.control.tenants }}

[[control.tenants]]
name = {{ include "pipeline-worker.toml" $t.name }}
{{- if $t.existingSecret }}
token_env = {{ include "pipeline-worker.toml" (include "pipeline-worker.tenantTokenEnv" $t.name) }}
{{- else }}
token_sha256 = {{ include "pipeline-worker.toml" ($t.tokenSha256 | lower) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
