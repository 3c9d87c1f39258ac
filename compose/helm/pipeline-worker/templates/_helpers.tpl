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
{{- if le (mul $grace 1000) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than runtime.drainTimeoutMs/1000 (%d ms = %s s): Kubernetes would SIGKILL the worker before it has drained and committed; allow a margin of a few seconds on top of the drain" $grace $drain (toString (divf $drain 1000))) -}}
{{- end -}}
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
{{- if and .Values.keda.triggerAuthentication.create (not .Values.keda.triggerAuthentication.secretTargetRef) -}}
{{- fail "keda.triggerAuthentication.create needs keda.triggerAuthentication.secretTargetRef entries" -}}
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
