#!/usr/bin/env bash
# Static checks of the deployment artifacts under compose/: the Helm chart, the
# docker compose file and the Dockerfile. Needs no Kubernetes cluster and no
# Docker engine; everything it uses is installed from package registries:
#
#   helm     `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` into $(go env GOPATH)/bin
#            (skipped when that version is already there). The first install
#            compiles helm: 11m20s wall / 282 s CPU measured on 2 cores that
#            were busy with a cargo build; 19 s with a warm Go build cache.
#   kubeconform  `go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION`
#            (same way; 5m24s wall / 72 s CPU measured with cold Go caches on a busy
#            machine). Its Kubernetes schemas come from the OpenAPI document in the
#            Go module k8s.io/kubernetes@v$KUBE_VERSION (`go mod download`, 18 MB,
#            6 s cold), converted by checks.py (about 4 s) and cached in
#            $TMPDIR/check-deploy-k8s-schemas (CHECK_DEPLOY_SCHEMA_CACHE); the CRD
#            schemas are compose/helm/ci/schemas/*.json
#   compose  `docker compose config` when the compose plugin is installed, else
#            compose/tools/composecheck (the same loader, compose-go, built with
#            Go: about a minute the first time)
#   python3  with PyYAML (a venv under $TMPDIR is made when it is missing)
#
# What it checks: helm lint --strict (default values and compose/helm/ci/*);
# helm template with each, plus assertions on the manifests (replicas vs
# HPA/KEDA, ScaledObject triggers, existingSecret env refs, checksum/config,
# securityContext, probes (the startup probe on by default), volumes; the
# NetworkPolicies and their ports; the PDB's unhealthyPodEvictionPolicy; the
# control plane's memory from control.maxComponentBytes; KEDA sasl/tls and the
# TriggerAuthentication's refs; the PrometheusRule against the README's metrics
# table and worker/src/telemetry/metrics.rs; the registry and the control plane: control
# Deployment + Service only when enabled, its selector apart from the workers',
# S3 and tenant token secret refs, [registry]/[control] in the ConfigMap, the
# shared registry PVC variant); renders that must fail (HPA + KEDA, typo'd keys
# against values.schema.json, grace period < drain + 5 s, secret librdkafka keys
# in any case, a control memory limit below the compile peak, control without
# registry, a directory store not shared by several pods, ...); kubeconform over
# every render (and that it rejects typos); NOTES.txt; the chart
# README lists every value; every worker.toml key (compose and rendered) is a
# field of worker/src/config.rs; the compose model (worker + control sharing
# the store volume); the Dockerfile (final stage on distroless without a shell,
# numeric USER 65532 matching the chart and compose, exec-form RUN only, debug
# info stripped in the build stage, no compiler, entrypoint; static only) and,
# when a built binary exists, that its shared libraries (ldd) are all in the
# runtime base or copied into it by the Dockerfile.
#
#   scripts/check-deploy.sh                 # everything
#   CHECK_DEPLOY_OUT=/tmp/x scripts/check-deploy.sh   # keep rendered manifests there
#
# Exits non-zero when any check fails and lists every failure at the end.
# Optional: when a built worker binary exists (target/release/pipeline-worker or
# $PIPELINE_WORKER_BIN), `pipeline-worker validate` is run on compose/worker.toml
# and on the worker.toml the chart renders; set CHECK_DEPLOY_STRICT_CONFIG=1 to
# make a failure there fatal (by default it is reported as a warning, since the
# binary in target/ may predate the config keys the artifacts use).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.8.0}"
# helm built by `go install` has no -ldflags, so `helm template` would assume
# Kubernetes v1.20 (below the chart's kubeVersion); render for a current one.
# The same version's OpenAPI document (module k8s.io/kubernetes) gives the
# schemas kubeconform validates the renders against.
KUBE_VERSION="${KUBE_VERSION:-1.34.4}"
SCHEMA_CACHE="${CHECK_DEPLOY_SCHEMA_CACHE:-${TMPDIR:-/tmp}/check-deploy-k8s-schemas}/v$KUBE_VERSION"
CRD_SCHEMAS="$ROOT/compose/helm/ci/schemas"
CHART="$ROOT/compose/helm/pipeline-worker"
CI_VALUES="$ROOT/compose/helm/ci"
COMPOSE_FILE="$ROOT/compose/docker-compose.yml"
DOCKERFILE="$ROOT/compose/Dockerfile"
OUT="${CHECK_DEPLOY_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")}"
mkdir -p "$OUT"

FAILURES=()
WARNINGS=()
TIMINGS=()
ok()   { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*" >&2; FAILURES+=("$*"); }
warn() { printf 'WARN  %s\n' "$*" >&2; WARNINGS+=("$*"); }
step() { printf '\n== %s\n' "$*"; STEP_START=$(date +%s); STEP_NAME="$*"; }
step_done() { TIMINGS+=("$(( $(date +%s) - STEP_START ))s  $STEP_NAME"); }

# Runs "$@", saving stdout/stderr to $OUT/<name>.{out,err}; returns its status.
run() {
    local name="$1"; shift
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
}

###############################################################################
step "tools"

command -v go >/dev/null 2>&1 || { echo "go is required (Go toolchain)" >&2; exit 2; }
GOBIN_DIR="$(go env GOBIN)"
[ -n "$GOBIN_DIR" ] || GOBIN_DIR="$(go env GOPATH)/bin"
HELM="$GOBIN_DIR/helm"

helm_module_version() {
    # The module version recorded in the binary by `go install` (helm's own
    # `helm version` reports only what its Makefile injects with -ldflags).
    go version -m "$1" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" { print $3 }'
}

if [ -x "$HELM" ] && [ "$(helm_module_version "$HELM")" = "$HELM_VERSION" ]; then
    ok "helm $HELM_VERSION already installed at $HELM"
else
    echo "installing helm $HELM_VERSION with go install (compiles helm; can take several minutes)"
    t0=$(date +%s)
    if GOBIN="$GOBIN_DIR" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >"$OUT/helm-install.log" 2>&1; then
        t1=$(date +%s)
        ok "helm $HELM_VERSION installed in $((t1 - t0))s at $HELM"
        TIMINGS+=("$((t1 - t0))s  go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
    else
        cat "$OUT/helm-install.log" >&2
        echo "FAIL  go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
        exit 1
    fi
fi
"$HELM" version --short >/dev/null 2>&1 || { echo "FAIL  $HELM does not run" >&2; exit 1; }

KUBECONFORM="$GOBIN_DIR/kubeconform"
kc_module_version() {
    go version -m "$1" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/yannh/kubeconform" { print $3 }'
}
if [ -x "$KUBECONFORM" ] && [ "$(kc_module_version "$KUBECONFORM")" = "$KUBECONFORM_VERSION" ]; then
    ok "kubeconform $KUBECONFORM_VERSION already installed at $KUBECONFORM"
else
    t0=$(date +%s)
    if GOBIN="$GOBIN_DIR" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >"$OUT/kubeconform-install.log" 2>&1; then
        ok "kubeconform $KUBECONFORM_VERSION installed in $(( $(date +%s) - t0 ))s at $KUBECONFORM"
        TIMINGS+=("$(( $(date +%s) - t0 ))s  go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION")
    else
        cat "$OUT/kubeconform-install.log" >&2
        echo "FAIL  go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2
        exit 1
    fi
fi

PYTHON=python3
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    VENV="${TMPDIR:-/tmp}/check-deploy-venv"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import yaml' >/dev/null 2>&1; then
        echo "PyYAML missing: creating $VENV"
        python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet pyyaml \
            || { echo "FAIL  cannot install PyYAML into $VENV" >&2; exit 1; }
    fi
    PYTHON="$VENV/bin/python"
fi
if ! "$PYTHON" -c 'import tomllib' >/dev/null 2>&1 && ! "$PYTHON" -c 'import tomli' >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet tomli >/dev/null 2>&1 || warn "no tomllib/tomli: TOML files will not be parsed"
fi
ok "python: $("$PYTHON" --version 2>&1) with PyYAML"
step_done

# The Python assertions live in one file; each check is a subcommand. Written to
# $OUT so that Python's sys.path[0] is a directory with nothing else in it.
cat >"$OUT/checks.py" <<'PY'
import json, re, sys
import yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)
    return cond

def docs(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]

def find(ds, kind, name=None):
    return [d for d in ds if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]

def one(ds, kind):
    found = find(ds, kind)
    check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else {}

def worker_container(dep):
    cs = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return cs[0] if cs else {}

def worker_deployments(ds):
    return [d for d in find(ds, "Deployment") if worker_container(d)]

def control_deployments(ds):
    return [d for d in find(ds, "Deployment") if d["metadata"]["name"].endswith("-control")]

def common_deployment(ds, label):
    deps = worker_deployments(ds)
    check(len(deps) == 1, f"{label}: expected exactly one worker Deployment, found {len(deps)}")
    dep = deps[0] if deps else {}
    if not dep:
        return dep, {}
    pod = dep["spec"]["template"]
    ann = pod["metadata"].get("annotations", {})
    check(re.fullmatch(r"[0-9a-f]{64}", str(ann.get("checksum/config", ""))),
          f"{label}: pod annotation checksum/config missing or not a sha256")
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{label}: pod securityContext.runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: pod seccompProfile RuntimeDefault")
    c = worker_container(dep)
    csc = c.get("securityContext", {})
    check(csc.get("runAsNonRoot") is True, f"{label}: container runAsNonRoot")
    check(csc.get("readOnlyRootFilesystem") is True, f"{label}: container readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{label}: container allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: container drops ALL capabilities")
    check(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: container seccompProfile RuntimeDefault")
    check(isinstance(csc.get("runAsUser"), int) and csc["runAsUser"] != 0, f"{label}: container runAsUser non-zero")
    lp, rp = c.get("livenessProbe", {}), c.get("readinessProbe", {})
    check(lp.get("httpGet", {}).get("path") == "/livez", f"{label}: liveness probe GET /livez")
    check(rp.get("httpGet", {}).get("path") == "/readyz", f"{label}: readiness probe GET /readyz")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(ports.get("metrics") == 9464, f"{label}: containerPort metrics 9464")
    check(lp.get("httpGet", {}).get("port") in ("metrics", 9464), f"{label}: liveness probe on the metrics port")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    check("/tmp" in mounts, f"{label}: /tmp is mounted (read-only root filesystem)")
    check("/etc/pipeline-worker" in mounts, f"{label}: config mounted at /etc/pipeline-worker")
    check(c.get("args") == ["run", "--config", "/etc/pipeline-worker/worker.toml"], f"{label}: args run --config")
    check(spec.get("automountServiceAccountToken") is False, f"{label}: service account token not mounted")
    return dep, c

def config_of(ds, label):
    cm = one(ds, "ConfigMap")
    text = cm.get("data", {}).get("worker.toml", "")
    check(text, f"{label}: ConfigMap has worker.toml")
    if tomllib is None or not text:
        return {}
    try:
        return tomllib.loads(text)
    except Exception as e:  # noqa: BLE001
        check(False, f"{label}: rendered worker.toml is not valid TOML: {e}")
        return {}

def grace_vs_drain(dep, cfg, label):
    grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    drain = cfg.get("runtime", {}).get("drain_timeout_ms", 20000)
    check(grace * 1000 >= drain + 5000, f"{label}: terminationGracePeriodSeconds {grace} < drain {drain} ms + 5 s")

def startup_probe(c, npipelines, label):
    """On by default: liveness must not kill a pod that is still compiling
    (the HTTP endpoint listens only after every component is loaded)."""
    sp = c.get("startupProbe", {})
    if check(sp, f"{label}: startupProbe present"):
        check(sp.get("httpGet", {}).get("path") == "/livez" and sp["httpGet"].get("port") in ("metrics", 9464), f"{label}: startupProbe GET /livez on the metrics port")
        budget = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
        check(budget >= 15 * npipelines, f"{label}: startupProbe budget {budget} s < 15 s x {npipelines} pipelines")

def pdb_policy(ds, label):
    pdb = one(ds, "PodDisruptionBudget")
    check(pdb.get("spec", {}).get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"{label}: PDB unhealthyPodEvictionPolicy AlwaysAllow")

def rule_ports(rule):
    return sorted((p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", []))

def netpols(ds, label, worker_dep, ctl_dep=None):
    """The NetworkPolicies: one per Deployment, selecting exactly its pods,
    both policy types, ingress only on its port. Returns {name: policy}."""
    nps = {n["metadata"]["name"]: n for n in find(ds, "NetworkPolicy")}
    want = [worker_dep] + ([ctl_dep] if ctl_dep else [])
    check(len(nps) == len(want), f"{label}: {len(want)} NetworkPolicies expected, found {sorted(nps)}")
    for dep in want:
        name = dep["metadata"]["name"]
        np = nps.get(name)
        if not check(np, f"{label}: NetworkPolicy {name}"):
            continue
        spec = np["spec"]
        check(spec["podSelector"].get("matchLabels") == dep["spec"]["selector"]["matchLabels"], f"{label}: NetworkPolicy {name} selects the pods of Deployment {name}")
        check(sorted(spec.get("policyTypes", [])) == ["Egress", "Ingress"], f"{label}: NetworkPolicy {name} policyTypes Ingress and Egress")
        port = "control" if name.endswith("-control") else "metrics"
        for r in spec.get("ingress", []):
            check([p.get("port") for p in r.get("ports", [])] == [port], f"{label}: NetworkPolicy {name} ingress only on port {port}: {r.get('ports')}")
            check(r.get("from"), f"{label}: NetworkPolicy {name} ingress rule without from (would allow everyone)")
        eg = spec.get("egress", [])
        dns = [r for r in eg if ("UDP", 53) in rule_ports(r)]
        check(dns and ("TCP", 53) in rule_ports(dns[0]), f"{label}: NetworkPolicy {name} allows DNS over UDP and TCP")
    return nps

def ingress_namespaces(np):
    out = set()
    for r in np["spec"].get("ingress", []):
        for f in r.get("from", []):
            out.add(f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"))
    return out

def helm_default(path, *_):
    ds = docs(path)
    dep, c = common_deployment(ds, "default")
    check(dep.get("spec", {}).get("replicas") == 1, "default: Deployment has replicas: 1")
    check(dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") == 45, "default: terminationGracePeriodSeconds 45")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PersistentVolumeClaim"):
        check(not find(ds, kind), f"default: no {kind} expected")
    for kind in ("Service", "ServiceAccount", "PodDisruptionBudget", "ConfigMap"):
        check(find(ds, kind), f"default: {kind} expected")
    no_control(ds, "default")
    startup_probe(c, 1, "default")
    pdb_policy(ds, "default")
    nps = netpols(ds, "default", dep)
    np = nps.get(dep["metadata"]["name"])
    if np:
        check(ingress_namespaces(np) == {"monitoring"}, f"default: ingress only from the monitoring namespace, got {ingress_namespaces(np)}")
        eg = np["spec"]["egress"]
        dns = [r for r in eg if ("UDP", 53) in rule_ports(r)]
        if dns:
            check(dns[0].get("to") == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], f"default: DNS only to kube-dns in kube-system: {dns[0].get('to')}")
        check([rule_ports(r) for r in eg] == [[("TCP", 53), ("UDP", 53)], [("TCP", 9092)]], f"default: egress DNS and Kafka (9092 from kafka.brokers) only: {[rule_ports(r) for r in eg]}")
        check("to" not in eg[-1], "default: Kafka egress to any address when no cidrs/selectors are given")
    cfg = config_of(ds, "default")
    if cfg:
        check(set(cfg) == {"kafka", "runtime", "telemetry", "pipelines"}, f"default: worker.toml tables {sorted(cfg)}")
        check(cfg["telemetry"].get("http_listen") == "0.0.0.0:9464", "default: telemetry.http_listen 0.0.0.0:9464")
        p = cfg["pipelines"][0]
        check(p["component"] == "/opt/pipeline-worker/functions/enrich_rs.wasm", f"default: component path {p['component']}")
        check(p["limits"].get("memory_bytes") == 134217728 and isinstance(p["limits"]["memory_bytes"], int),
              "default: limits.memory_bytes rendered as the integer 134217728")
        check(cfg["runtime"]["cache_dir"] == "/var/cache/pipeline-worker", "default: runtime.cache_dir")
        grace_vs_drain(dep, cfg, "default")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    check("emptyDir" in vols.get("cache", {}), "default: cache is an emptyDir")
    check(not any(e["name"] == "PIPELINE_WORKER_CACHE_KEY" for e in c.get("env", [])), "default: no cache key Secret (a key per process)")
    env = {e["name"] for e in c.get("env", [])}
    check(not any(n.startswith("PIPELINE_WORKER__KAFKA__LIBRDKAFKA__") for n in env), "default: no secret env vars")
    check(not any(n.startswith("AWS_") or "STORE_OPTIONS" in n for n in env), "default: no store credentials")
    check("registry" not in vols, "default: no registry volume")

def no_control(ds, label):
    """Neither a control Deployment nor a control Service when control.enabled is off."""
    check(not control_deployments(ds), f"{label}: no control Deployment expected")
    check(not [s for s in find(ds, "Service") if s["metadata"]["name"].endswith("-control")], f"{label}: no control Service expected")
    check(len(find(ds, "Deployment")) == 1, f"{label}: only the worker Deployment expected")

def no_control_objects(path, *_):
    """registry.enabled with control off: [registry] rendered, no control objects."""
    ds = docs(path)
    no_control(ds, "registry-single-dir")
    cfg = config_of(ds, "registry-single-dir")
    if cfg:
        check(cfg.get("registry", {}).get("store") == "/var/lib/pipeline-worker/registry", "registry-single-dir: [registry] store rendered")
        check("control" not in cfg, "registry-single-dir: no [control] without control.enabled")

def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

def control_objects(ds, label, worker_dep):
    """The control Deployment and Service: present, one replica, hardened, probed,
    apart from the workers' selectors. Returns (deployment, container)."""
    deps = control_deployments(ds)
    check(len(deps) == 1, f"{label}: expected one control Deployment, found {len(deps)}")
    if not deps:
        return {}, {}
    dep = deps[0]
    check(dep["metadata"]["name"] == worker_dep["metadata"]["name"] + "-control", f"{label}: control Deployment named <fullname>-control ({dep['metadata']['name']})")
    spec = dep["spec"]
    check(spec.get("replicas") == 1, f"{label}: control replicas 1 (activations are serialized by one replica)")
    check(spec.get("strategy", {}).get("type") == "Recreate", f"{label}: control strategy Recreate (never two at once)")
    pod = spec["template"]
    plabels = pod["metadata"].get("labels", {})
    # The worker selector is immutable: control pods must fall outside it, and the
    # worker pods outside the control selector.
    wsel = worker_dep["spec"]["selector"]["matchLabels"]
    csel = spec["selector"]["matchLabels"]
    check(selector_matches(csel, plabels), f"{label}: control selector matches its pods")
    check(not selector_matches(wsel, plabels), f"{label}: worker selector {wsel} must not match control pods")
    check(not selector_matches(csel, worker_dep["spec"]["template"]["metadata"]["labels"]), f"{label}: control selector must not match worker pods")
    for kind in ("PodDisruptionBudget", "Service", "ServiceMonitor"):
        for o in find(ds, kind):
            sel = o["spec"].get("selector", {})
            sel = sel.get("matchLabels", sel)
            if not o["metadata"]["name"].endswith("-control"):
                check(not selector_matches(sel, plabels), f"{label}: {kind} {o['metadata']['name']} selects the control pod")
    check(re.fullmatch(r"[0-9a-f]{64}", str(pod["metadata"].get("annotations", {}).get("checksum/config", ""))), f"{label}: control checksum/config")
    ps = pod["spec"]
    psc = ps.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: control pod securityContext")
    check(ps.get("automountServiceAccountToken") is False, f"{label}: control does not mount the API token")
    check(ps.get("serviceAccountName") == worker_dep["spec"]["template"]["spec"].get("serviceAccountName"), f"{label}: control uses the workers' ServiceAccount")
    cs = [c for c in ps["containers"] if c["name"] == "control"]
    check(len(cs) == 1, f"{label}: one container named control")
    c = cs[0] if cs else {}
    check(c.get("image") == worker_container(worker_dep).get("image"), f"{label}: control runs the worker image")
    check(c.get("args") == ["control", "--config", "/etc/pipeline-worker/worker.toml"], f"{label}: control args {c.get('args')}")
    csc = c.get("securityContext", {})
    check(csc.get("runAsNonRoot") is True, f"{label}: control runAsNonRoot")
    check(csc.get("readOnlyRootFilesystem") is True, f"{label}: control readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{label}: control allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: control drops ALL capabilities")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(ports.get("control") == 8081, f"{label}: control containerPort 8081")
    for probe in ("livenessProbe", "readinessProbe"):
        check(c.get(probe, {}).get("tcpSocket", {}).get("port") in ("control", 8081), f"{label}: control {probe} is a TCP probe on the API port")
    check(c.get("resources", {}).get("limits", {}).get("memory"), f"{label}: control memory limit")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in ps.get("volumes", [])}
    check(mounts.get("/etc/pipeline-worker", {}).get("name") == "config" and mounts["/etc/pipeline-worker"].get("readOnly") is True, f"{label}: control mounts the config read-only")
    check(vols.get("config", {}).get("configMap", {}).get("name") == worker_dep["metadata"]["name"], f"{label}: control mounts the workers' ConfigMap")
    check("/tmp" in mounts, f"{label}: control /tmp mounted")
    cache = mounts.get("/var/cache/pipeline-worker", {}).get("name")
    check(cache and "emptyDir" in vols.get(cache, {}), f"{label}: control compile cache (runtime.cache_dir) is a writable emptyDir")
    svcs = [s for s in find(ds, "Service") if s["metadata"]["name"] == dep["metadata"]["name"]]
    if check(len(svcs) == 1, f"{label}: control Service <fullname>-control"):
        sv = svcs[0]["spec"]
        check([(p["port"], p["targetPort"]) for p in sv["ports"]] == [(8081, "control")], f"{label}: control Service port 8081 -> control")
        check(sv["selector"] == csel, f"{label}: control Service selects the control pod")
    return dep, c

def secret_env(env, name, secret, key, label):
    e = env.get(name)
    if check(e, f"{label}: env {name} from Secret {secret}"):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        check(ref == {"name": secret, "key": key}, f"{label}: env {name} secretKeyRef {ref}")
        check("value" not in e, f"{label}: env {name} must not be a literal value")

def helm_full(path, *_):
    ds = docs(path)
    dep, c = common_deployment(ds, "full")
    check("replicas" not in dep.get("spec", {}), "full: Deployment must not set replicas when the HPA is enabled")
    hpa = one(ds, "HorizontalPodAutoscaler")
    check(hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"], "full: HPA targets the Deployment")
    check(len(hpa.get("spec", {}).get("metrics", [])) == 2, "full: HPA has cpu and memory metrics")
    check(not find(ds, "ScaledObject"), "full: no ScaledObject")
    sms = {s["metadata"]["name"]: s for s in find(ds, "ServiceMonitor")}
    wname = dep["metadata"]["name"]
    check(sorted(sms) == sorted([wname, wname + "-control"]), f"full: ServiceMonitors for the workers and the control plane, got {sorted(sms)}")
    sm = sms.get(wname, {})
    check(sm.get("spec", {}).get("endpoints", [{}])[0].get("port") == "metrics", "full: ServiceMonitor scrapes port metrics")
    check(sm.get("metadata", {}).get("labels", {}).get("release") == "kube-prometheus-stack", "full: ServiceMonitor labels")
    csm = sms.get(wname + "-control")
    if csm:
        ep = csm["spec"]["endpoints"]
        check([(e.get("port"), e.get("path")) for e in ep] == [("control", "/metrics")], f"full: control ServiceMonitor scrapes GET /metrics on port control: {ep}")
        check(csm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "full: control ServiceMonitor labels")
        csvc = [s for s in find(ds, "Service") if s["metadata"]["name"] == wname + "-control"]
        check(csvc and selector_matches(csm["spec"]["selector"]["matchLabels"], csvc[0]["metadata"]["labels"]), "full: control ServiceMonitor selects the control Service")
        wsvc = [s for s in find(ds, "Service") if s["metadata"]["name"] == wname]
        check(wsvc and not selector_matches(csm["spec"]["selector"]["matchLabels"], wsvc[0]["metadata"]["labels"]), "full: control ServiceMonitor does not select the worker Service")
        check("control" in [p["name"] for p in csvc[0]["spec"]["ports"]] if csvc else False, "full: control Service has the port named control")
    startup_probe(c, 3, "full")
    pdb = one(ds, "PodDisruptionBudget")
    check(pdb.get("spec", {}).get("minAvailable") == 1, "full: PDB minAvailable 1")
    env = {e["name"]: e for e in c.get("env", [])}
    for prop, key in (("sasl.password", "password"), ("sasl.username", "username")):
        e = env.get(f"PIPELINE_WORKER__KAFKA__LIBRDKAFKA__{prop}")
        if check(e, f"full: env PIPELINE_WORKER__KAFKA__LIBRDKAFKA__{prop} from the existing secret"):
            ref = e.get("valueFrom", {}).get("secretKeyRef", {})
            check(ref == {"name": "kafka-credentials", "key": key}, f"full: {prop} secretKeyRef {ref}")
            check("value" not in e, f"full: {prop} must not be a literal value")
    check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == "http://otel-collector.observability:4318", "full: OTLP endpoint env")
    spec = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    check(vols.get("kafka-tls-ca", {}).get("secret", {}).get("secretName") == "kafka-ca", "full: CA secret volume")
    check(vols.get("cache", {}).get("persistentVolumeClaim", {}).get("claimName", "").endswith("-cache"), "full: cache on the created PVC")
    check(vols.get("functions", {}).get("persistentVolumeClaim", {}).get("claimName") == "function-store", "full: functions on the existing PVC")
    pvcs = find(ds, "PersistentVolumeClaim")
    check(len(pvcs) == 1 and pvcs[0]["spec"]["accessModes"] == ["ReadWriteMany"], "full: one created PVC (cache, RWX)")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    check({"/etc/kafka-tls/ca", "/etc/kafka-tls/client", "/var/lib/pipeline-worker/functions"} <= mounts, f"full: mounts {sorted(mounts)}")
    check(spec.get("imagePullSecrets") == [{"name": "regcred"}], "full: imagePullSecrets")
    check(c.get("image") == "registry.example.com/platform/pipeline-worker:0.1.0", f"full: image {c.get('image')}")
    check("startupProbe" in c, "full: startup probe")
    cfg = config_of(ds, "full")
    if cfg:
        lk = cfg["kafka"]["librdkafka"]
        check(lk.get("ssl.ca.location") == "/etc/kafka-tls/ca/ca.crt", "full: ssl.ca.location points at the CA mount")
        check(lk.get("message.max.bytes") == "2097152", f"full: numeric librdkafka value as a plain string, got {lk.get('message.max.bytes')!r}")
        check(lk.get("socket.keepalive.enable") == "true", "full: boolean librdkafka value as a string")
        check("sasl.password" not in lk and "sasl.username" not in lk, "full: no credentials in the ConfigMap")
        check([p["name"] for p in cfg["pipelines"]] == ["enrich", "router", "scoring"], "full: three pipelines")
        check(cfg["pipelines"][0]["component"] == "/var/lib/pipeline-worker/functions/enrich_event.wasm", "full: relative component under functions.dir")
        check(cfg["pipelines"][1]["component"] == "/opt/custom/router.wasm", "full: absolute component kept")
        check(cfg["pipelines"][0]["limits"].get("fuel") == 500000000, "full: limits.fuel")
        check("limits" not in cfg["pipelines"][1], "full: no limits table when none are set")
        grace_vs_drain(dep, cfg, "full")
        # [registry] and [control]
        reg = cfg.get("registry", {})
        check(reg.get("store") == "s3://pipeline-functions/prod", f"full: registry.store {reg.get('store')}")
        check(reg.get("activations_topic") == "payments.activations", "full: registry.activations_topic")
        check(reg.get("store_options") == {"aws_endpoint": "http://minio.storage:9000", "aws_region": "us-east-1", "aws_allow_http": "true"},
              f"full: registry.store_options as strings {reg.get('store_options')}")
        check("worker_id" not in reg, "full: worker_id left to its default (the pod name)")
        ctl = cfg.get("control", {})
        check(ctl.get("listen") == "0.0.0.0:8081", "full: control.listen 0.0.0.0:8081")
        check(ctl.get("max_component_bytes") == 33554432, "full: control.max_component_bytes")
        check(ctl.get("tenants") == [
            {"name": "acme", "token_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
            {"name": "globex", "token_env": "PIPELINE_WORKER_TENANT_TOKEN_GLOBEX"}], f"full: control.tenants {ctl.get('tenants')}")
        ps = cfg["pipelines"]
        check(ps[0].get("tenant") == "acme" and "component" in ps[0], "full: enrich has a tenant and keeps its component")
        check("tenant" not in ps[1], "full: router has no tenant")
        check(ps[2].get("tenant") == "globex" and "component" not in ps[2], "full: scoring has a tenant and no component")
    # S3 credentials: to both workers and control, from registry.existingSecret only.
    ctl_dep, cc = control_objects(ds, "full", dep)
    nps = netpols(ds, "full", dep, ctl_dep or None)
    for n, np in nps.items():
        check(ingress_namespaces(np) == {"data-platform-ci", "monitoring", None}, f"full: NetworkPolicy {n} ingress from data-platform-ci, a selected namespace and monitoring: {ingress_namespaces(np)}")
        mon = [f for r in np["spec"]["ingress"] for f in r["from"] if f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"]
        check(mon and mon[0].get("podSelector") == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}, f"full: NetworkPolicy {n} monitoring peer narrowed to the Prometheus pods")
        eg = {tuple(rule_ports(r)): r for r in np["spec"]["egress"]}
        k = eg.get((("TCP", 9093),))
        check(k and k.get("to") == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kafka"}}}],
              f"full: NetworkPolicy {n} Kafka egress on 9093 (from kafka.brokers) to the selected broker pods: {k}")
        s = eg.get((("TCP", 9000),))
        check(s and s.get("to") == [{"ipBlock": {"cidr": "10.20.0.0/16"}}], f"full: NetworkPolicy {n} store egress on 9000 (from aws_endpoint) to its CIDR: {s}")
        o = eg.get((("TCP", 4318),))
        check(o and o.get("to") == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}], f"full: NetworkPolicy {n} OTLP egress on 4318: {o}")
        check(len(eg) == 4, f"full: NetworkPolicy {n} egress DNS, Kafka, store, OTLP: {sorted(eg)}")
    pdb_policy(ds, "full")
    for who, cont in (("worker", c), ("control", cc)):
        env = {e["name"]: e for e in cont.get("env", [])}
        for var, key in (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")):
            secret_env(env, var, "function-store-s3", key, f"full {who}")
            secret_env(env, f"PIPELINE_WORKER__REGISTRY__STORE_OPTIONS__{var}", "function-store-s3", key, f"full {who}")
        check("AWS_SESSION_TOKEN" not in env, f"full {who}: no AWS_SESSION_TOKEN without secretKeys.sessionToken")
        # The control plane writes the activation log: it needs Kafka credentials and TLS too.
        secret_env(env, "PIPELINE_WORKER__KAFKA__LIBRDKAFKA__sasl.password", "kafka-credentials", "password", f"full {who}")
        # One artifact cache key for every pod sharing the cache volume.
        secret_env(env, "PIPELINE_WORKER_CACHE_KEY", "artifact-cache-key", "key", f"full {who}")
        mounts = {m["mountPath"] for m in cont.get("volumeMounts", [])}
        check({"/etc/kafka-tls/ca", "/etc/kafka-tls/client"} <= mounts, f"full {who}: Kafka TLS mounts")
        check("/var/lib/pipeline-worker/registry" not in mounts, f"full {who}: no registry volume with an S3 store")
    cenv = {e["name"]: e for e in cc.get("env", [])}
    secret_env(cenv, "PIPELINE_WORKER_TENANT_TOKEN_GLOBEX", "globex-api-token", "token", "full control")
    check(not any(n.startswith("PIPELINE_WORKER_TENANT_TOKEN_") for n in (e["name"] for e in c.get("env", []))), "full: tenant tokens only in the control pod")
    check("EXTRA_SETTING" not in cenv, "full: the workers' extraEnv is not the control plane's")
    if ctl_dep:
        check(ctl_dep["spec"]["template"]["metadata"]["annotations"].get("example.com/control") == "true", "full: control.podAnnotations")
        check(cc.get("resources", {}).get("limits", {}).get("memory") == "2Gi", "full: control.resources")
        check(cc.get("resources", {}).get("requests", {}).get("memory") == "512Mi", "full: control.resources requests kept")
        check(ctl_dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") == 30, "full: control terminationGracePeriodSeconds")
        check(ctl_dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
              "full: control checksum covers [control] too, so it differs from the workers'")
    check(len(find(ds, "PrometheusRule")) == 1, "full: PrometheusRule (metrics.prometheusRule.enabled)")
    svc = [s for s in find(ds, "Service") if s["metadata"]["name"].endswith("-control")]
    if svc:
        check(svc[0]["metadata"].get("annotations", {}).get("example.com/expose") == "internal", "full: control.service.annotations")
    for d in ds:
        check(d.get("metadata", {}).get("labels", {}).get("team") == "data-platform", f"full: commonLabels on {d.get('kind')}")
        if d["metadata"]["name"].endswith("-control"):
            check(d["metadata"]["labels"].get("app.kubernetes.io/component") == "control", f"full: {d['kind']} -control labelled component control")

def helm_registry_pvc(path, *_):
    """registry on a shared PVC with the control plane (compose/helm/ci is S3)."""
    ds = docs(path)
    dep, c = common_deployment(ds, "registry-pvc")
    ctl_dep, cc = control_objects(ds, "registry-pvc", dep)
    pvcs = {p["metadata"]["name"]: p for p in find(ds, "PersistentVolumeClaim")}
    claim = dep["metadata"]["name"] + "-registry"
    if check(claim in pvcs, f"registry-pvc: PVC {claim} created"):
        check(pvcs[claim]["spec"]["accessModes"] == ["ReadWriteMany"], "registry-pvc: registry PVC is ReadWriteMany")
        check(pvcs[claim]["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "registry-pvc: registry PVC kept on uninstall")
    for who, d, cont in (("worker", dep, c), ("control", ctl_dep, cc)):
        if not d:
            continue
        vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in cont.get("volumeMounts", [])}
        m = mounts.get("/var/lib/pipeline-worker/registry")
        if check(m, f"registry-pvc {who}: store volume mounted at /var/lib/pipeline-worker/registry"):
            check(not m.get("readOnly"), f"registry-pvc {who}: store mounted read-write (uploads, artifacts, status)")
            check(vols.get(m["name"], {}).get("persistentVolumeClaim", {}).get("claimName") == claim, f"registry-pvc {who}: mounts PVC {claim}")
        env = {e["name"] for e in cont.get("env", [])}
        check(not any(n.startswith("AWS_") or "STORE_OPTIONS" in n for n in env), f"registry-pvc {who}: no S3 credentials without registry.existingSecret")
    cfg = config_of(ds, "registry-pvc")
    if cfg:
        check(cfg.get("registry", {}).get("store") == "file:///var/lib/pipeline-worker/registry", f"registry-pvc: store points at the mount ({cfg.get('registry', {}).get('store')})")
        check(cfg.get("registry", {}).get("activations_topic") == "pipeline-worker.activations", "registry-pvc: default activations topic")
        check(cfg.get("control", {}).get("max_component_bytes") == 67108864, "registry-pvc: default max_component_bytes")
        check(cfg["pipelines"][0].get("tenant") == "demo", "registry-pvc: pipeline tenant rendered")
    # Default sizing: 256 MiB + 23 x 64 MiB (control.maxComponentBytes) = 1728 MiB.
    control_memory(path, "1728Mi")
    nps = netpols(ds, "registry-pvc", dep, ctl_dep or None)
    for n, np in nps.items():
        check(len(np["spec"]["egress"]) == 2, f"registry-pvc: NetworkPolicy {n}: a file store needs no egress rule (DNS and Kafka only): {np['spec']['egress']}")

def control_memory(path, want, *_):
    """control.resources memory request and limit, both sized from control.maxComponentBytes."""
    ds = docs(path)
    deps = control_deployments(ds)
    if not check(len(deps) == 1, f"control-memory: one control Deployment in {path}"):
        return
    c = [c for c in deps[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "control"][0]
    res = c.get("resources", {})
    check(res.get("requests", {}).get("memory") == want, f"control-memory: requests.memory {res.get('requests', {}).get('memory')} != {want}")
    check(res.get("limits", {}).get("memory") == want, f"control-memory: limits.memory {res.get('limits', {}).get('memory')} != {want}")
    check(res.get("requests", {}).get("cpu") == "250m", "control-memory: the cpu request is kept")

def checksum_split(a, b, *_):
    """b = a with only [control] changed: the workers' checksum stays, the control plane's moves."""
    def sums(path):
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"].get("checksum/config") for d in find(docs(path), "Deployment")}
    sa, sb = sums(a), sums(b)
    workers = [n for n in sa if not n.endswith("-control")]
    controls = [n for n in sa if n.endswith("-control")]
    check(workers and controls, f"checksum-split: expected a worker and a control Deployment, got {sorted(sa)}")
    for n in workers:
        check(sa[n] == sb.get(n), f"checksum-split: {n} checksum changed on a [control]-only change (would rebalance the groups)")
    for n in controls:
        check(sa[n] != sb.get(n), f"checksum-split: {n} checksum did not change with [control]")

def helm_keda(path, *_):
    ds = docs(path)
    dep, c = common_deployment(ds, "keda")
    check("replicas" not in dep.get("spec", {}), "keda: Deployment must not set replicas when KEDA is enabled")
    check(not find(ds, "HorizontalPodAutoscaler"), "keda: no chart HPA (KEDA makes its own)")
    so = one(ds, "ScaledObject")
    spec = so.get("spec", {})
    check(spec.get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"], "keda: ScaledObject targets the Deployment")
    check(spec.get("minReplicaCount") == 0 and spec.get("maxReplicaCount") == 12, "keda: replica bounds")
    trig = spec.get("triggers", [])
    got = sorted((t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in trig)
    want = sorted([("pipeline-worker.enrich", "events"), ("pipeline-worker.audit", "payments"), ("pipeline-worker.audit", "refunds")])
    check(got == want, f"keda: triggers (consumerGroup, topic) {got} != {want}")
    for t in trig:
        check(t["type"] == "kafka", "keda: trigger type kafka")
        md = t["metadata"]
        check(all(isinstance(v, str) for v in md.values()), f"keda: trigger metadata values are strings: {md}")
        check(md.get("bootstrapServers") == "kafka.kafka.svc:9093", "keda: bootstrapServers")
        check(md.get("lagThreshold") == "500" and md.get("activationLagThreshold") == "10", "keda: thresholds")
        # SASL_SSL + SCRAM-SHA-512 in kafka.librdkafka: the scaler connects the same way.
        check(md.get("sasl") == "scram_sha512", f"keda: trigger sasl from sasl.mechanism, got {md.get('sasl')}")
        check(md.get("tls") == "enable", f"keda: trigger tls from security.protocol, got {md.get('tls')}")
        check(md.get("unsafeSsl") == "false", "keda: extraMetadata passed through")
        check(t.get("authenticationRef", {}).get("name") == so["metadata"]["name"], "keda: authenticationRef")
    ta = one(ds, "TriggerAuthentication")
    refs = ta.get("spec", {}).get("secretTargetRef", [])
    # The workers' Secrets: SASL credentials from kafka.auth.existingSecret under
    # the keys of kafka.auth.secretKeys, the CA and the client certificate from kafka.tls.
    check(sorted((r["parameter"], r["name"], r["key"]) for r in refs) == sorted([
          ("username", "kafka-credentials", "user"), ("password", "kafka-credentials", "pass"),
          ("keyPassword", "kafka-credentials", "key-pass"),
          ("ca", "kafka-ca", "ca.crt"), ("cert", "kafka-client", "tls.crt"), ("key", "kafka-client", "tls.key")]),
          f"keda: TriggerAuthentication refs {refs}")
    env = {e["name"]: e for e in c.get("env", [])}
    for prop, key in (("sasl.username", "user"), ("sasl.password", "pass"), ("ssl.key.password", "key-pass")):
        secret_env(env, f"PIPELINE_WORKER__KAFKA__LIBRDKAFKA__{prop}", "kafka-credentials", key, "keda worker")

def helm_alerts(path, telemetry_rs, readme_md, *_):
    """The PrometheusRule: one alert per README "alert when" row, on metric
    names the worker declares (worker/src/telemetry/metrics.rs)."""
    ds = docs(path)
    prs = find(ds, "PrometheusRule")
    if not check(len(prs) == 1, f"alerts: one PrometheusRule, found {len(prs)}"):
        return
    pr = prs[0]
    check(pr["metadata"]["labels"].get("release") == "kube-prometheus-stack", "alerts: PrometheusRule labels")
    rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
    names = [r.get("alert") or r.get("record") for r in rules]
    exported = set(re.findall(r'^\s*(?:let name = )?"((?:messaging|pipeline)_[a-z_]+)"[,;]', open(telemetry_rs).read(), re.M))
    check(len(exported) >= 10, f"alerts: found only {sorted(exported)} in {telemetry_rs}")
    histograms = {n for n in exported if n.endswith("_seconds")}
    valid = exported | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
    for r in rules:
        if not r.get("alert", "").startswith("PipelineWorker"):
            continue
        used = set(re.findall(r"\b((?:messaging|pipeline)_[a-z_]+)\{", r["expr"]))
        check(used, f"alerts: {r['alert']} uses no worker metric")
        check(used <= valid, f"alerts: {r['alert']} uses metrics the worker does not export: {sorted(used - valid)}")
        check('namespace="streaming",service="pw-pipeline-worker"' in r["expr"], f"alerts: {r['alert']} selects this release's series")
        check(r["labels"].get("team") == "data-platform" and r["labels"].get("severity") in ("warning", "critical"), f"alerts: {r['alert']} labels {r['labels']}")
        check(r.get("annotations", {}).get("summary"), f"alerts: {r['alert']} has a summary")
    # Every row of the README's metrics table with an "alert when" has a rule on its metric.
    table = re.search(r"\| metric \| meaning \| alert when \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", open(readme_md).read())
    if check(table, "alerts: README.md metrics table not found"):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.group(1).splitlines()]
        alerting = [row for row in rows if len(row) >= 3 and row[2]]
        check(len(alerting) >= 7, f"alerts: README rows with an alert: {len(alerting)}")
        exprs = " ".join(r["expr"] for r in rules if r.get("alert", "").startswith("PipelineWorker") and r["alert"] != "PipelineWorkerTraps")
        for row in alerting:
            metric = re.match(r"`([a-z_]+)", row[0]).group(1)
            check(metric in valid, f"alerts: README metric {metric} is not exported by the worker")
            if metric == "pipeline_traps_total":
                check("PipelineWorkerTraps" not in names, "alerts: metrics.prometheusRule.disabled leaves PipelineWorkerTraps out")
                continue
            check(re.search(re.escape(metric) + r"(_bucket)?\{", exprs), f"alerts: no rule for README row {metric} ({row[2]})")
    ded = [r for r in rules if r.get("alert") == "PipelineWorkerDeadLettersOverLimits"]
    check(ded and 'error_kind=~"deadline|memory|fuel"' in ded[0]["expr"], "alerts: dead-letter alert on the deadline/memory/fuel kinds")
    lat = {re.search(r'pipeline="([^"]+)"', r["expr"]).group(1): r["expr"] for r in rules if r.get("alert") == "PipelineWorkerLatencyNearDeadline"}
    check(sorted(lat) == ["enrich"], f"alerts: one latency alert per pipeline: {sorted(lat)}")
    if "enrich" in lat:
        check(lat["enrich"].rstrip().endswith("> 0.8"), f"alerts: enrich p99 threshold 0.8 x deadlineMs 1000: {lat['enrich']}")
    check("CustomExtraRule" in names, "alerts: metrics.prometheusRule.extraRules appended")

def netpol_ports(path, label, *ports):
    """The TCP ports every NetworkPolicy allows egress to (DNS included)."""
    want = sorted(int(p) for p in ports)
    nps = find(docs(path), "NetworkPolicy")
    check(nps, f"{label}: no NetworkPolicy")
    for np in nps:
        got = sorted(p["port"] for r in np["spec"]["egress"] for p in r.get("ports", []) if p.get("protocol", "TCP") == "TCP")
        check(got == want, f"{label}: NetworkPolicy {np['metadata']['name']} egress TCP ports {got} != {want}")

def keda_modes(path, sasl, tls, *_):
    """sasl / tls of every trigger ("-": absent) and, when the chart makes one,
    never the same mode in its TriggerAuthentication too (KEDA refuses both)."""
    ds = docs(path)
    so = one(ds, "ScaledObject")
    ta = find(ds, "TriggerAuthentication")
    in_ta = {r["parameter"] for r in (ta[0]["spec"].get("secretTargetRef", []) if ta else [])}
    for trig in so.get("spec", {}).get("triggers", []):
        md = trig["metadata"]
        for k, want in (("sasl", sasl), ("tls", tls)):
            check(md.get(k, "-") == want, f"keda-modes: trigger {trig.get('name')} {k} {md.get(k, '-')!r} != {want!r}")
            check(not (k in md and k in in_ta), f"keda-modes: {k} both in the trigger and the TriggerAuthentication")

def binary_libs(dockerfile, ldd_out, *_):
    """Every shared library of the built binary is one the Dockerfile's build
    stage accepts (the distroless base's, or libz.so.1, which it copies): the
    same list the image build enforces, checked here without Docker."""
    m = re.search(r"grep -Ev '([^']+)'", open(dockerfile).read())
    if not check(m, "binary-libs: no library allow-list (grep -Ev '...') in the Dockerfile"):
        return
    allowed = re.compile(m.group(1))  # ERE, which Python's re reads the same here
    libs = [l.split()[0] for l in open(ldd_out) if l.strip() and l.split()[0].startswith("lib")]
    check(libs, f"binary-libs: no libraries in {ldd_out}")
    for lib in libs:
        check(allowed.fullmatch(lib), f"binary-libs: {lib} is not in the distroless runtime base nor copied by the Dockerfile")
    check("libz.so.1" in libs, "binary-libs: the binary no longer links libz.so.1: drop its copy from the Dockerfile")

def netpol_no_ingress(path, *_):
    """No allowed source: every NetworkPolicy denies all ingress (an empty list, not a missing one)."""
    for np in find(docs(path), "NetworkPolicy"):
        check(np["spec"].get("ingress", None) == [], f"netpol-no-ingress: {np['metadata']['name']} ingress {np['spec'].get('ingress')!r} != []")
        check("Ingress" in np["spec"]["policyTypes"], f"netpol-no-ingress: {np['metadata']['name']} policyTypes lack Ingress")

def pdb_no_policy(path, *_):
    pdb = one(docs(path), "PodDisruptionBudget")
    check("unhealthyPodEvictionPolicy" not in pdb.get("spec", {}), "pdb-no-policy: unhealthyPodEvictionPolicy rendered for Kubernetes < 1.26")

def no_kind(path, kind, label, *_):
    check(not find(docs(path), kind), f"{label}: no {kind} expected")

def compose(path, root, drain_default="20000"):
    import os
    m = json.load(open(path))
    svcs = m.get("services", {})
    for s in ("kafka", "kafka-init", "producer", "worker", "otel-collector"):
        check(s in svcs, f"compose: service {s}")
    if not all(s in svcs for s in ("kafka", "kafka-init", "producer", "worker", "otel-collector")):
        return
    check(re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", svcs["kafka"].get("image", "")), "compose: kafka from the official apache/kafka image")
    check(svcs["otel-collector"].get("image", "").startswith("otel/opentelemetry-collector-contrib:"), "compose: otel collector contrib image")
    w = svcs["worker"]
    b = w.get("build", {})
    check(os.path.realpath(b.get("context", "")) == os.path.realpath(root), f"compose: worker build context is the repo root ({b.get('context')})")
    check(b.get("dockerfile") == "compose/Dockerfile", "compose: worker dockerfile compose/Dockerfile")
    check(w.get("read_only") is True, "compose: worker read_only")
    check(any(t.split(":")[0] == "/tmp" for t in w.get("tmpfs", [])), "compose: worker tmpfs /tmp")
    vols = {v["target"]: v for v in w.get("volumes", [])}
    check(vols.get("/var/cache/pipeline-worker", {}).get("type") == "volume", "compose: cache volume at /var/cache/pipeline-worker")
    cfgm = vols.get("/etc/pipeline-worker/worker.toml", {})
    check(cfgm.get("read_only") is True, "compose: worker.toml mounted read-only")
    check(w.get("user", "").split(":")[0] not in ("", "0", "root"), "compose: worker runs as non-root")
    deps = w.get("depends_on", {})
    check(deps.get("kafka-init", {}).get("condition") == "service_completed_successfully", "compose: worker waits for topic creation")
    check(svcs["kafka-init"].get("depends_on", {}).get("kafka", {}).get("condition") == "service_healthy", "compose: kafka-init waits for a healthy broker")
    check(svcs["producer"].get("depends_on", {}).get("kafka-init", {}).get("condition") == "service_completed_successfully", "compose: producer waits for topics")
    check("kafka-console-producer.sh" in " ".join(svcs["producer"].get("command") or []), "compose: producer uses kafka-console-producer.sh")
    grace = w.get("stop_grace_period", "10s")
    gs = int(re.fullmatch(r"(\d+)s", grace).group(1)) if re.fullmatch(r"(\d+)s", grace) else 0
    env = w.get("environment", {})
    check(str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).startswith("http://otel-collector:"), "compose: worker exports OTLP to the collector")
    # Files the compose model mounts.
    toml_src = cfgm.get("source", "")
    if check(os.path.isfile(toml_src), f"compose: {toml_src} exists") and tomllib:
        cfg = tomllib.load(open(toml_src, "rb"))
        check(cfg["runtime"]["cache_dir"] == "/var/cache/pipeline-worker", "compose: worker.toml cache_dir is the volume")
        check(gs * 1000 >= cfg["runtime"].get("drain_timeout_ms", 20000) + 5000, f"compose: stop_grace_period {grace} must be at least the drain + 5 s")
        comp = cfg["pipelines"][0].get("component", "")
        check(comp.startswith("/opt/pipeline-worker/functions/"), f"compose: component {comp} is the one in the image")
        check(cfg["kafka"]["brokers"].split(",")[0].split(":")[0] == "kafka", "compose: brokers on the compose network")
        port = cfg.get("telemetry", {}).get("http_listen", ":9464").rsplit(":", 1)[1]
        check(any(str(p.get("target")) == port for p in w.get("ports", [])), f"compose: telemetry port {port} published")
        p0 = cfg["pipelines"][0]
        topics = set(p0.get("input_topics", []) + p0.get("output_topics", []) + [p0.get("dead_letter_topic", "")]) - {""}
        init = " ".join(svcs["kafka-init"].get("command") or [])
        check(all(t in init for t in topics), f"compose: kafka-init creates {sorted(topics)}")
        compose_control(m, svcs, cfg, path_of=os.path.realpath(os.path.join(root, "compose", "docker-compose.yml")))
    oc = [v for v in svcs["otel-collector"].get("volumes", []) if v.get("type") == "bind"]
    if check(oc and os.path.isfile(oc[0]["source"]), "compose: otel collector config file exists"):
        c = yaml.safe_load(open(oc[0]["source"]))
        check("otlp" in c.get("receivers", {}), "otel: otlp receiver")
        check("prometheus" in c.get("exporters", {}), "otel: prometheus exporter")
        pipes = c.get("service", {}).get("pipelines", {})
        for name, p in pipes.items():
            for kind in ("receivers", "processors", "exporters"):
                for ref in p.get(kind, []):
                    check(ref in c.get(kind, {}), f"otel: pipeline {name} uses undefined {kind[:-1]} {ref}")
        check("prometheus" in pipes.get("metrics", {}).get("exporters", []), "otel: metrics pipeline exports to prometheus")

def compose_control(m, svcs, cfg, path_of):
    """The control service: same image, `control --config` on the same worker.toml,
    the store volume shared with the worker where [registry].store points, the
    [control] port published, the demo tenant's token from DEMO_TOKEN."""
    c, w = svcs.get("control"), svcs["worker"]
    if not check(c, "compose: service control"):
        return
    reg, ctl = cfg.get("registry"), cfg.get("control")
    if not (check(reg, "compose: worker.toml has [registry]") and check(ctl, "compose: worker.toml has [control]")):
        return
    check(c.get("image") == w.get("image"), "compose: control runs the worker image")
    check(c.get("build") == w.get("build"), "compose: control has the worker's build (up never pulls pipeline-worker:dev)")
    wcfg = {v["target"]: v for v in w.get("volumes", [])}["/etc/pipeline-worker/worker.toml"]
    cv = {v["target"]: v for v in c.get("volumes", [])}
    ccfg = cv.get("/etc/pipeline-worker/worker.toml", {})
    check(ccfg.get("source") == wcfg.get("source") and ccfg.get("read_only") is True, "compose: control mounts the same worker.toml read-only")
    check(c.get("command") == ["control", "--config", "/etc/pipeline-worker/worker.toml"], f"compose: control command {c.get('command')}")
    check(c.get("read_only") is True, "compose: control read_only")
    check(c.get("user", "").split(":")[0] not in ("", "0", "root"), "compose: control runs as non-root")
    check("ALL" in (c.get("cap_drop") or []), "compose: control drops all capabilities")
    check(any(t.split(":")[0] == "/tmp" for t in c.get("tmpfs", [])), "compose: control tmpfs /tmp")
    check(cv.get(cfg["runtime"]["cache_dir"], {}).get("type") == "volume", "compose: control compile cache (runtime.cache_dir) on a volume")
    # The store: a named volume, the same in worker and control, where [registry].store points.
    store = reg.get("store", "")
    path = store[len("file://"):] if store.startswith("file://") else store
    check(path.startswith("/"), f"compose: [registry].store {store!r} is an absolute path (relative would be next to the read-only worker.toml)")
    wv = {v["target"]: v for v in w.get("volumes", [])}
    ws, cs = wv.get(path, {}), cv.get(path, {})
    check(ws.get("type") == "volume" and cs.get("type") == "volume", f"compose: a named volume at {path} in worker and control")
    check(ws.get("source") and ws.get("source") == cs.get("source"), f"compose: worker and control share the store volume ({ws.get('source')} / {cs.get('source')})")
    check(not ws.get("read_only") and not cs.get("read_only"), "compose: the store volume is writable in both")
    check(ws.get("source") in m.get("volumes", {}), "compose: the store volume is declared")
    check(cs.get("source") != cv.get(cfg["runtime"]["cache_dir"], {}).get("source"), "compose: the store is not the cache volume")
    # [control]: the port is published; tenants' tokens come from the environment.
    port = str(ctl.get("listen", ":0").rsplit(":", 1)[1])
    check(any(str(p.get("target")) == port for p in c.get("ports", [])), f"compose: control port {port} published")
    env = c.get("environment", {})
    for t in ctl.get("tenants", []):
        if "token_env" in t:
            check(env.get(t["token_env"]), f"compose: control sets {t['token_env']} (token of tenant {t['name']})")
    p0 = cfg["pipelines"][0]
    check(p0.get("tenant") in {t["name"] for t in ctl.get("tenants", [])}, f"compose: pipeline {p0['name']} belongs to a control tenant")
    check(p0.get("component"), f"compose: pipeline {p0['name']} keeps its bundled component (runs before any upload)")
    check(c.get("depends_on", {}).get("kafka-init", {}).get("condition") == "service_completed_successfully", "compose: control waits for Kafka")
    # The documented defaults, from the file itself (the model holds them interpolated).
    raw = open(path_of).read()
    check("${DEMO_TOKEN:-demo-token}" in raw, "compose: DEMO_TOKEN defaults to demo-token")
    check('"${CONTROL_HOST_PORT:-8081}:' + port + '"' in raw, "compose: control port published as ${CONTROL_HOST_PORT:-8081}")
    header = "\n".join(l for l in raw.splitlines() if l.startswith("#"))
    check(re.search(r"pipeline-worker functions upload \S+ \S+ --activate " + re.escape(p0["name"]), header), "compose: header shows how to upload a function with the CLI")

def dockerfile(path, root):
    import os, shlex
    text = open(path).read()
    # Join continuation lines, drop comments.
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s); cur = ""
    args = {}
    stages = []  # (from, name, [instructions])
    for ln in lines:
        op, _, rest = ln.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            k, _, v = rest.partition("="); args[k.strip()] = v.strip().strip('"')
            continue
        if op == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append((image, name, []))
            continue
        if stages:
            stages[-1][2].append((op, rest))
    check(len(stages) >= 2, "Dockerfile: multi-stage")
    if not stages:
        return
    images = [s[0] for s in stages]
    check("rust:1.95-bookworm" in images, f"Dockerfile: a builder stage FROM rust:1.95-bookworm (stages: {images})")
    final_image, final_name, final = stages[-1]
    # Shell-less base: distroless (not its :debug variants, which add busybox),
    # the same Debian release as the builder (the binary links its glibc and libssl3).
    check(re.fullmatch(r"gcr\.io/distroless/cc-debian12:nonroot(@sha256:[0-9a-f]{64})?", final_image) is not None,
          f"Dockerfile: final stage FROM gcr.io/distroless/cc-debian12:nonroot, got {final_image}")
    check("debug" not in final_image and not re.search(r"\b(debian|ubuntu|alpine|busybox)[:@]", final_image), f"Dockerfile: final base {final_image} has no shell")
    check(args.get("DEBIAN_SUITE") == "bookworm", f"Dockerfile: builder on bookworm (Debian 12) like the distroless cc-debian12 base, got {args.get('DEBIAN_SUITE')}")
    users = [r for op, r in final if op == "USER"]
    check(users and re.fullmatch(r"[0-9]+:[0-9]+", users[-1]) is not None, f"Dockerfile: final stage USER numeric uid:gid (runAsNonRoot needs a number), got {users}")
    check(users and users[-1] == "65532:65532", f"Dockerfile: final stage USER 65532:65532 (distroless nonroot), got {users}")
    # No shell in the final stage: every RUN there must be in exec form.
    for op, r in final:
        if op == "RUN":
            check(r.lstrip().startswith("["), f"Dockerfile: shell-form RUN in the shell-less final stage: {r[:80]}")
        if op in ("CMD", "ENTRYPOINT"):
            check(r.lstrip().startswith("["), f"Dockerfile: {op} must be exec form (no shell): {r}")
    check(any(op == "RUN" and "pipeline-worker" in r and "--help" in r for op, r in final), "Dockerfile: the final stage runs the binary once (its libraries resolve in the base)")
    # Debug info stripped in the image build only (the workspace profile keeps line tables).
    build = [s for s in stages if s[1] == "build"]
    benv = " ".join(r for op, r in (build[0][2] if build else []) if op == "ENV")
    check(re.search(r"CARGO_PROFILE_RELEASE_DEBUG=(false|0|none)\b", benv), f"Dockerfile: build stage sets CARGO_PROFILE_RELEASE_DEBUG=false: {benv}")
    check(re.search(r"CARGO_PROFILE_RELEASE_STRIP=debuginfo\b", benv), f"Dockerfile: build stage sets CARGO_PROFILE_RELEASE_STRIP=debuginfo (symbols kept for backtraces): {benv}")
    brun = " ".join(r for op, r in (build[0][2] if build else []) if op == "RUN")
    check("libz.so.1" in brun and "/out/rootfs" in brun, "Dockerfile: build stage copies libz.so.1 (not in distroless) for the runtime")
    check(any(op == "COPY" and "--from=build" in r and "/out/rootfs/" in r for op, r in final), "Dockerfile: final stage copies the extra libraries")
    # The chart and compose run as the image's user (volume ownership, fsGroup).
    if users:
        uid, gid = (int(x) for x in users[-1].split(":"))
        vals = yaml.safe_load(open(os.path.join(root, "compose/helm/pipeline-worker/values.yaml")))
        psc, csc = vals["podSecurityContext"], vals["containerSecurityContext"]
        check((psc.get("runAsUser"), psc.get("runAsGroup"), psc.get("fsGroup"), csc.get("runAsUser"), csc.get("runAsGroup")) == (uid, gid, gid, uid, gid),
              f"chart values: runAsUser/runAsGroup/fsGroup match the image's USER {uid}:{gid}")
        comp = yaml.safe_load(open(os.path.join(root, "compose/docker-compose.yml")))
        for s in ("worker", "control"):
            check(comp["services"][s].get("user") == f"{uid}:{gid}", f"compose: {s} user matches the image's USER {uid}:{gid}")
    ws = open(os.path.join(root, "Cargo.toml")).read()
    check(re.search(r'\[profile\.release\][^\[]*debug\s*=', ws), "Cargo.toml: [profile.release] keeps its debug setting (profiling); the image overrides it")
    compilers = re.compile(r"\b(gcc|g\+\+|clang|cmake|make|build-essential|rustc|cargo|rustup|libssl-dev|zlib1g-dev|pkg-config)\b")
    for op, r in final:
        if op == "RUN" and "apt-get install" in r:
            check(not compilers.search(r.split("apt-get install", 1)[1].split("&&")[0]), f"Dockerfile: final stage installs a build tool: {r[:120]}")
        if op in ("COPY", "ADD") and "--from=" not in r:
            srcs = shlex.split(r)[:-1]
            for s in srcs:
                if not s.startswith("--"):
                    check(os.path.exists(os.path.join(root, s)), f"Dockerfile: COPY source {s} exists in the repo")
    ops = {op: r for op, r in final}
    check(ops.get("ENTRYPOINT") == '["pipeline-worker"]', f"Dockerfile: ENTRYPOINT [\"pipeline-worker\"], got {ops.get('ENTRYPOINT')}")
    check(ops.get("CMD") == '["run", "--config", "/etc/pipeline-worker/worker.toml"]', f"Dockerfile: CMD, got {ops.get('CMD')}")
    check("9464" in ops.get("EXPOSE", ""), "Dockerfile: EXPOSE 9464")
    check("HEALTHCHECK" not in ops, "Dockerfile: no HEALTHCHECK (no HTTP client in the image)")
    check(re.search(r"#.*HEALTHCHECK", text) is not None, "Dockerfile: comment explaining the missing HEALTHCHECK")
    copies = " ".join(r for op, r in final if op == "COPY")
    check("/usr/local/bin/pipeline-worker" in copies, "Dockerfile: binary at /usr/local/bin/pipeline-worker")
    check("/opt/pipeline-worker/functions/" in copies, "Dockerfile: example component in /opt/pipeline-worker/functions/")
    check(any(op == "COPY" and "--chown=65532:65532" in r and r.rstrip().endswith("/var/cache/pipeline-worker") for op, r in final), "Dockerfile: cache dir owned by 65532")
    check(any(op == "COPY" and "--chown=65532:65532" in r and r.rstrip().endswith("/var/lib/pipeline-worker/registry") for op, r in final),
          "Dockerfile: registry store dir (compose/worker.toml [registry].store) owned by 65532, so a fresh named volume is writable")
    check("8081" in ops.get("EXPOSE", ""), "Dockerfile: EXPOSE 8081 (control API)")
    alltext = "\n".join(r for _, _, ins in stages for _, r in ins)
    check("rustup target add wasm32-wasip2" in alltext, "Dockerfile: rustup target add wasm32-wasip2")
    check(re.search(r"CARGO_TARGET_DIR=target/guests cargo build [^\n]*--release[^\n]*--target wasm32-wasip2[^\n]*-p enrich-rs", alltext), "Dockerfile: builds enrich-rs for wasm32-wasip2")
    check(re.search(r"cargo build [^\n]*--release[^\n]*-p pipeline-worker", alltext), "Dockerfile: cargo build --release -p pipeline-worker")
    for tool in ("cmake", "g++", "make", "perl"):
        check(re.search(r"apt-get install[^\n]*" + re.escape(tool), "\n".join(r for op, r in stages[0][2] if op == "RUN")), f"Dockerfile: builder installs {tool}")
    # The SDK builder stage: the toolchains `pipeline-worker build` needs, with
    # the SDK packages installed as a customer installs them, never the
    # default target (the runtime stage stays last).
    sb = [st for st in stages if st[1] == "sdk-builder"]
    if check(len(sb) == 1, f"Dockerfile: one sdk-builder stage (stages: {[st[1] for st in stages]})"):
        names = [st[1] for st in stages]
        check(names.index("sdk-builder") < len(stages) - 1, "Dockerfile: sdk-builder is not the final (default) stage")
        sb_from, _, sb_ins = sb[0]
        check(sb_from == "toolchain", f"Dockerfile: sdk-builder FROM toolchain (cargo + rustup target add wasm32-wasip2), got {sb_from}")
        tc = [st for st in stages if st[1] == "toolchain"]
        check(bool(tc) and "rustup target add wasm32-wasip2" in " ".join(r for op, r in tc[0][2] if op == "RUN"),
              "Dockerfile: the toolchain stage under sdk-builder installs wasm32-wasip2")
        run = " ".join(r for op, r in sb_ins if op == "RUN")
        env = " ".join(r for op, r in sb_ins if op == "ENV")
        copies = [r for op, r in sb_ins if op == "COPY"]
        check(re.search(r"apt-get install[^&]*\bpython3\b[^&]*\bpython3-venv\b", run), "Dockerfile: sdk-builder installs python3 and python3-venv")
        check(re.search(r"pip install [^&]*\./sdk-wit/python\b", run), "Dockerfile: sdk-builder pip-installs the pipeline-sdk package of sdk-wit/python")
        check("pipeline-sdk --version" in run and "pipeline-sdk-js --version" in run, "Dockerfile: sdk-builder runs both SDK commands once")
        check(re.search(r"npm pack[^&]*\).*npm install --global[^&]*pipeline-sdk-\*\.tgz", run), "Dockerfile: sdk-builder installs the npm tarball of sdk-wit/js globally")
        node_stage = [st for st in stages if st[1] == "node"]
        node_image = node_stage[0][0] if node_stage else ""
        m = re.fullmatch(r"node:(\d+)-bookworm-slim", node_image)
        check(m is not None and int(m.group(1)) >= 20, f"Dockerfile: Node.js >= 20 from node:<major>-bookworm-slim (the JS SDK needs it), got {node_image!r}")
        check(any("--from=node" in r and r.split()[-1] == "/usr/local/bin/node" for r in copies), "Dockerfile: sdk-builder copies node into /usr/local/bin")
        check(any("--from=build" in r and r.split()[-1] == "/usr/local/bin/pipeline-worker" for r in copies), "Dockerfile: sdk-builder has the worker binary")
        check("/opt/pipeline-sdk/bin" in env and re.search(r"PATH=/opt/pipeline-sdk/bin:\$PATH", env), "Dockerfile: sdk-builder puts the Python SDK venv on PATH")
        check(re.search(r"PIPELINE_SDK_HOME=(\s|$)", env), "Dockerfile: sdk-builder sets PIPELINE_SDK_HOME empty (installed packages, never /src)")
        check(re.search(r"cp -R sdk-wit/rust (\S+)", run) and re.search(r"PIPELINE_SDK_RUST=" + re.escape(re.search(r"cp -R sdk-wit/rust (\S+)", run).group(1)) + r"\b", env),
              "Dockerfile: sdk-builder's PIPELINE_SDK_RUST is the crate it copies")
        ops_sb = {op: r for op, r in sb_ins}
        check(ops_sb.get("ENTRYPOINT") == '["pipeline-worker"]', "Dockerfile: sdk-builder ENTRYPOINT [\"pipeline-worker\"]")
        readme_text = open(os.path.join(root, "README.md")).read()
        check("--target sdk-builder" in readme_text, "README.md documents the sdk-builder image (--target sdk-builder)")
    ign = path + ".dockerignore"
    if check(os.path.isfile(ign), "Dockerfile: compose/Dockerfile.dockerignore exists"):
        pats = {l.strip() for l in open(ign) if l.strip() and not l.startswith("#")}
        for p in ("target", ".git", ".kafka", ".venv"):
            check(p in pats, f"Dockerfile.dockerignore: excludes {p}")

def readme(chart_dir, *_):
    import os
    vals = yaml.safe_load(open(os.path.join(chart_dir, "values.yaml")))
    doc = set(re.findall(r"^\| `([^`]+)`", open(os.path.join(chart_dir, "README.md")).read(), re.M))
    def leaves(d, p=""):
        if isinstance(d, dict) and d:
            for k, x in d.items():
                yield from leaves(x, f"{p}.{k}" if p else k)
        else:
            yield p
    for leaf in leaves(vals):
        parts = leaf.split(".")
        check(any(".".join(parts[:n]) in doc for n in range(1, len(parts) + 1)), f"chart README: value {leaf} is not listed")
    schema = json.load(open(os.path.join(chart_dir, "values.schema.json")))
    check(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), "schema: draft-07")
    check(schema.get("additionalProperties") is False, "schema: additionalProperties false at the top level")
    for k in ("image", "kafka", "runtime", "telemetry", "functions", "cache", "autoscaling", "keda", "pdb", "service", "serviceAccount", "metrics", "registry", "control"):
        check(schema["properties"].get(k, {}).get("additionalProperties") is False, f"schema: additionalProperties false under {k}")
    check(set(schema["properties"]) == set(vals), f"schema and values.yaml top-level keys differ: {set(schema['properties']) ^ set(vals)}")
    for path in (("registry", "persistence"), ("registry", "secretKeys"), ("control", "service"), ("control", "livenessProbe"), ("control", "readinessProbe")):
        node = schema["properties"][path[0]]["properties"][path[1]]
        check(node.get("additionalProperties") is False, f"schema: additionalProperties false under {'.'.join(path)}")
    tenant = schema["properties"]["control"]["properties"]["tenants"]["items"]
    check(tenant.get("additionalProperties") is False, "schema: additionalProperties false in control.tenants[]")
    pitems = schema["properties"]["pipelines"]["items"]
    check("tenant" in pitems["properties"] and "component" not in pitems.get("required", []), "schema: pipelines[].tenant, component optional")

def rust_struct_fields(src, name):
    """Field names of `struct name` in config.rs (serde rename honoured)."""
    m = re.search(r"pub struct " + name + r"\s*\{(.*?)\n\}", src, re.S)
    if not m:
        return None
    fields, rename = set(), None
    for line in m.group(1).splitlines():
        r = re.search(r'rename\s*=\s*"([^"]+)"', line)
        if r:
            rename = r.group(1)
        f = re.match(r"\s*pub\s+(\w+)\s*:", line)
        if f:
            fields.add(rename or f.group(1)); rename = None
    return fields

def config_keys(toml_path, config_rs, label):
    """Every key of a worker.toml is a field of worker/src/config.rs (deny_unknown_fields)."""
    if tomllib is None:
        return
    src = open(config_rs).read()
    cfg = tomllib.load(open(toml_path, "rb"))
    structs = {n: rust_struct_fields(src, n) for n in ("Config", "KafkaConfig", "RuntimeConfig", "PipelineConfig", "Limits", "RegistryConfig", "ControlConfig", "TenantConfig")}
    tele_name = next(iter(re.findall(r"pub struct (\w*Telemetry\w*)", src)), None)
    # [telemetry] as specified for the worker (see scripts/check-deploy.sh header) until config.rs has it.
    tele = rust_struct_fields(src, tele_name) if tele_name else {"http_listen", "otlp_endpoint", "log_format"}
    def sub(keys, allowed, where):
        if allowed is None:
            return
        for k in sorted(set(keys) - allowed):
            check(False, f"{label}: unknown key {where}{k} (not a field in worker/src/config.rs)")
    top = set(structs["Config"] or ())
    if "telemetry" in cfg and "telemetry" not in top:
        print(f"WARN {label}: [telemetry] is not in worker/src/config.rs yet; the worker refuses this file until the telemetry config lands")
        top.add("telemetry")
    sub(cfg, top or None, "")
    sub(cfg.get("kafka", {}), structs["KafkaConfig"], "kafka.")
    sub(cfg.get("runtime", {}), structs["RuntimeConfig"], "runtime.")
    sub(cfg.get("telemetry", {}), tele, "telemetry.")
    if "registry" in cfg:
        check(structs["RegistryConfig"] is not None, f"{label}: [registry] but no RegistryConfig in worker/src/config.rs")
        sub(cfg["registry"], structs["RegistryConfig"], "registry.")
        for k, v in cfg["registry"].get("store_options", {}).items():
            check(isinstance(v, str), f"{label}: registry.store_options.{k} must be a string")
    if "control" in cfg:
        check(structs["ControlConfig"] is not None, f"{label}: [control] but no ControlConfig in worker/src/config.rs")
        sub(cfg["control"], structs["ControlConfig"], "control.")
        for i, t in enumerate(cfg["control"].get("tenants", [])):
            sub(t, structs["TenantConfig"], f"control.tenants[{i}].")
            check(("token_sha256" in t) != ("token_env" in t), f"{label}: control.tenants[{i}] needs exactly one of token_sha256 and token_env")
        names = {t.get("name") for t in cfg["control"].get("tenants", [])}
        for i, p in enumerate(cfg.get("pipelines", [])):
            check("tenant" not in p or p["tenant"] in names, f"{label}: pipelines[{i}].tenant {p.get('tenant')!r} is not a control tenant")
    for i, p in enumerate(cfg.get("pipelines", [])):
        check("component" in p or ("tenant" in p and "registry" in cfg), f"{label}: pipelines[{i}] has no component and no tenant + [registry]")
        sub(p, structs["PipelineConfig"], f"pipelines[{i}].")
        sub(p.get("limits", {}), structs["Limits"], f"pipelines[{i}].limits.")
    managed = {"bootstrap.servers", "group.id", "enable.auto.offset.store", "enable.idempotence", "acks", "partition.assignment.strategy"}
    for k in cfg.get("kafka", {}).get("librdkafka", {}):
        check(k not in managed, f"{label}: kafka.librdkafka.{k} is managed by the worker")
    for k, v in cfg.get("kafka", {}).get("librdkafka", {}).items():
        check(isinstance(v, str), f"{label}: kafka.librdkafka.{k} must be a string")

def toml_of_configmap(path, out):
    cm = one(docs(path), "ConfigMap")
    open(out, "w").write(cm.get("data", {}).get("worker.toml", ""))

def k8s_schemas(swagger, outdir):
    """Kubernetes' OpenAPI v2 document -> one standalone, strict JSON schema per
    kind, named as kubeconform looks them up ({kind}{-group}-{version}.json):
    the approach of kubeconform's openapi2jsonschema.py. $refs are inlined
    (a recursive type, only CRD's JSONSchemaProps, is cut to {}), objects with
    properties get additionalProperties: false (a typo is an error), and
    int-or-string / Quantity accept what the API server accepts."""
    import os
    spec = json.load(open(swagger))
    defs = spec["definitions"]
    special = {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    }
    def expand(node, stack):
        if isinstance(node, list):
            return [expand(x, stack) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in special:
                return special[name]
            if name in stack:
                return {}
            return expand(defs[name], stack | {name})
        if node.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        out = {}
        for k, v in node.items():
            if k == "properties":
                out[k] = {pk: expand(pv, stack) for pk, pv in v.items()}
            elif k in ("items", "additionalProperties") and isinstance(v, dict):
                out[k] = expand(v, stack)
            elif k in ("allOf", "anyOf", "oneOf"):
                out[k] = [expand(x, stack) for x in v]
            elif k.startswith("x-kubernetes-") and k != "x-kubernetes-preserve-unknown-fields":
                continue
            elif k == "description":
                continue
            else:
                out[k] = v
        if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    os.makedirs(outdir, exist_ok=True)
    n = 0
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
            suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
            schema = expand(d, frozenset({name}))
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            # apiVersion and kind: exactly this GVK (the document has them as plain strings).
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"const": f"{group}/{version}" if group else version}
            props["kind"] = {"const": kind}
            with open(os.path.join(outdir, f"{kind.lower()}{suffix}.json"), "w") as f:
                json.dump(schema, f, separators=(",", ":"))
            n += 1
    check(n > 100, f"k8s-schemas: only {n} kinds in {swagger}")
    print(f"{n} kinds")

if __name__ == "__main__":
    cmd, *a = sys.argv[1:]
    globals()[cmd.replace("-", "_")](*a)
    for e in errors:
        print(e)
    sys.exit(1 if errors else 0)
PY

# Schemas without a download at check time: the OpenAPI document of
# Kubernetes ships in the Go module k8s.io/kubernetes (api/openapi-spec,
# 18 MB zip), served by the Go module proxy like any module; checks.py turns
# it into kubeconform's layout (standalone, strict) once per version, cached
# in $SCHEMA_CACHE.
ensure_schemas() {
    schemas_ok=0
    if [ -f "$SCHEMA_CACHE/.complete" ]; then
        ok "Kubernetes $KUBE_VERSION schemas cached in $SCHEMA_CACHE"; schemas_ok=1
    else
        t0=$(date +%s)
        if go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" >"$OUT/k8s-module.json" 2>"$OUT/k8s-module.err"; then
            swagger="$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$OUT/k8s-module.json")/api/openapi-spec/swagger.json"
            rm -rf "$SCHEMA_CACHE.tmp"
            if "$PYTHON" "$OUT/checks.py" k8s-schemas "$swagger" "$SCHEMA_CACHE.tmp" >"$OUT/k8s-schemas.out" 2>&1; then
                rm -rf "$SCHEMA_CACHE" && mkdir -p "$(dirname "$SCHEMA_CACHE")" && mv "$SCHEMA_CACHE.tmp" "$SCHEMA_CACHE" && touch "$SCHEMA_CACHE/.complete"
                ok "Kubernetes $KUBE_VERSION schemas: $(cat "$OUT/k8s-schemas.out") from k8s.io/kubernetes@v$KUBE_VERSION in $(( $(date +%s) - t0 ))s"
                TIMINGS+=("$(( $(date +%s) - t0 ))s  k8s.io/kubernetes@v$KUBE_VERSION download + schema generation")
                schemas_ok=1
            else
                fail "schema generation from $swagger:"; cat "$OUT/k8s-schemas.out" >&2
            fi
        else
            fail "go mod download k8s.io/kubernetes@v$KUBE_VERSION:"; cat "$OUT/k8s-module.err" >&2
        fi
    fi
}

# CHECK_DEPLOY_TOOLS_ONLY=1: install the tools, fill the schema cache and warm
# Go's build cache for composecheck, check nothing. CI runs this in the
# background (nice 19) while cargo compiles, so the checks later start at once.
if [ "${CHECK_DEPLOY_TOOLS_ONLY:-0}" = 1 ]; then
    ensure_schemas
    if ! docker compose version >/dev/null 2>&1; then
        (cd "$ROOT/compose/tools/composecheck" && go build -o "$OUT/composecheck" .) >"$OUT/composecheck-build.log" 2>&1 \
            && ok "composecheck built (Go build cache warm)" || warn "composecheck did not build (the compose step will say why)"
    fi
    [ "$schemas_ok" = 1 ] || { printf 'FAIL  %s\n' "${FAILURES[@]}" >&2; exit 1; }
    printf '\ntools ready\n'
    exit 0
fi

# Runs one check subcommand of checks.py; each failed assertion becomes a FAIL line.
# Lines starting with "WARN " are warnings, any other line is a failed assertion.
pycheck() {
    local label="$1"; shift
    local out status=0
    out="$("$PYTHON" "$OUT/checks.py" "$@" 2>&1)" || status=$?
    while IFS= read -r line; do
        case "$line" in
            "") ;;
            "WARN "*) warn "${line#WARN }" ;;
            *) [ "$status" -ne 0 ] && fail "$label: $line" ;;
        esac
    done <<<"$out"
    if [ "$status" -eq 0 ]; then ok "$label"; fi
}

###############################################################################
step "helm lint"

# --strict turns lint warnings into failures.
for v in "" "$CI_VALUES/full-values.yaml" "$CI_VALUES/keda-values.yaml"; do
    label="helm lint --strict ${v:+-f ${v#"$ROOT"/}}"; [ -n "$v" ] || label="helm lint --strict (default values)"
    if run lint "$HELM" lint --strict "$CHART" ${v:+--values "$v"}; then
        ok "$label"
    else
        fail "$label"; cat "$OUT/lint.out" "$OUT/lint.err" >&2
    fi
done
step_done

###############################################################################
step "helm template"

RENDERED=()   # every successful render, for kubeconform
render() {  # render NAME [helm args...]
    local name="$1"; shift
    if "$HELM" template pw "$CHART" --namespace streaming --kube-version "$KUBE_VERSION" "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
        ok "helm template: $name ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
        RENDERED+=("$OUT/$name.yaml")
        return 0
    fi
    fail "helm template: $name"; cat "$OUT/$name.err" >&2
    return 1
}
render default && pycheck "default render" helm-default "$OUT/default.yaml"
render full --values "$CI_VALUES/full-values.yaml" && pycheck "full render (HPA, PDB, ServiceMonitor, existingSecret, TLS, persistence)" helm-full "$OUT/full.yaml"
render keda --values "$CI_VALUES/keda-values.yaml" && pycheck "keda render (sasl/tls and the TriggerAuthentication from the workers' Kafka settings)" helm-keda "$OUT/keda.yaml"

# A mode the TriggerAuthentication carries leaves the trigger; an external
# TriggerAuthentication that sets them: keda.authModesFromLibrdkafka=false.
render keda-sasl-in-ta --values "$CI_VALUES/keda-values.yaml" \
    --set 'keda.triggerAuthentication.secretTargetRef[0].parameter=sasl,keda.triggerAuthentication.secretTargetRef[0].key=sasl-mode' \
    && pycheck "KEDA: sasl from secretTargetRef is not also in the triggers" keda-modes "$OUT/keda-sasl-in-ta.yaml" - enable
render keda-external-ta --values "$CI_VALUES/keda-values.yaml" \
    --set keda.authModesFromLibrdkafka=false,keda.triggerAuthentication.create=false,keda.authenticationRef=kafka-auth \
    && pycheck "KEDA: keda.authModesFromLibrdkafka=false leaves sasl/tls to the external TriggerAuthentication" keda-modes "$OUT/keda-external-ta.yaml" - -
pycheck "KEDA: keda-values triggers connect like the workers (SASL_SSL, SCRAM-SHA-512)" keda-modes "$OUT/keda.yaml" scram_sha512 enable

# Alerts: off by default, the README's "alert when" column when enabled.
pycheck "no PrometheusRule by default" no-kind "$OUT/default.yaml" PrometheusRule default
render alerts --set metrics.prometheusRule.enabled=true \
    --set metrics.prometheusRule.labels.release=kube-prometheus-stack,metrics.prometheusRule.alertLabels.team=data-platform \
    --set 'metrics.prometheusRule.disabled={PipelineWorkerTraps}' \
    --set 'metrics.prometheusRule.extraRules[0].alert=CustomExtraRule,metrics.prometheusRule.extraRules[0].expr=vector(1)' \
    && pycheck "PrometheusRule (README alerts, exported metric names, disabled, extraRules)" helm-alerts "$OUT/alerts.yaml" "$ROOT/worker/src/telemetry/metrics.rs" "$ROOT/README.md"
# The full values' per-pipeline latency alerts use each pipeline's deadlineMs.
if grep -q 'pipeline="enrich"}\[5m\]))) > 0.4$' "$OUT/full.yaml"; then
    ok "PrometheusRule (full): enrich latency alert at 0.8 x its 500 ms deadline"
else
    fail "PrometheusRule (full): enrich latency alert is not at 0.8 x 500 ms"
fi

# Egress ports follow the endpoints: the store's endpoint URL (any object_store
# spelling of the key; https without a port is 443), an AWS bucket (443), the
# brokers' ports, or the ports given.
render netpol-store --set registry.enabled=true,registry.store=s3://b/p,registry.storeOptions.endpoint=https://s3.example:8443 \
    --set kafka.brokers='a:9094\,b:9094\,c' \
    && pycheck "NetworkPolicy egress ports from the store endpoint and kafka.brokers" netpol-ports "$OUT/netpol-store.yaml" netpol-store 53 8443 9094 9092
render netpol-aws --set registry.enabled=true,registry.store=s3://b/p,telemetry.otlpEndpoint=http://collector.obs \
    --set 'networkPolicy.egress.kafka.ports={9096}' \
    && pycheck "NetworkPolicy egress ports: AWS S3 443, OTLP URL without a port 80, kafka ports given" netpol-ports "$OUT/netpol-aws.yaml" netpol-aws 53 9096 443 80
render netpol-closed --set networkPolicy.ingress.monitoringNamespace= \
    && pycheck "NetworkPolicy with no allowed source denies all ingress" netpol-no-ingress "$OUT/netpol-closed.yaml"
# unhealthyPodEvictionPolicy exists from Kubernetes 1.26 on; the chart supports 1.25.
if "$HELM" template pw "$CHART" --kube-version 1.25.0 >"$OUT/kube-1.25.yaml" 2>"$OUT/kube-1.25.err"; then
    pycheck "PDB without unhealthyPodEvictionPolicy on Kubernetes 1.25" pdb-no-policy "$OUT/kube-1.25.yaml"
else
    fail "helm template --kube-version 1.25.0:"; cat "$OUT/kube-1.25.err" >&2
fi
render netpol-off --set networkPolicy.enabled=false && pycheck "networkPolicy.enabled=false: no NetworkPolicy" no-kind "$OUT/netpol-off.yaml" NetworkPolicy netpol-off
# Grace period: the drain plus 5 s is the smallest accepted.
render grace-edge --set terminationGracePeriodSeconds=25
# A file location is not a secret (the file is a mounted Secret): allowed.
render key-location --set-string 'kafka.librdkafka.ssl\.key\.location=/etc/kafka-tls/client/tls.key'

# The registry on a shared PVC with the control plane (full-values.yaml uses S3):
# the store volume is created ReadWriteMany and mounted read-write in both.
TOKEN_SHA=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   # sha256 of "test"
cat >"$OUT/registry-pvc-values.yaml" <<YAML
replicaCount: 2
registry:
  enabled: true
  persistence:
    enabled: true
    storageClass: nfs
control:
  enabled: true
  tenants:
    - name: demo
      tokenSha256: $TOKEN_SHA
pipelines:
  - name: enrich
    tenant: demo
    inputTopics: [events]
    component: enrich_rs.wasm
    outputTopics: [events-enriched]
    deadLetterTopic: events-dlq
YAML
render registry-pvc --values "$OUT/registry-pvc-values.yaml" \
    && pycheck "registry-pvc render (shared RWX store, control plane, no S3 credentials, control memory 1728Mi)" helm-registry-pvc "$OUT/registry-pvc.yaml"
# 128 MiB uploads: 256 MiB + 23 x 128 MiB = 3200 MiB.
render control-128m --values "$OUT/registry-pvc-values.yaml" --set control.maxComponentBytes=134217728 \
    && pycheck "control memory from control.maxComponentBytes (128 MiB -> 3200Mi)" control-memory "$OUT/control-128m.yaml" 3200Mi
# An explicit limit at exactly the need is accepted (and kept).
render control-limit-edge --values "$OUT/registry-pvc-values.yaml" --set control.resources.limits.memory=1728Mi,control.resources.requests.memory=1Gi
# A single worker without control may keep a directory store on a volume of its own (NOTES warns).
render registry-single-dir --set registry.enabled=true,registry.store=/var/lib/pipeline-worker/registry \
    && pycheck "registry with a directory store, one replica, no control" no-control-objects "$OUT/registry-single-dir.yaml"

# A [control]-only change (a tenant) restarts the control plane, not the workers.
if render full-tenant --values "$CI_VALUES/full-values.yaml" --set control.maxComponentBytes=1234; then
    pycheck "checksum/config: [control]-only change rolls the control pod only" checksum-split "$OUT/full.yaml" "$OUT/full-tenant.yaml"
fi

# checksum/config follows the rendered config.
if render changed --set runtime.maxInFlight=1234; then
    a=$(grep -m1 'checksum/config' "$OUT/default.yaml"); b=$(grep -m1 'checksum/config' "$OUT/changed.yaml")
    if [ -n "$a" ] && [ "$a" != "$b" ]; then ok "checksum/config changes with the config"; else fail "checksum/config did not change with the config"; fi
fi

# Renders that must fail, with the message that says why.
must_fail() {  # must_fail LABEL EXPECTED_REGEX [helm args...]
    local label="$1" want="$2"; shift 2
    if "$HELM" template pw "$CHART" --kube-version "$KUBE_VERSION" "$@" >"$OUT/neg.out" 2>"$OUT/neg.err"; then
        fail "$label: rendered, expected a failure"
    elif grep -Eq "$want" "$OUT/neg.err"; then
        ok "$label: fails ($(grep -Eo "$want" "$OUT/neg.err" | head -1))"
    else
        fail "$label: failed without /$want/:"; cat "$OUT/neg.err" >&2
    fi
}
must_fail "HPA and KEDA both enabled" "autoscaling.enabled and keda.enabled are mutually exclusive" \
    --values "$CI_VALUES/keda-values.yaml" --set autoscaling.enabled=true

printf 'replicaCout: 3\n' >"$OUT/typo-top.yaml"
must_fail "typo'd top-level key (replicaCout)" "additional propert(y|ies).*replicaCout|replicaCout.*not allowed" --values "$OUT/typo-top.yaml"
printf 'kafka:\n  groupID: x\n' >"$OUT/typo-nested.yaml"
must_fail "typo'd nested key (kafka.groupID)" "additional propert(y|ies).*groupID|groupID.*not allowed" --values "$OUT/typo-nested.yaml"
printf 'pipelines:\n  - name: a\n    inputTopics: [in]\n    component: a.wasm\n    outputTopics: [out]\n    deadLetterTopic: dlq\n    limits:\n      deadlineMS: 5\n' >"$OUT/typo-limits.yaml"
must_fail "typo'd limits key (deadlineMS)" "additional propert(y|ies).*deadlineMS|deadlineMS.*not allowed" --values "$OUT/typo-limits.yaml"
printf 'kafka:\n  librdkafka:\n    acks: "1"\n' >"$OUT/managed.yaml"
must_fail "managed librdkafka key (acks)" "/kafka/librdkafka/acks" --values "$OUT/managed.yaml"
must_fail "grace period not above the drain" "terminationGracePeriodSeconds \\(20\\) must be at least runtime.drainTimeoutMs/1000 \\+ 5" \
    --set terminationGracePeriodSeconds=20
must_fail "grace period below the drain + 5 s" "terminationGracePeriodSeconds \\(34\\) must be at least .*= 35 s" \
    --set terminationGracePeriodSeconds=34,runtime.drainTimeoutMs=30000
must_fail "startupProbe budget below 15 s per pipeline" "startupProbe allows 10 s .* 1 pipelines" \
    --set startupProbe.failureThreshold=2
# Secrets in kafka.librdkafka (the ConfigMap), in any letter case.
for key in sasl.password SASL.Password ssl.key.password ssl.key.pem ssl.keystore.password sasl.oauthbearer.client.secret \
           sasl.oauthbearer.client.credentials.client.secret sasl.username sasl.oauthbearer.config; do
    must_fail "secret librdkafka key $key in kafka.librdkafka" "kafka.librdkafka.\"${key//./\\.}\" holds a secret .* kafka.auth.existingSecret" \
        --set-string "kafka.librdkafka.${key//./\\.}=hunter2"
done
must_fail "control memory limit below the compile peak" "control.resources.limits.memory \\(1Gi\\) is below .* = 1728Mi" \
    --values "$OUT/registry-pvc-values.yaml" --set control.resources.limits.memory=1Gi
must_fail "control memory limit not a quantity" "control.resources.limits.memory: \"lots\" is not a memory quantity" \
    --values "$OUT/registry-pvc-values.yaml" --set control.resources.limits.memory=lots
must_fail "KEDA with Kafka credentials and no TriggerAuthentication" "the KEDA scaler could not authenticate" \
    --values "$CI_VALUES/keda-values.yaml" --set keda.triggerAuthentication.create=false
must_fail "TriggerAuthentication with nothing to refer to" "keda.triggerAuthentication.create: nothing to put in it" \
    --set keda.enabled=true,keda.triggerAuthentication.create=true
must_fail "unknown sasl.mechanism for KEDA" "has no KEDA kafka scaler equivalent" \
    --values "$CI_VALUES/keda-values.yaml" --set-string 'kafka.librdkafka.sasl\.mechanism=AWS_MSK_IAM'
printf 'networkPolicy:\n  egress:\n    kafka:\n      cidr: [10.0.0.0/8]\n' >"$OUT/typo-netpol.yaml"
must_fail "typo'd networkPolicy key (egress.kafka.cidr)" "additional propert(y|ies).*cidr|cidr.*not allowed" --values "$OUT/typo-netpol.yaml"
must_fail "pdb.unhealthyPodEvictionPolicy not a policy" "/pdb/unhealthyPodEvictionPolicy" --set pdb.unhealthyPodEvictionPolicy=Sometimes
must_fail "secretKeys without existingSecret" "existingSecret is empty" \
    --set-string 'kafka.auth.secretKeys.sasl\.password=password'
# Registry and control plane.
must_fail "control.enabled without registry.enabled" "control.enabled needs registry.enabled" \
    --set control.enabled=true --set "control.tenants[0].name=a,control.tenants[0].tokenSha256=$TOKEN_SHA"
must_fail "registry.enabled without a store" "registry.enabled needs a store" --set registry.enabled=true
must_fail "directory store, no shared volume, replicas > 1" "is a local directory but registry.persistence is not enabled.*worker replicas" \
    --set registry.enabled=true,registry.store=/var/lib/pipeline-worker/registry,replicaCount=2
must_fail "directory store, no shared volume, HPA" "is a local directory but registry.persistence is not enabled" \
    --set registry.enabled=true,registry.store=file:///var/lib/pipeline-worker/registry,autoscaling.enabled=true
must_fail "directory store, no shared volume, control plane" "is a local directory but registry.persistence is not enabled.*control plane's uploads" \
    --set registry.enabled=true,registry.store=/var/lib/pipeline-worker/registry,control.enabled=true \
    --set "control.tenants[0].name=a,control.tenants[0].tokenSha256=$TOKEN_SHA"
must_fail "created registry PVC without ReadWriteMany, control plane" "needs ReadWriteMany" \
    --set registry.enabled=true,registry.persistence.enabled=true,registry.persistence.accessModes={ReadWriteOnce},control.enabled=true \
    --set "control.tenants[0].name=a,control.tenants[0].tokenSha256=$TOKEN_SHA"
must_fail "registry PVC with an s3:// store" "the volume would be mounted and never used" \
    --set registry.enabled=true,registry.persistence.enabled=true,registry.store=s3://bucket/prefix
must_fail "registry.store off the registry volume" "is not on the registry volume" \
    --set registry.enabled=true,registry.persistence.enabled=true,registry.store=/data/store
must_fail "relative registry.store" "is a relative path" --set registry.enabled=true,registry.store=store
must_fail "control.enabled without tenants" "needs at least one entry in control.tenants" \
    --set registry.enabled=true,registry.store=s3://b/p,control.enabled=true
must_fail "duplicate tenants" "duplicate tenant" \
    --set registry.enabled=true,registry.store=s3://b/p,control.enabled=true \
    --set "control.tenants[0].name=a,control.tenants[0].tokenSha256=$TOKEN_SHA,control.tenants[1].name=a,control.tenants[1].existingSecret=s"
must_fail "tenant with tokenSha256 and existingSecret" "/control/tenants/0.*oneOf" \
    --set "control.tenants[0].name=a,control.tenants[0].tokenSha256=$TOKEN_SHA,control.tenants[0].existingSecret=s"
must_fail "tenant with neither token" "/control/tenants/0.*oneOf" --set "control.tenants[0].name=a"
printf 'control:\n  tenants:\n    - name: a\n      tokenSha265: x\n' >"$OUT/typo-tenant.yaml"
must_fail "typo'd tenant key (tokenSha265)" "additional propert(y|ies).*tokenSha265|tokenSha265.*not allowed" --values "$OUT/typo-tenant.yaml"
printf 'registry:\n  storOptions: {}\n' >"$OUT/typo-registry.yaml"
must_fail "typo'd registry key (storOptions)" "additional propert(y|ies).*storOptions|storOptions.*not allowed" --values "$OUT/typo-registry.yaml"
printf 'control:\n  service:\n    prot: 1\n' >"$OUT/typo-control.yaml"
must_fail "typo'd control key (control.service.prot)" "additional propert(y|ies).*prot|prot.*not allowed" --values "$OUT/typo-control.yaml"
must_fail "credential in registry.storeOptions" "/registry/storeOptions/aws_secret_access_key" \
    --set registry.storeOptions.aws_secret_access_key=x
cat >"$OUT/bad-tenant.yaml" <<YAML
registry: {enabled: true, store: "s3://b/p"}
control: {enabled: true, tenants: [{name: a, tokenSha256: $TOKEN_SHA}]}
pipelines:
  - {name: p, tenant: zzz, inputTopics: [i], component: a.wasm, outputTopics: [o], deadLetterTopic: d}
YAML
must_fail "pipeline tenant not among control.tenants" "tenant \"zzz\" is not one of control.tenants" --values "$OUT/bad-tenant.yaml"
printf 'pipelines:\n  - {name: p, tenant: a, inputTopics: [i], outputTopics: [o], deadLetterTopic: d}\n' >"$OUT/no-component.yaml"
must_fail "pipeline without component, registry off" "component is missing" --values "$OUT/no-component.yaml"
must_fail "duplicate pipeline names" "duplicate pipeline name" \
    --set 'pipelines[0].name=a,pipelines[0].inputTopics={i},pipelines[0].component=a.wasm,pipelines[0].outputTopics={o},pipelines[0].deadLetterTopic=d' \
    --set 'pipelines[1].name=a,pipelines[1].inputTopics={i2},pipelines[1].component=a.wasm,pipelines[1].outputTopics={o2},pipelines[1].deadLetterTopic=d2'

# NOTES.txt is rendered only by `helm install`, which needs a cluster: render it
# from a copy of the chart where it is wrapped in a YAML template.
NOTES_CHART="$OUT/notes-chart"
rm -rf "$NOTES_CHART" && cp -r "$CHART" "$NOTES_CHART"
{ echo '{{- define "check-deploy.notes" -}}'; cat "$CHART/templates/NOTES.txt"; echo '{{- end -}}'; } >"$NOTES_CHART/templates/_check_deploy_notes.tpl"
rm "$NOTES_CHART/templates/NOTES.txt"
printf 'notes: |\n{{ include "check-deploy.notes" . | indent 2 }}\n' >"$NOTES_CHART/templates/check-deploy-notes.yaml"
for v in default full keda registry-pvc; do
    case "$v" in default) vf=();; registry-pvc) vf=(--values "$OUT/registry-pvc-values.yaml");; *) vf=(--values "$CI_VALUES/$v-values.yaml");; esac
    if "$HELM" template pw "$NOTES_CHART" --namespace streaming --kube-version "$KUBE_VERSION" "${vf[@]}" \
        --show-only templates/check-deploy-notes.yaml >"$OUT/notes-$v.yaml" 2>"$OUT/notes-$v.err" \
        && grep -q 'Replicas above the partition count' "$OUT/notes-$v.yaml"; then
        ok "NOTES.txt renders ($v)"
    else
        fail "NOTES.txt ($v)"; cat "$OUT/notes-$v.err" >&2
    fi
done
grep -q 'KEDA scales the Deployment' "$OUT/notes-keda.yaml" 2>/dev/null || fail "NOTES.txt (keda) does not describe KEDA scaling"
grep -q 'NetworkPolicy: inbound only to the metrics port from namespace monitoring' "$OUT/notes-default.yaml" 2>/dev/null || fail "NOTES.txt (default) does not describe the NetworkPolicy"
grep -q 'namespace data-platform-ci, 1 namespace selector(s);' "$OUT/notes-full.yaml" 2>/dev/null || fail "NOTES.txt (full) does not list the allowed namespaces"
for want in 'Control API: service/pw-pipeline-worker-control' 'pipeline-worker functions upload NAME function.wasm --activate PIPELINE' \
            'functions rollback PIPELINE' 'functions status' 'no component: idle until tenant globex' 'store s3://pipeline-functions/prod'; do
    grep -qF -- "$want" "$OUT/notes-full.yaml" 2>/dev/null || fail "NOTES.txt (full) lacks: $want"
done
grep -qF 'store file:///var/lib/pipeline-worker/registry' "$OUT/notes-registry-pvc.yaml" 2>/dev/null || fail "NOTES.txt (registry-pvc) lacks the file store"
if grep -q 'Control API' "$OUT/notes-default.yaml" 2>/dev/null; then fail "NOTES.txt (default) mentions the control API"; else ok "NOTES.txt: control API and functions CLI only when control.enabled"; fi
rm -rf "$NOTES_CHART"

pycheck "chart README lists every value; schema is strict" readme "$CHART"

# The worker refuses unknown keys (serde deny_unknown_fields): every key the
# chart renders must be a field of worker/src/config.rs.
for v in default full keda registry-pvc; do
    if [ -s "$OUT/$v.yaml" ] && "$PYTHON" "$OUT/checks.py" toml-of-configmap "$OUT/$v.yaml" "$OUT/$v-worker.toml" >/dev/null 2>&1; then
        pycheck "rendered worker.toml ($v) uses only keys worker/src/config.rs knows" config-keys "$OUT/$v-worker.toml" "$ROOT/worker/src/config.rs" "helm $v"
    fi
done
step_done

###############################################################################
step "kubeconform (every render against the Kubernetes $KUBE_VERSION schemas)"

# Schemas without a download at check time: the OpenAPI document of
# Kubernetes ships in the Go module k8s.io/kubernetes (api/openapi-spec,
# 18 MB zip), served by the Go module proxy like any module; checks.py turns
# it into kubeconform's layout (standalone, strict) once per version, cached
# in $SCHEMA_CACHE. The CRDs (ServiceMonitor, PrometheusRule, ScaledObject,
# TriggerAuthentication) are validated with the strict schemas of what the
# chart renders in compose/helm/ci/schemas/, written for this check.
ensure_schemas
kubeconform() {
    "$KUBECONFORM" -strict -summary -kubernetes-version "$KUBE_VERSION" \
        -schema-location "$SCHEMA_CACHE/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$@"
}
if [ "$schemas_ok" = 1 ]; then
    for f in "${RENDERED[@]}"; do
        name="$(basename "$f" .yaml)"
        if kubeconform "$f" >"$OUT/kubeconform-$name.out" 2>&1; then
            ok "kubeconform $name: $(tail -1 "$OUT/kubeconform-$name.out")"
        else
            fail "kubeconform $name:"; cat "$OUT/kubeconform-$name.out" >&2
        fi
    done
    # The validator must reject what the API server would: an unknown field in
    # a core kind, a wrong type, and an unknown field in a CRD.
    kc_must_reject() {  # LABEL FILE EXPECTED_REGEX
        if kubeconform "$2" >"$OUT/kc-neg.out" 2>&1; then
            fail "kubeconform accepted $1"
        elif grep -Eq "$3" "$OUT/kc-neg.out"; then
            ok "kubeconform rejects $1"
        else
            fail "kubeconform rejected $1 for another reason:"; cat "$OUT/kc-neg.out" >&2
        fi
    }
    sed 's/unhealthyPodEvictionPolicy:/unhealthyPodEvictionPolicyy:/' "$OUT/default.yaml" >"$OUT/kc-typo-pdb.yaml"
    kc_must_reject "a typo'd PDB field" "$OUT/kc-typo-pdb.yaml" "PodDisruptionBudget.*unhealthyPodEvictionPolicyy"
    sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: "yes"/' "$OUT/default.yaml" >"$OUT/kc-type.yaml"
    kc_must_reject "a string where the Deployment wants a boolean" "$OUT/kc-type.yaml" "readOnlyRootFilesystem.*want boolean"
    sed 's/^  egress:/  egres:/' "$OUT/default.yaml" >"$OUT/kc-typo-np.yaml"
    kc_must_reject "a typo'd NetworkPolicy field" "$OUT/kc-typo-np.yaml" "NetworkPolicy.*egres"
    sed 's/^  secretTargetRef:/  secretTargetRefs:/' "$OUT/keda.yaml" >"$OUT/kc-typo-ta.yaml"
    kc_must_reject "a typo'd TriggerAuthentication field (CRD schema)" "$OUT/kc-typo-ta.yaml" "TriggerAuthentication.*secretTargetRefs"
    sed 's/^          for: /          fore: /' "$OUT/alerts.yaml" >"$OUT/kc-typo-pr.yaml"
    kc_must_reject "a typo'd PrometheusRule rule field (CRD schema)" "$OUT/kc-typo-pr.yaml" "PrometheusRule.*fore"
fi
step_done

###############################################################################
step "docker compose"

COMPOSE_JSON="$OUT/compose.json"
compose_ok=0
if docker compose version >/dev/null 2>&1; then
    # The plugin's config command needs no engine.
    if run compose-q docker compose -f "$COMPOSE_FILE" config -q \
        && docker compose -f "$COMPOSE_FILE" config --format json >"$COMPOSE_JSON" 2>"$OUT/compose.err"; then
        ok "docker compose config -q"; compose_ok=1
    else
        fail "docker compose config"; cat "$OUT/compose-q.err" "$OUT/compose.err" >&2
    fi
    compose_validate() { docker compose -f "$1" config -q; }
else
    echo "docker compose plugin not available ($(docker --version 2>/dev/null || echo 'no docker CLI')): using compose/tools/composecheck (compose-go)"
    CC_BIN="$OUT/composecheck"
    if (cd "$ROOT/compose/tools/composecheck" && go build -o "$CC_BIN" .) >"$OUT/composecheck-build.log" 2>&1; then
        if "$CC_BIN" -f "$COMPOSE_FILE" >"$COMPOSE_JSON" 2>"$OUT/compose.err"; then
            ok "compose-go load + schema validation of compose/docker-compose.yml"; compose_ok=1
        else
            fail "compose-go rejects compose/docker-compose.yml"; cat "$OUT/compose.err" >&2
        fi
    else
        fail "cannot build compose/tools/composecheck"; cat "$OUT/composecheck-build.log" >&2
    fi
    compose_validate() { "$CC_BIN" -f "$1"; }
fi
if [ "$compose_ok" = 1 ]; then
    pycheck "compose model (services, read_only, tmpfs, cache volume, ordering, otel config, worker.toml; control shares the store volume)" compose "$COMPOSE_JSON" "$ROOT"
    pycheck "compose/worker.toml uses only keys worker/src/config.rs knows" config-keys "$ROOT/compose/worker.toml" "$ROOT/worker/src/config.rs" "compose/worker.toml"
    # The validator must reject a typo, or the check above proves nothing.
    sed 's/^\(    \)read_only: true/\1read_onyl: true/' "$COMPOSE_FILE" >"$ROOT/compose/.check-deploy-typo.yml"
    if compose_validate "$ROOT/compose/.check-deploy-typo.yml" >/dev/null 2>"$OUT/compose-typo.err"; then
        fail "compose validator accepted a typo'd key (read_onyl)"
    elif grep -q 'read_onyl' "$OUT/compose-typo.err"; then
        ok "compose validator rejects a typo'd key ($(grep -o 'services[^ ]*read_onyl[^:]*' "$OUT/compose-typo.err" | head -1))"
    else
        fail "compose validator failed on the typo'd file for another reason:"; cat "$OUT/compose-typo.err" >&2
    fi
    rm -f "$ROOT/compose/.check-deploy-typo.yml"
fi
step_done

###############################################################################
step "Dockerfile (static)"

pycheck "Dockerfile: stages, non-root final stage, no compiler, entrypoint, ignore file" dockerfile "$DOCKERFILE" "$ROOT"
BIN="${PIPELINE_WORKER_BIN:-$ROOT/target/release/pipeline-worker}"
if [ -x "$BIN" ] && command -v ldd >/dev/null 2>&1 && ldd "$BIN" >"$OUT/ldd.out" 2>&1; then
    pycheck "the built binary's shared libraries ($(awk '$1 ~ /^lib/ {printf "%s ", $1}' "$OUT/ldd.out")) are in the runtime base or copied" binary-libs "$DOCKERFILE" "$OUT/ldd.out"
else
    echo "  (no built binary at $BIN: its shared libraries are checked by the image build only)"
fi
echo "  (not built here: no Docker engine on this machine)"
step_done

###############################################################################
step "worker.toml against the worker binary (optional)"

BIN="${PIPELINE_WORKER_BIN:-$ROOT/target/release/pipeline-worker}"
GUEST="$ROOT/target/guests/wasm32-wasip2/release/enrich_rs.wasm"
if [ -x "$BIN" ] && [ -f "$GUEST" ]; then
    "$PYTHON" "$OUT/checks.py" toml-of-configmap "$OUT/default.yaml" "$OUT/helm-worker.toml" >/dev/null 2>&1
    # With [registry] and [control] (validate reads the config; it opens neither store nor Kafka).
    "$PYTHON" "$OUT/checks.py" toml-of-configmap "$OUT/registry-pvc.yaml" "$OUT/helm-registry-worker.toml" >/dev/null 2>&1
    for cfg in "$ROOT/compose/worker.toml" "$OUT/helm-worker.toml" "$OUT/helm-registry-worker.toml"; do
        [ -s "$cfg" ] || continue
        if env PIPELINE_WORKER__PIPELINES__0__COMPONENT="$GUEST" \
               PIPELINE_WORKER__RUNTIME__CACHE_DIR="$OUT/cache" \
               "$BIN" validate --offline --config "$cfg" >"$OUT/validate.out" 2>&1; then
            ok "pipeline-worker validate ${cfg#"$ROOT"/}"
        elif [ "${CHECK_DEPLOY_STRICT_CONFIG:-0}" = 1 ]; then
            fail "pipeline-worker validate ${cfg#"$ROOT"/}: $(tail -1 "$OUT/validate.out")"
        else
            warn "pipeline-worker validate ${cfg#"$ROOT"/}: $(tail -1 "$OUT/validate.out") (binary $BIN may predate these keys; CHECK_DEPLOY_STRICT_CONFIG=1 makes this fatal)"
        fi
    done
else
    echo "  skipped: no built binary at $BIN (or no $GUEST)"
fi
step_done

###############################################################################
printf '\n== timings\n'
printf '  %s\n' "${TIMINGS[@]}"
printf '\nrendered manifests and logs: %s\n' "$OUT"
if [ "${#WARNINGS[@]}" -gt 0 ]; then
    printf '\n%d warning(s):\n' "${#WARNINGS[@]}"
    printf '  %s\n' "${WARNINGS[@]}"
fi
if [ "${#FAILURES[@]}" -gt 0 ]; then
    printf '\n%d check(s) FAILED:\n' "${#FAILURES[@]}" >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
printf '\nall deployment checks passed\n'
