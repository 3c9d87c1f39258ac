{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "pipeline-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name: release-chart unless the release name already
contains the chart name, truncated to 63 characters.
*/}}
{{- define "pipeline-worker.fullname" -}}
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

{{- define "pipeline-worker.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "pipeline-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: stable for the life of the release (never add to these).
*/}}
{{- define "pipeline-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pipeline-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pipeline-worker.labels" -}}
helm.sh/chart: {{ include "pipeline-worker.chart" . }}
{{ include "pipeline-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: pipeline-worker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The control plane (control.enabled). Its pods must not match the worker's
selector (name + instance, immutable), or the worker's PDB, HPA/KEDA scale
selector and metrics Service would count them: they carry the name
"<name>-control" instead.
*/}}
{{- define "pipeline-worker.control.fullname" -}}
{{- printf "%s-control" (include "pipeline-worker.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "pipeline-worker.control.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-control" (include "pipeline-worker.name" . | trunc 55 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pipeline-worker.control.labels" -}}
helm.sh/chart: {{ include "pipeline-worker.chart" . }}
{{ include "pipeline-worker.control.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: control
app.kubernetes.io/part-of: pipeline-worker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
metadata.annotations of every resource (commonAnnotations plus the given dict).
Usage: include "pipeline-worker.annotations" (dict "ctx" $ "extra" .Values.x.annotations)
*/}}
{{- define "pipeline-worker.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (default dict .ctx.Values.commonAnnotations) -}}
{{- with $all -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "pipeline-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pipeline-worker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Image reference: [registry/]repository(@digest|:tag).
*/}}
{{- define "pipeline-worker.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $repo := .Values.image.repository -}}
{{- if $registry -}}{{- $repo = printf "%s/%s" $registry $repo -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "pipeline-worker.imagePullSecrets" -}}
{{- $secrets := concat (default list .Values.global.imagePullSecrets) (default list .Values.imagePullSecrets) | uniq -}}
{{- if $secrets -}}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end -}}
{{- end -}}

{{- define "pipeline-worker.cacheClaimName" -}}
{{- default (printf "%s-cache" (include "pipeline-worker.fullname" .)) .Values.cache.persistence.existingClaim -}}
{{- end -}}

{{- define "pipeline-worker.functionsClaimName" -}}
{{- default (printf "%s-functions" (include "pipeline-worker.fullname" .)) .Values.functions.persistence.existingClaim -}}
{{- end -}}

{{- define "pipeline-worker.registryClaimName" -}}
{{- default (printf "%s-registry" (include "pipeline-worker.fullname" .)) .Values.registry.persistence.existingClaim -}}
{{- end -}}

{{/*
registry.store as rendered: registry.store when set, else file://<registry.persistence.mountPath>.
*/}}
{{- define "pipeline-worker.registryStore" -}}
{{- if .Values.registry.store -}}
{{- .Values.registry.store -}}
{{- else if .Values.registry.persistence.enabled -}}
{{- printf "file://%s" (trimSuffix "/" .Values.registry.persistence.mountPath) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the rendered store is a directory (a path or file://), which only
the pods that mount the same volume see; empty for object stores (s3://, ...).
*/}}
{{- define "pipeline-worker.registryStoreIsLocal" -}}
{{- $s := include "pipeline-worker.registryStore" . -}}
{{- if or (not (contains "://" $s)) (hasPrefix "file://" $s) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when more than one worker pod may run (replicaCount > 1, HPA or KEDA).
*/}}
{{- define "pipeline-worker.multiReplica" -}}
{{- if or .Values.autoscaling.enabled .Values.keda.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/*
Environment variable that carries a tenant's token (control.tenants[].existingSecret).
*/}}
{{- define "pipeline-worker.tenantTokenEnv" -}}
{{- printf "PIPELINE_WORKER_TENANT_TOKEN_%s" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
Env entries shared by the worker and the control containers: Kafka
credentials (both talk to Kafka: the control plane writes the activation log)
and the function store's S3 credentials. Indented by the caller.
*/}}
{{- define "pipeline-worker.sharedEnv" -}}
{{- with .Values.cache.keySecret.name }}
# Authenticates cached artifacts across restarts and pods (README "Security model").
- name: PIPELINE_WORKER_CACHE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.cache.keySecret.key | quote }}
{{- end }}
{{- if .Values.kafka.auth.existingSecret }}
# Kafka credentials: env overrides of [kafka.librdkafka] (the path splits on
# "__" only, so the dotted librdkafka key survives; keys are lowercased).
{{- range $property, $key := .Values.kafka.auth.secretKeys }}
- name: {{ printf "PIPELINE_WORKER__KAFKA__LIBRDKAFKA__%s" $property | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.kafka.auth.existingSecret | quote }}
      key: {{ $key | quote }}
{{- end }}
{{- end }}
{{- if and .Values.registry.enabled .Values.registry.existingSecret }}
# Function store credentials from registry.existingSecret: as the usual AWS_*
# variables, and as [registry.store_options] overrides (the worker builds its
# S3 client from store_options, not from AWS_* variables).
{{- $keys := .Values.registry.secretKeys }}
{{- range $var, $key := dict "AWS_ACCESS_KEY_ID" $keys.accessKeyId "AWS_SECRET_ACCESS_KEY" $keys.secretAccessKey "AWS_SESSION_TOKEN" $keys.sessionToken }}
{{- if $key }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.registry.existingSecret | quote }}
      key: {{ $key | quote }}
- name: {{ printf "PIPELINE_WORKER__REGISTRY__STORE_OPTIONS__%s" $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.registry.existingSecret | quote }}
      key: {{ $key | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Volume mounts shared by the worker and the control containers (Kafka TLS, the
registry PVC). Indented by the caller.
*/}}
{{- define "pipeline-worker.sharedVolumeMounts" -}}
{{- $tlsDir := trimSuffix "/" .Values.kafka.tls.mountPath -}}
{{- if and .Values.registry.enabled .Values.registry.persistence.enabled }}
- name: registry
  mountPath: {{ .Values.registry.persistence.mountPath }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-tls-ca
  mountPath: {{ printf "%s/ca" $tlsDir }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret.name }}
- name: kafka-tls-client
  mountPath: {{ printf "%s/client" $tlsDir }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Pod volumes matching pipeline-worker.sharedVolumeMounts. Indented by the caller.
*/}}
{{- define "pipeline-worker.sharedVolumes" -}}
{{- if and .Values.registry.enabled .Values.registry.persistence.enabled }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ include "pipeline-worker.registryClaimName" . }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-tls-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.tls.caSecret.key }}
        path: {{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret.name }}
- name: kafka-tls-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.tls.clientCertSecret.certKey }}
        path: {{ .Values.kafka.tls.clientCertSecret.certKey }}
      - key: {{ .Values.kafka.tls.clientCertSecret.keyKey }}
        path: {{ .Values.kafka.tls.clientCertSecret.keyKey }}
{{- end }}
{{- end -}}

{{/*
Absolute path of a pipeline's component: relative paths resolve against functions.dir.
Usage: include "pipeline-worker.componentPath" (dict "ctx" $ "component" .component)
*/}}
{{- define "pipeline-worker.componentPath" -}}
{{- if hasPrefix "/" .component -}}
{{- .component -}}
{{- else -}}
{{- printf "%s/%s" (trimSuffix "/" .ctx.Values.functions.dir) .component -}}
{{- end -}}
{{- end -}}

{{/*
A TOML value. Strings, numbers, booleans and arrays of those go through toJson:
JSON strings are TOML basic strings, and integers come out without exponent
(Helm reads YAML numbers as float64; `toJson` prints 134217728, `print` would
print 1.34217728e+08).
*/}}
{{- define "pipeline-worker.toml" -}}
{{- toJson . -}}
{{- end -}}

{{/*
A scalar as a string without float formatting surprises: Helm reads YAML
numbers as float64, and `toString 2097152` gives "2.097152e+06"; toJson gives
"2097152". Strings pass through unchanged.
*/}}
{{- define "pipeline-worker.scalarString" -}}
{{- if kindIs "string" . -}}{{- . -}}{{- else -}}{{- toJson . -}}{{- end -}}
{{- end -}}

{{/*
Render-time checks that the schema cannot express. Included by the Deployment.
*/}}
{{- define "pipeline-worker.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: KEDA creates and owns its own HorizontalPodAutoscaler for the Deployment; enable only one of them" -}}
{{- end -}}
{{- $drain := int64 .Values.runtime.drainTimeoutMs -}}
{{- $grace := int64 .Values.terminationGracePeriodSeconds -}}
{{- if lt (mul $grace 1000) (add $drain 5000) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least runtime.drainTimeoutMs/1000 + 5 (%d ms + 5 s = %s s): the drain, then the final commit and exit; Kubernetes would SIGKILL the worker before it has drained and committed" $grace $drain (toString (divf (add $drain 5000) 1000))) -}}
{{- end -}}
{{- if .Values.startupProbe.enabled -}}
{{- $budget := mul (int64 .Values.startupProbe.failureThreshold) (int64 .Values.startupProbe.periodSeconds) -}}
{{- $need := mul 15 (len .Values.pipelines) -}}
{{- if lt $budget (int64 $need) -}}
{{- fail (printf "startupProbe allows %d s (failureThreshold %d x periodSeconds %d) but %d pipelines may take up to 15 s each to compile (%d s) before the worker listens: raise startupProbe.failureThreshold" $budget (int64 .Values.startupProbe.failureThreshold) (int64 .Values.startupProbe.periodSeconds) (len .Values.pipelines) $need) -}}
{{- end -}}
{{- end -}}
{{- include "pipeline-worker.validateSecretKeys" . -}}
{{- $_ := include "pipeline-worker.controlMemory" . -}}
{{- $names := dict -}}
{{- range $i, $p := .Values.pipelines -}}
{{- if hasKey $names $p.name -}}
{{- fail (printf "pipelines[%d].name: duplicate pipeline name %q (each pipeline is its own consumer group)" $i $p.name) -}}
{{- end -}}
{{- $_ := set $names $p.name true -}}
{{- end -}}
{{- if and .Values.keda.triggerAuthentication.create .Values.keda.authenticationRef -}}
{{- fail "keda.triggerAuthentication.create and keda.authenticationRef are mutually exclusive" -}}
{{- end -}}
{{- if and .Values.keda.enabled .Values.keda.triggerAuthentication.create (not (include "pipeline-worker.kedaSecretRefs" . | fromJsonArray)) -}}
{{- fail "keda.triggerAuthentication.create: nothing to put in it: no kafka.auth.secretKeys (sasl.username, sasl.password, ssl.key.password), no kafka.tls secrets and no keda.triggerAuthentication.secretTargetRef" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not (or .Values.keda.triggerAuthentication.create .Values.keda.authenticationRef)) (or .Values.kafka.auth.secretKeys .Values.kafka.tls.clientCertSecret.name) -}}
{{- fail "keda.enabled with Kafka credentials (kafka.auth.secretKeys or kafka.tls.clientCertSecret) but no TriggerAuthentication: the KEDA scaler could not authenticate to the brokers. Set keda.triggerAuthentication.create=true (it uses the workers' Secrets) or keda.authenticationRef" -}}
{{- end -}}
{{- range .Values.keda.triggerAuthentication.secretTargetRef -}}
{{- if and (not .name) (not $.Values.kafka.auth.existingSecret) -}}
{{- fail (printf "keda.triggerAuthentication.secretTargetRef (parameter %q): set name, or kafka.auth.existingSecret" .parameter) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) -}}
{{- fail "autoscaling.enabled needs autoscaling.targetCPUUtilizationPercentage and/or autoscaling.targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- if and .Values.kafka.tls.caSecret.name (hasKey .Values.kafka.librdkafka "ssl.ca.location") -}}
{{- fail "kafka.librdkafka.\"ssl.ca.location\" is set by the chart when kafka.tls.caSecret.name is set; remove one of them" -}}
{{- end -}}
{{- if and .Values.kafka.tls.clientCertSecret.name (or (hasKey .Values.kafka.librdkafka "ssl.certificate.location") (hasKey .Values.kafka.librdkafka "ssl.key.location")) -}}
{{- fail "kafka.librdkafka ssl.certificate.location / ssl.key.location are set by the chart when kafka.tls.clientCertSecret.name is set; remove one of them" -}}
{{- end -}}
{{- if and .Values.kafka.auth.secretKeys (not .Values.kafka.auth.existingSecret) -}}
{{- fail "kafka.auth.secretKeys is set but kafka.auth.existingSecret is empty: name the Secret that holds those keys" -}}
{{- end -}}
{{- include "pipeline-worker.validateRegistry" . -}}
{{- end -}}

{{/*
Registry, control plane and the pipelines that depend on them.
*/}}
{{- define "pipeline-worker.validateRegistry" -}}
{{- $reg := .Values.registry -}}
{{- $ctl := .Values.control -}}
{{- range $i, $p := .Values.pipelines -}}
{{- if not $p.component -}}
{{- if not (and $reg.enabled $p.tenant) -}}
{{- fail (printf "pipelines[%d] (%s): component is missing: give a component, or a tenant with registry.enabled so the pipeline runs the function activated for it" $i $p.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $ctl.enabled (not $reg.enabled) -}}
{{- fail "control.enabled needs registry.enabled: the control plane stores uploads in the function store and writes activations to the activation log, both configured under registry" -}}
{{- end -}}
{{- if $reg.enabled -}}
{{- $store := include "pipeline-worker.registryStore" . -}}
{{- $mount := trimSuffix "/" $reg.persistence.mountPath -}}
{{- if not $store -}}
{{- fail "registry.enabled needs a store: set registry.store to an object store (s3://bucket/prefix), or enable registry.persistence (a shared ReadWriteMany volume; the store then is file://<registry.persistence.mountPath>)" -}}
{{- end -}}
{{- if $reg.persistence.enabled -}}
{{- $path := trimPrefix "file://" $store -}}
{{- if not (include "pipeline-worker.registryStoreIsLocal" .) -}}
{{- fail (printf "registry.persistence.enabled but registry.store is %q, an object store: the volume would be mounted and never used. Leave registry.store empty (it then points at registry.persistence.mountPath) or disable registry.persistence" $store) -}}
{{- end -}}
{{- if not (or (eq (trimSuffix "/" $path) $mount) (hasPrefix (printf "%s/" $mount) $path)) -}}
{{- fail (printf "registry.store %q is not on the registry volume (registry.persistence.mountPath %s): the pods would not share it. Leave registry.store empty or point it under the mount path" $store $mount) -}}
{{- end -}}
{{- if and (not $reg.persistence.existingClaim) (not (has "ReadWriteMany" $reg.persistence.accessModes)) (or $ctl.enabled (include "pipeline-worker.multiReplica" .)) -}}
{{- fail (printf "registry.persistence.accessModes %v: the function store volume is mounted by every worker replica and the control plane, which may run on different nodes; it needs ReadWriteMany (or use an s3:// store)" $reg.persistence.accessModes) -}}
{{- end -}}
{{- else if include "pipeline-worker.registryStoreIsLocal" . -}}
{{- if not (hasPrefix "/" (trimPrefix "file://" $store)) -}}
{{- fail (printf "registry.store %q is a relative path: it would resolve against the config's directory, a read-only ConfigMap. Use an s3:// store or registry.persistence" $store) -}}
{{- end -}}
{{- if or $ctl.enabled (include "pipeline-worker.multiReplica" .) -}}
{{- fail (printf "registry.store %q is a local directory but registry.persistence is not enabled: each pod would have its own store, so %s. Use an object store (registry.store: s3://bucket/prefix) or registry.persistence.enabled with a ReadWriteMany volume (or an existingClaim)" $store (ternary "the control plane's uploads would never reach the workers" "the worker replicas would not share uploads, artifacts and status" $ctl.enabled)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $ctl.enabled -}}
{{- if not $ctl.tenants -}}
{{- fail "control.enabled needs at least one entry in control.tenants ({name, tokenSha256} or {name, existingSecret, secretKey})" -}}
{{- end -}}
{{- $tenants := dict -}}
{{- $envs := dict -}}
{{- range $i, $t := $ctl.tenants -}}
{{- if hasKey $tenants $t.name -}}
{{- fail (printf "control.tenants[%d].name: duplicate tenant %q" $i $t.name) -}}
{{- end -}}
{{- $_ := set $tenants $t.name true -}}
{{- $env := include "pipeline-worker.tenantTokenEnv" $t.name -}}
{{- if hasKey $envs $env -}}
{{- fail (printf "control.tenants[%d].name: %q and %q share the token variable %s; rename one of them" $i (get $envs $env) $t.name $env) -}}
{{- end -}}
{{- $_ := set $envs $env $t.name -}}
{{- if ne (len (compact (list $t.tokenSha256 $t.existingSecret))) 1 -}}
{{- fail (printf "control.tenants[%d] (%s): give exactly one of tokenSha256 and existingSecret" $i $t.name) -}}
{{- end -}}
{{- end -}}
{{- range $i, $p := .Values.pipelines -}}
{{- if and $p.tenant (not (hasKey $tenants $p.tenant)) -}}
{{- fail (printf "pipelines[%d].tenant %q is not one of control.tenants (%s): no token could activate functions on pipeline %s" $i $p.tenant (join ", " (keys $tenants | sortAlpha)) $p.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
One egress rule, as JSON: to the peers of a destination ({cidrs,
namespaceSelector, podSelector}: one ipBlock per CIDR, plus one selector peer
when either selector is set; none: any destination) on its ports (TCP, and UDP
too when .udp). Usage: include "pipeline-worker.networkPolicyEgressRule" (dict "dest" $d "ports" $ports "udp" false "what" "...")
*/}}
{{- define "pipeline-worker.networkPolicyEgressRule" -}}
{{- $peers := list -}}
{{- range .dest.cidrs -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) -}}
{{- end -}}
{{- if or .dest.namespaceSelector .dest.podSelector -}}
{{- $peer := dict -}}
{{- with .dest.namespaceSelector }}{{ $_ := set $peer "namespaceSelector" . }}{{ end -}}
{{- with .dest.podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- $ports := list -}}
{{- range .ports -}}
{{- $p := include "pipeline-worker.scalarString" . -}}
{{- if not (regexMatch "^[0-9]+$" $p) -}}
{{- fail (printf "networkPolicy: no port for %s (got %q): set networkPolicy.egress.*.ports" $.what $p) -}}
{{- end -}}
{{- $ports = append $ports (dict "protocol" "TCP" "port" (int $p)) -}}
{{- if $.udp }}{{ $ports = append $ports (dict "protocol" "UDP" "port" (int $p)) }}{{ end -}}
{{- end -}}
{{- $rule := dict "ports" $ports -}}
{{- with $peers }}{{ $_ := set $rule "to" . }}{{ end -}}
{{- toJson $rule -}}
{{- end -}}

{{/*
Port of a URL (explicit, else 443 for https, 80 for http); empty without a host.
*/}}
{{- define "pipeline-worker.urlPort" -}}
{{- $u := urlParse . -}}
{{- $hostport := $u.host -}}
{{- if regexMatch ":[0-9]+$" $hostport -}}
{{- regexReplaceAll "^.*:([0-9]+)$" $hostport "${1}" -}}
{{- else if and $hostport (eq $u.scheme "https") -}}443
{{- else if $hostport -}}80
{{- end -}}
{{- end -}}

{{/*
Kafka broker ports, comma-separated: networkPolicy.egress.kafka.ports, else
the ports of kafka.brokers (9092 for a broker without one).
*/}}
{{- define "pipeline-worker.kafkaPorts" -}}
{{- $ports := list -}}
{{- range (splitList "," .Values.kafka.brokers) -}}
{{- $b := trim . -}}
{{- if regexMatch ":[0-9]+$" $b -}}
{{- $ports = append $ports (regexReplaceAll "^.*:([0-9]+)$" $b "${1}") -}}
{{- else if $b -}}
{{- $ports = append $ports "9092" -}}
{{- end -}}
{{- end -}}
{{- with .Values.networkPolicy.egress.kafka.ports -}}
{{- $ports = list -}}
{{- range . }}{{ $ports = append $ports (include "pipeline-worker.scalarString" .) }}{{ end -}}
{{- end -}}
{{- $ports | uniq | join "," -}}
{{- end -}}

{{/*
Egress rules shared by the workers and the control plane, as YAML: DNS, Kafka,
the object store (registry.enabled with an s3://-like store; a file store is a
volume, mounted by the kubelet), the OTLP receiver, then networkPolicy.egress.extra.
*/}}
{{- define "pipeline-worker.networkPolicyEgress" -}}
{{- $eg := .Values.networkPolicy.egress -}}
{{- $rules := list -}}
{{- if $eg.dns.enabled -}}
{{- $rules = append $rules (include "pipeline-worker.networkPolicyEgressRule" (dict "dest" $eg.dns "ports" $eg.dns.ports "udp" true "what" "DNS") | fromJson) -}}
{{- end -}}
{{- $rules = append $rules (include "pipeline-worker.networkPolicyEgressRule" (dict "dest" $eg.kafka "ports" (splitList "," (include "pipeline-worker.kafkaPorts" .)) "udp" false "what" "the Kafka brokers") | fromJson) -}}
{{- if and .Values.registry.enabled (not (include "pipeline-worker.registryStoreIsLocal" .)) -}}
{{- $ports := $eg.store.ports -}}
{{- if not $ports -}}
{{- $o := .Values.registry.storeOptions -}}
{{- $endpoint := toString (default "" (coalesce (index $o "aws_endpoint") (index $o "aws_endpoint_url") (index $o "endpoint_url") (index $o "endpoint"))) -}}
{{- $ports = list (ternary (include "pipeline-worker.urlPort" $endpoint) "443" (ne $endpoint "")) -}}
{{- end -}}
{{- $rules = append $rules (include "pipeline-worker.networkPolicyEgressRule" (dict "dest" $eg.store "ports" $ports "udp" false "what" "the function store (registry.storeOptions.aws_endpoint)") | fromJson) -}}
{{- end -}}
{{- with .Values.telemetry.otlpEndpoint -}}
{{- $ports := $eg.otlp.ports | default (list (include "pipeline-worker.urlPort" .)) -}}
{{- $rules = append $rules (include "pipeline-worker.networkPolicyEgressRule" (dict "dest" $eg.otlp "ports" $ports "udp" false "what" "the OTLP receiver (telemetry.otlpEndpoint)") | fromJson) -}}
{{- end -}}
{{- $rules = concat $rules (default list $eg.extra) -}}
{{- toYaml $rules -}}
{{- end -}}

{{/*
Ingress rules on one named port (metrics or control), from
networkPolicy.ingress.namespaces / namespaceSelectors and the monitoring
namespace; plus networkPolicy.ingress.extra. Indented by the caller; renders
[] (deny all) when nothing is allowed.
*/}}
{{- define "pipeline-worker.networkPolicyIngress" -}}
{{- $in := .ctx.Values.networkPolicy.ingress -}}
{{- $peers := list -}}
{{- range $in.namespaces -}}
{{- $peers = append $peers (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .))) -}}
{{- end -}}
{{- range $in.namespaceSelectors -}}
{{- $peers = append $peers (dict "namespaceSelector" .) -}}
{{- end -}}
{{- with $in.monitoringNamespace -}}
{{- $peer := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .)) -}}
{{- with $in.monitoringPodSelector }}{{ $_ := set $peer "podSelector" (dict "matchLabels" .) }}{{ end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- $rules := list -}}
{{- if $peers -}}
{{- $rules = append $rules (dict "from" $peers "ports" (list (dict "protocol" "TCP" "port" .port))) -}}
{{- end -}}
{{- $rules = concat $rules (default list $in.extra) -}}
{{- if $rules -}}
{{- toYaml $rules -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/*
librdkafka properties that hold secrets (marked _RK_SENSITIVE in librdkafka's
rdkafka_conf.c, plus the alias of the OIDC client secret), refused in
kafka.librdkafka: the ConfigMap is plain text for anyone who may read the
namespace. File locations (ssl.key.location, ...) are not secrets and stay allowed.
*/}}
{{- define "pipeline-worker.secretLibrdkafkaKeys" -}}
sasl.username sasl.password ssl.key.password ssl.key.pem ssl.keystore.password sasl.oauthbearer.client.secret sasl.oauthbearer.client.credentials.client.secret sasl.oauthbearer.config sasl.oauthbearer.assertion.private.key.pem sasl.oauthbearer.assertion.private.key.passphrase
{{- end -}}

{{- define "pipeline-worker.validateSecretKeys" -}}
{{- $secret := splitList " " (include "pipeline-worker.secretLibrdkafkaKeys" .) -}}
{{- range $k, $_ := .Values.kafka.librdkafka -}}
{{- if has (lower (trim $k)) $secret -}}
{{- fail (printf "kafka.librdkafka.%q holds a secret and would be written to the ConfigMap in plain text: put it in the Secret named by kafka.auth.existingSecret and map it with kafka.auth.secretKeys (e.g. --set-string 'kafka.auth.secretKeys.%s=<key in the Secret>')" $k (lower (trim $k) | replace "." "\\.")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A Kubernetes memory quantity in bytes (float). Usage: include "pipeline-worker.quantityBytes" (dict "q" "1Gi" "field" "control.resources.limits.memory")
*/}}
{{- define "pipeline-worker.quantityBytes" -}}
{{- $q := include "pipeline-worker.scalarString" .q -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$" $q) -}}
{{- fail (printf "%s: %q is not a memory quantity this chart understands (e.g. 2Gi, 1536Mi, 2147483648)" .field $q) -}}
{{- end -}}
{{- $units := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "P" 1000000000000000.0 -}}
{{- $num := regexReplaceAll "[A-Za-z]+$" $q "" -}}
{{- $unit := regexReplaceAll "^[0-9.]+" $q "" -}}
{{- mulf (float64 $num) (get $units $unit) -}}
{{- end -}}

{{/*
Memory the control plane needs to compile the largest upload it accepts:
control.memory.baseBytes + control.memory.compileFactor x control.maxComponentBytes,
rounded up to a MiB, as a quantity ("1728Mi").
*/}}
{{- define "pipeline-worker.controlMemory" -}}
{{- $ctl := .Values.control -}}
{{- if $ctl.enabled -}}
{{- $need := addf (float64 $ctl.memory.baseBytes) (mulf (float64 $ctl.memory.compileFactor) (float64 $ctl.maxComponentBytes)) -}}
{{- $mi := ceil (divf $need 1048576) | int64 -}}
{{- $limit := dig "limits" "memory" "" (default dict $ctl.resources) -}}
{{- if $limit -}}
{{- $have := include "pipeline-worker.quantityBytes" (dict "q" $limit "field" "control.resources.limits.memory") | float64 -}}
{{- if lt $have (mulf $mi 1048576.0) -}}
{{- fail (printf "control.resources.limits.memory (%s) is below what compiling the largest allowed upload needs: control.memory.baseBytes %s + control.memory.compileFactor %s x control.maxComponentBytes %s = %dMi; raise the limit, or lower control.maxComponentBytes (or leave limits.memory unset: it is then sized from it)" (include "pipeline-worker.scalarString" $limit) (include "pipeline-worker.scalarString" $ctl.memory.baseBytes) (include "pipeline-worker.scalarString" $ctl.memory.compileFactor) (include "pipeline-worker.scalarString" $ctl.maxComponentBytes) $mi) -}}
{{- end -}}
{{- end -}}
{{- printf "%dMi" $mi -}}
{{- end -}}
{{- end -}}

{{/*
control.resources with the memory request and limit filled in from
pipeline-worker.controlMemory where unset. Rendered as YAML.
*/}}
{{- define "pipeline-worker.controlResources" -}}
{{- $res := deepCopy (default dict .Values.control.resources) -}}
{{- $mem := include "pipeline-worker.controlMemory" . -}}
{{- $req := default dict (get $res "requests") -}}
{{- $lim := default dict (get $res "limits") -}}
{{- if not (get $req "memory") }}{{ $_ := set $req "memory" $mem }}{{ end -}}
{{- if not (get $lim "memory") }}{{ $_ := set $lim "memory" $mem }}{{ end -}}
{{- $_ := set $res "requests" $req -}}
{{- $_ := set $res "limits" $lim -}}
{{- toYaml $res -}}
{{- end -}}

{{/*
KEDA kafka scaler modes from kafka.librdkafka, as JSON {sasl, tls}: the scaler
connects the way the workers do. Empty values are left out.
*/}}
{{- define "pipeline-worker.kedaModes" -}}
{{- $lk := .Values.kafka.librdkafka -}}
{{- $proto := upper (toString (default "PLAINTEXT" (index $lk "security.protocol"))) -}}
{{- $mech := upper (toString (default "GSSAPI" (index $lk "sasl.mechanism"))) -}}
{{- $modes := dict -}}
{{- if hasPrefix "SASL_" $proto -}}
{{- $sasl := get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" "OAUTHBEARER" "oauthbearer" "GSSAPI" "gssapi") $mech -}}
{{- if not $sasl -}}
{{- fail (printf "kafka.librdkafka.\"sasl.mechanism\" %q has no KEDA kafka scaler equivalent (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI); set keda.extraMetadata.sasl yourself" $mech) -}}
{{- end -}}
{{- $_ := set $modes "sasl" $sasl -}}
{{- end -}}
{{- if or (eq $proto "SSL") (eq $proto "SASL_SSL") -}}
{{- $_ := set $modes "tls" "enable" -}}
{{- end -}}
{{- toJson $modes -}}
{{- end -}}

{{/*
secretTargetRef entries of the chart's TriggerAuthentication, as JSON: derived
from the Secrets the workers use, then keda.triggerAuthentication.secretTargetRef
(which replaces a derived entry of the same parameter).
*/}}
{{- define "pipeline-worker.kedaSecretRefs" -}}
{{- $refs := dict -}}
{{- $auth := .Values.kafka.auth -}}
{{- if $auth.existingSecret -}}
{{- range $param, $prop := dict "username" "sasl.username" "password" "sasl.password" "keyPassword" "ssl.key.password" -}}
{{- with index $auth.secretKeys $prop -}}
{{- $_ := set $refs $param (dict "parameter" $param "name" $auth.existingSecret "key" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with .Values.kafka.tls.caSecret.name -}}
{{- $_ := set $refs "ca" (dict "parameter" "ca" "name" . "key" $.Values.kafka.tls.caSecret.key) -}}
{{- end -}}
{{- with .Values.kafka.tls.clientCertSecret.name -}}
{{- $_ := set $refs "cert" (dict "parameter" "cert" "name" . "key" $.Values.kafka.tls.clientCertSecret.certKey) -}}
{{- $_ := set $refs "key" (dict "parameter" "key" "name" . "key" $.Values.kafka.tls.clientCertSecret.keyKey) -}}
{{- end -}}
{{- range .Values.keda.triggerAuthentication.secretTargetRef -}}
{{- $_ := set $refs .parameter (dict "parameter" .parameter "name" (default $.Values.kafka.auth.existingSecret .name) "key" .key) -}}
{{- end -}}
{{- $out := list -}}
{{- range $p := keys $refs | sortAlpha -}}
{{- $out = append $out (get $refs $p) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
