#!/usr/bin/env bash
# CPU cost per request, counted in instructions (valgrind callgrind): repeatable on a noisy
# machine where throughput is not. keyward runs under callgrind in front of the echo upstream;
# for each route the counters are zeroed, wrk sends requests for 5 s, and the instructions
# keyward executed are divided by the requests served. Then the same for the floor and the
# anchor of scripts/compare.sh: a bare pingora passthrough (examples/bare_pingora.rs) and nginx
# as one process, in front of the same upstream. Needs valgrind, wrk, bc and nginx.
# Usage: scripts/instructions.sh [--guard]
#   KEYWARD_CALLGRIND_DIR=DIR keeps each target's dump there (DIR/public.callgrind, …), for
#   callgrind_annotate --inclusive=yes DIR/apikey.callgrind (divide by the requests printed).
#   --guard (CI, .ci/run): after printing the figures, fail when keyward's public route costs
#   more than KEYWARD_GUARD_MAX_BARE × bare pingora's instructions per request, its API-key
#   route more than KEYWARD_GUARD_MAX_APIKEY_BARE × bare pingora's forwarding the same request
#   (target and `Argus-API-Key` header), or the API-key route more
#   than KEYWARD_GUARD_MAX_PUBLIC × the public route (defaults below: 1.30, 1.30 and 1.25, the
#   bounds of issue 26; docs/performance.md, "The CI guard", says how they are measured).
#   KEYWARD_INSTRUCTIONS_BIN=DIR measures prebuilt binaries instead of building: DIR/keyward,
#   DIR/examples/echo_upstream and DIR/examples/bare_pingora (another commit's release build).
set -euo pipefail
guard=false
case "${1:-}" in
  --guard) guard=true ;;
  "") ;;
  *) echo "usage: scripts/instructions.sh [--guard]" >&2; exit 2 ;;
esac
max_bare="${KEYWARD_GUARD_MAX_BARE:-1.30}"
max_apikey_bare="${KEYWARD_GUARD_MAX_APIKEY_BARE:-1.30}"
max_public="${KEYWARD_GUARD_MAX_PUBLIC:-1.25}"
bin="${KEYWARD_INSTRUCTIONS_BIN:-${CARGO_TARGET_DIR:-target}/release}"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
install_missing valgrind=valgrind wrk=wrk bc=bc nginx=nginx-light
for tool in valgrind callgrind_annotate wrk bc nginx; do
  command -v "$tool" >/dev/null || { echo "instructions.sh needs $tool (apt-get install valgrind wrk bc nginx-light)" >&2; exit 1; }
done
[ -n "${KEYWARD_INSTRUCTIONS_BIN:-}" ] \
  || cargo build --release --bin keyward --example echo_upstream --example bare_pingora >&2
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
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

key=$(new_api_key "$proxy" instructions)
token=$(new_token "$proxy")
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"

# measure NAME PID CALLGRIND_OUT_FILE WRK_ARGS...
measure() {
  local name=$1 pid=$2 out=$3 n ir dump; shift 3
  wrk -t1 -c4 -d2s "$@" >/dev/null   # warm caches and connections
  callgrind_control -z "$pid" >/dev/null
  n=$(wrk -t1 -c4 -d5s "$@" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null
  [ "${n:-0}" -gt 0 ] || { echo "$name: no request served" >&2; exit 1; }
  dump=$(ls -t "$out"* | head -1)
  ir=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
  # SHA-256 block compression, inclusive: valgrind runs it in software, where the CPU itself
  # would use its SHA extensions (SHA-NI), so this share is far larger here than on hardware.
  sha=$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null \
    | awk '/sha2::sha256::compress256 \[/ {gsub(",", "", $1); print $1; exit}')
  if [ -n "${KEYWARD_CALLGRIND_DIR:-}" ]; then
    mkdir -p "$KEYWARD_CALLGRIND_DIR"
    cp "$dump" "$KEYWARD_CALLGRIND_DIR/$name.callgrind"
    echo "$name: $n requests" >>"$KEYWARD_CALLGRIND_DIR/requests.txt"
  fi
  echo "$((ir / n)) $((${sha:-0} / n))"
}
read -r public public_sha <<<"$(measure public "$keyward_pid" "$work/cg.out" "http://$proxy/public/fixed")"
printf '%-22s %8d instructions/request   (SHA-256 %d)\n' "public route" "$public" "$public_sha"
for target in basic apikey token; do
  case $target in
    basic) args=(-H "$basic") ;;
    apikey) args=(-H "Argus-API-Key: $key") ;;
    token) args=(-H "Cookie: token=$token") ;;
  esac
  read -r per sha <<<"$(measure "$target" "$keyward_pid" "$work/cg.out" "${args[@]}" "http://$proxy/x/fixed")"
  [ "$target" = apikey ] && apikey=$per
  printf '%-22s %8d instructions/request   (SHA-256 %d)   public/this = %.2f, without SHA-256 %.2f\n' \
    "$target" "$per" "$sha" "$(echo "$public / $per" | bc -l)" \
    "$(echo "($public - $public_sha) / ($per - $sha)" | bc -l)"
done

# The floor and the anchor, counted the same way in front of the same upstream: the bare
# pingora passthrough (1 thread), and nginx as a single process (master_process off, so the
# process callgrind follows is the one serving) with scripts/compare.sh's proxy configuration.
bare="127.0.0.1:$(port)"; ng="127.0.0.1:$(port)"
valgrind --tool=callgrind --callgrind-out-file="$work/bare.out" \
  "$bin"/examples/bare_pingora "$bare" "$up" 1 2>"$work/bare.err" &
bare_pid=$!; pids+=("$bare_pid")
cat >"$work/nginx.conf" <<NGINX
master_process off;
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
$(nginx_proxy_http "$work" "$up" "$ng")
}
NGINX
valgrind --tool=callgrind --callgrind-out-file="$work/nginx.out" nginx -c "$work/nginx.conf" 2>"$work/nginx.vg" &
nginx_pid=$!; pids+=("$nginx_pid")
for address in "$bare" "$ng"; do
  for _ in $(seq 300); do curl -fs "http://$address/public/fixed" >/dev/null 2>&1 && break; sleep 0.2; done
done
read -r floor _ <<<"$(measure bare "$bare_pid" "$work/bare.out" "http://$bare/public/fixed")"
printf '%-22s %8d instructions/request   keyward public/this = %.2f\n' \
  "bare pingora" "$floor" "$(echo "$public / $floor" | bc -l)"
# Pingora's own cost of the API-key route's request (the same target and header, forwarded
# unchanged): what of the API key's figure is the larger request rather than keyward's work.
read -r floor_apikey _ <<<"$(measure bare_apikey "$bare_pid" "$work/bare.out" \
  -H "Argus-API-Key: $key" "http://$bare/x/fixed")"
printf '%-22s %8d instructions/request   keyward API key/this = %.2f\n' \
  "bare pingora, API key" "$floor_apikey" "$(echo "$apikey / $floor_apikey" | bc -l)"
read -r anchor _ <<<"$(measure nginx "$nginx_pid" "$work/nginx.out" "http://$ng/public/fixed")"
printf '%-22s %8d instructions/request   keyward public/this = %.2f\n' \
  "nginx" "$anchor" "$(echo "$public / $anchor" | bc -l)"

$guard || exit 0
# The guard: each bound checked, every figure printed, all failures listed before exiting.
failed=0
check() { # check LABEL VALUE BASE MAX
  local ratio verdict=ok
  ratio=$(echo "$2 / $3" | bc -l)
  if [ "$(echo "$ratio > $4" | bc -l)" -eq 1 ]; then verdict=FAIL; failed=1; fi
  printf 'guard: %-28s %8d / %8d = %.3f (at most %s)  %s\n' "$1" "$2" "$3" "$ratio" "$4" "$verdict"
}
check "public / bare pingora" "$public" "$floor" "$max_bare"
check "API key / bare, same request" "$apikey" "$floor_apikey" "$max_apikey_bare"
check "API key / public" "$apikey" "$public" "$max_public"
[ "$failed" -eq 0 ] || { echo "instructions.sh: the instruction guard failed (see docs/performance.md)" >&2; exit 1; }
