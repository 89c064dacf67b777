{{/*
Named templates for your own chart. Each takes this chart's values as its
context: `.Values` here, `.Values.credvend` in a chart that depends on this
one (Helm fills in the defaults).

  credvend.sidecar             the credvend init container (one list item)
  credvend.volumes             the pod volumes credvend needs (list items)
  credvend.appEnv              the two variables for application containers
  credvend.appVolumeMount      the read-only token mount for them
  credvend.podSecurityContext  the fsGroup that makes the token readable
*/}}

{{/* The Authorization token file, inside the shared volume. */}}
{{- define "credvend.tokenFile" -}}
{{ trimSuffix "/" .tokenDir }}/token
{{- end }}

{{/* Where the projected service account token is mounted in credvend. */}}
{{- define "credvend.webIdentityDir" -}}
/var/run/secrets/credvend/serviceaccount
{{- end }}

{{/*
The sidecar: an init container with restartPolicy Always (a native sidecar).
Application containers start only once its startup probe, on /readyz,
passes, i.e. once credentials exist; it is stopped after them.
*/}}
{{- define "credvend.sidecar" -}}
- name: credvend
  image: "{{ .image.repository }}:{{ .image.tag }}"
  imagePullPolicy: {{ .image.pullPolicy }}
  restartPolicy: Always
  args: [serve]
  env:
    - name: CREDVEND_ROLE_ARN
      value: {{ .role.arn | quote }}
    {{- with .role.region }}
    - name: CREDVEND_REGION
      value: {{ . | quote }}
    {{- end }}
    {{- with .role.stsEndpoint }}
    - name: CREDVEND_STS_ENDPOINT
      value: {{ . | quote }}
    {{- end }}
    - name: CREDVEND_DURATION
      value: "{{ .role.durationMinutes }}m"
    {{- with .role.refreshLeadMinutes }}
    - name: CREDVEND_REFRESH_LEAD
      value: "{{ . }}m"
    {{- end }}
    {{- if eq .source "webIdentity" }}
    - name: CREDVEND_WEB_IDENTITY_TOKEN_FILE
      value: "{{ include "credvend.webIdentityDir" . }}/token"
    {{- end }}
    - name: CREDVEND_LISTEN
      value: "127.0.0.1:{{ .port }}"
    - name: CREDVEND_ADVERTISE_HOST
      value: {{ .advertiseHost | quote }}
    - name: CREDVEND_ADMIN_LISTEN
      value: "0.0.0.0:{{ .adminPort }}"
    - name: CREDVEND_TOKEN_FILE
      value: {{ include "credvend.tokenFile" . | quote }}
    - name: CREDVEND_TOKEN_FILE_MODE
      value: "0640"
    - name: CREDVEND_SHUTDOWN_DELAY
      value: {{ .shutdownDelay | quote }}
    - name: CREDVEND_DRAIN_TIMEOUT
      value: {{ .drainTimeout | quote }}
    - name: CREDVEND_LOG_FORMAT
      value: {{ .logFormat | quote }}
    - name: CREDVEND_LOG_LEVEL
      value: {{ .logLevel | quote }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if and (eq .source "base") .base.existingSecret }}
  envFrom:
    - secretRef:
        name: {{ .base.existingSecret | quote }}
  {{- end }}
  ports:
    - name: credvend-admin
      containerPort: {{ .adminPort }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: credvend-admin
    periodSeconds: {{ .startupProbe.periodSeconds }}
    failureThreshold: {{ .startupProbe.failureThreshold }}
    timeoutSeconds: 1
  readinessProbe:
    httpGet:
      path: /readyz
      port: credvend-admin
    periodSeconds: 10
    timeoutSeconds: 1
  livenessProbe:
    httpGet:
      path: /healthz
      port: credvend-admin
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  securityContext:
    {{- toYaml .securityContext | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  volumeMounts:
    - name: credvend-token
      mountPath: {{ .tokenDir | quote }}
    {{- if eq .source "webIdentity" }}
    - name: credvend-web-identity
      mountPath: {{ include "credvend.webIdentityDir" . | quote }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Pod volumes: the shared token directory and, for web identity, the
projected service account token. */}}
{{- define "credvend.volumes" -}}
- name: credvend-token
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- if eq .source "webIdentity" }}
- name: credvend-web-identity
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .webIdentity.audience | quote }}
          expirationSeconds: {{ .webIdentity.expirationSeconds }}
          path: token
{{- end }}
{{- end }}

{{/* Exactly one variable of each pair (never RELATIVE_URI, never the
token value itself). */}}
{{- define "credvend.appEnv" -}}
- name: AWS_CONTAINER_CREDENTIALS_FULL_URI
  value: "http://{{ .advertiseHost }}:{{ .port }}/v1/credentials"
- name: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
  value: {{ include "credvend.tokenFile" . | quote }}
{{- end }}

{{- define "credvend.appVolumeMount" -}}
- name: credvend-token
  mountPath: {{ .tokenDir | quote }}
  readOnly: true
{{- end }}

{{- define "credvend.podSecurityContext" -}}
fsGroup: {{ .fsGroup }}
{{- end }}

{{/* Chart-internal helpers (they take the root context). */}}
{{- define "credvend.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end }}

{{- define "credvend.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "credvend.labels" -}}
{{ include "credvend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "credvend.serviceAccountName" -}}
{{- default (include "credvend.fullname" .) .Values.serviceAccount.name }}
{{- end }}
