#!/usr/bin/env bash
# CPU cost per request, counted in instructions (valgrind callgrind): repeatable on a noisy
# machine where throughput is not. keyward runs under callgrind in front of the echo upstream;
# for each route the counters are zeroed, wrk sends requests for 5 s, and the instructions
# keyward executed are divided by the requests served. Needs valgrind, wrk and bc.
# Usage: scripts/instructions.sh
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_annotate wrk bc; do
  command -v "$tool" >/dev/null || { echo "instructions.sh needs $tool (apt-get install valgrind wrk bc)" >&2; exit 1; }
done
cargo build --release --bin keyward --example echo_upstream >&2
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up="127.0.0.1:$(port)"; proxy="127.0.0.1:$(port)"; ops="127.0.0.1:$(port)"

"$bin"/examples/echo_upstream "$up" 2>/dev/null & pids+=($!)
cat > "$work/keyward.yaml" <<YAML
listen: { proxy: $proxy, ops: $ops }
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD }
logging: { level: warn }
server: { threads: 1 }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
LOAD_ADMIN_PASSWORD=load-password valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$bin"/keyward serve --config "$work/keyward.yaml" 2>"$work/stderr" &
keyward_pid=$!; pids+=("$keyward_pid")
for _ in $(seq 300); do curl -fs "http://$ops/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

key=$(curl -fs -u admin:load-password -d '{"description":"instructions"}' \
  "http://$proxy/authentication/v1/user/admin/apikey" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["apiKeyString"])')
token=$(curl -fs -u admin:load-password -XPOST "http://$proxy/.TOKEN/?setcookie=false" -o /dev/null -D - \
  | awk -F': ' 'tolower($1) == "gateway-token" {print $2}' | tr -d '\r')
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"

measure() {
  local name=$1 n ir dump; shift
  wrk -t1 -c4 -d2s "$@" >/dev/null   # warm caches and connections
  callgrind_control -z "$keyward_pid" >/dev/null
  n=$(wrk -t1 -c4 -d5s "$@" | awk '/requests in/ {print $1}')
  callgrind_control -d "$keyward_pid" >/dev/null
  dump=$(ls -t "$work"/cg.out* | head -1)
  ir=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
  # SHA-256 block compression, inclusive: valgrind runs it in software, where the CPU itself
  # would use its SHA extensions (SHA-NI), so this share is far larger here than on hardware.
  sha=$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null \
    | awk '/sha2::sha256::compress256 \[/ {gsub(",", "", $1); print $1; exit}')
  echo "$((ir / n)) $((${sha:-0} / n))"
}
read -r public public_sha <<<"$(measure public "http://$proxy/public/fixed")"
printf '%-22s %8d instructions/request   (SHA-256 %d)\n' "public route" "$public" "$public_sha"
for target in basic apikey token; do
  case $target in
    basic) args=(-H "$basic") ;;
    apikey) args=(-H "Argus-API-Key: $key") ;;
    token) args=(-H "Cookie: token=$token") ;;
  esac
  read -r per sha <<<"$(measure "$target" "${args[@]}" "http://$proxy/x/fixed")"
  printf '%-22s %8d instructions/request   (SHA-256 %d)   public/this = %.2f, without SHA-256 %.2f\n' \
    "$target" "$per" "$sha" "$(echo "$public / $per" | bc -l)" \
    "$(echo "($public - $public_sha) / ($per - $sha)" | bc -l)"
done
