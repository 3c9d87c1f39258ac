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
{{- end -}}
