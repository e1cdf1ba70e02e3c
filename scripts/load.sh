#!/usr/bin/env bash
# Load comparison, one run, same tool (wrk), same machine:
#   upstream directly  vs  keyward on a public route  vs  keyward with Basic auth (cached).
# Usage: scripts/load.sh [DURATION_SECONDS] [CONNECTIONS]
# Prints requests/s of each and the ratios. Figures vary by machine; the ratios are the result.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-32}"
command -v wrk >/dev/null || { echo "load.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

cargo build --release --bin keyward --example echo_upstream >&2
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up="127.0.0.1:$(port)"; proxy="127.0.0.1:$(port)"; ops="127.0.0.1:$(port)"

target/release/examples/echo_upstream "$up" 2>/dev/null & pids+=($!)
cat > "$work/keyward.yaml" <<YAML
listen: { proxy: $proxy, ops: $ops }
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD }
server: { threads: 2 }
logging: { level: warn }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
LOAD_ADMIN_PASSWORD=load-password target/release/keyward serve --config "$work/keyward.yaml" 2>"$work/stderr" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://$ops/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

rps() { wrk -t2 -c"$connections" -d"${duration}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"

# Warm-up (connection pools, the Basic cache).
wrk -t1 -c4 -d1s -H "$basic" "http://$proxy/x" >/dev/null

direct=$(rps "http://$up/public")
public=$(rps "http://$proxy/public")
authed=$(rps -H "$basic" "http://$proxy/x")

printf 'upstream direct         %10.0f req/s\n' "$direct"
printf 'keyward public route    %10.0f req/s   (%.2f of direct)\n' "$public" "$(echo "$public / $direct" | bc -l)"
printf 'keyward Basic (cached)  %10.0f req/s   (%.2f of public route)\n' "$authed" "$(echo "$authed / $public" | bc -l)"
