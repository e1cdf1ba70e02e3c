#!/usr/bin/env bash
# External authorization measured (SPEC §13), in one run, one machine, one echo upstream:
#   - nginx alone, proxying to the upstream (the floor);
#   - nginx → keyward (`auth_request` to listen.authz /auth/nginx, the book's configuration) →
#     upstream, with an API key;
#   - keyward inline (its proxy listener), with the same API key;
#   - the authz endpoint's own cost: /auth/nginx asked directly, as nginx asks it.
# wrk -t1 -cCONNECTIONS for SECONDS per target, in interleaved rounds; requests/s and the CPU
# time per request of the processes that serve it (nginx's worker, keyward, or both), the
# median of the rounds. nginx runs 1 worker, keyward server.threads 1; the processes not in the
# measured path are paused (SIGSTOP) while a target is measured.
# Usage: scripts/compare-authz.sh [SECONDS_PER_MEASUREMENT] [CONNECTIONS] [ROUNDS]
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
duration="${1:-4}"
connections="${2:-32}"
rounds="${3:-3}"

install_missing nginx=nginx-light wrk=wrk bc=bc
for tool in wrk nginx bc curl python3; do
  command -v "$tool" >/dev/null || { echo "compare-authz.sh needs $tool" >&2; exit 1; }
done
cargo build --release --bin keyward --example echo_upstream >&2
work="$(mktemp -d)"
pids=()
trap stop_all EXIT

up="127.0.0.1:$(port)"; ng="127.0.0.1:$(port)"; ng_authz="127.0.0.1:$(port)"
kw="127.0.0.1:$(port)"; kw_ops="127.0.0.1:$(port)"; kw_authz="127.0.0.1:$(port)"
"$bin"/examples/echo_upstream "$up" 2>/dev/null & up_pid=$!; pids+=("$up_pid")
ready "http://$up/public/fixed"

cat >"$work/keyward.yaml" <<YAML
listen: { proxy: $kw, ops: $kw_ops, authz: $kw_authz }
external_authz: { trusted_callers: [127.0.0.1/32] }
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: 1, pid_file: $work/keyward.pid }
logging: { level: warn }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
LOAD_ADMIN_PASSWORD=load-password "$bin"/keyward serve --config "$work/keyward.yaml" 2>"$work/keyward.err" &
kw_pid=$!; pids+=("$kw_pid")
ready "http://$kw_ops/readyz"
key=$(new_api_key "$kw" compare-authz)

# nginx: one worker; the plain proxy, and the book's auth_request configuration (with
# keep-alive to keyward and to the upstream, as a production edge has).
sed -e "s#127.0.0.1:8080#$ng_authz#; s#http://127.0.0.1:3000#http://app#; s#http://127.0.0.1:8082#http://keyward_authz#" \
  docs/src/authz/nginx.conf >"$work/authz-server.conf"
# keep-alive on both hops
sed -i 's#^\(\s*\)proxy_pass http://app;#\1proxy_pass http://app;\n\1proxy_http_version 1.1;\n\1proxy_set_header Connection "";#' "$work/authz-server.conf"
sed -i 's#^\(\s*\)proxy_pass http://keyward_authz/auth/nginx;#\1proxy_pass http://keyward_authz/auth/nginx;\n\1proxy_http_version 1.1;\n\1proxy_set_header Connection "";#' "$work/authz-server.conf"
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
$(nginx_proxy_http "$work" "$up" "$ng")
  upstream keyward_authz { server $kw_authz; keepalive 32; keepalive_requests 10000000; }
  include $work/authz-server.conf;
}
NGINX
nginx -e "$work/nginx.err" -c "$work/nginx.conf" & pids+=($!)
ready "http://$ng/public/fixed"
ng_master=$(cat "$work/nginx.pid")
ng_pid=$(ps -o pid= --ppid "$ng_master" | head -1 | tr -d ' ')

apikey="Argus-API-Key: $key"
targets=(nginx nginx_authz inline endpoint)
declare -A label procs url headers
label[nginx]="nginx alone"; procs[nginx]="$ng_pid"; url[nginx]="http://$ng/x/fixed"; headers[nginx]=""
label[nginx_authz]="nginx → keyward auth_request → upstream"; procs[nginx_authz]="$ng_pid $kw_pid"
url[nginx_authz]="http://$ng_authz/x/fixed"; headers[nginx_authz]="$apikey"
label[inline]="keyward inline"; procs[inline]="$kw_pid"; url[inline]="http://$kw/x/fixed"; headers[inline]="$apikey"
label[endpoint]="/auth/nginx alone (one check)"; procs[endpoint]="$kw_pid"
url[endpoint]="http://$kw_authz/auth/nginx"; headers[endpoint]="$apikey"
args() {
  [ -z "${headers[$1]}" ] || { echo "-H"; echo "${headers[$1]}"; }
  if [ "$1" = endpoint ]; then
    echo "-H"; echo "X-Original-Method: GET"; echo "-H"; echo "X-Original-URI: /x/fixed"
  fi
  echo "${url[$1]}"
}
all=("$ng_master" "$ng_pid" "$kw_pid")
alone() { pause_all_but "$ng_master ${procs[$1]}" "${all[@]}"; }
for t in "${targets[@]}"; do
  mapfile -t a < <(args "$t")
  code=$(curl -s -o /dev/null -w '%{http_code}' "${a[@]}")
  [ "$code" = 200 ] || { echo "$t: ${url[$t]} answers $code" >&2; exit 1; }
  wrk -t1 -c4 -d1s "${a[@]}" >/dev/null
done
measure() {
  mapfile -t a < <(args "$1")
  wrk_cpu "$duration" "$connections" "${procs[$1]}" "${url[$1]}" "${a[@]}"
}
declare -A rps cpu
measure_rounds "$rounds" "${targets[@]}"
kill -CONT "${all[@]}"
echo
echo "| path (API key, 1 nginx worker, keyward 1 thread) | requests/s | CPU µs per request |"
echo "|---|---:|---:|"
for t in "${targets[@]}"; do
  r=$(for round in $(seq "$rounds"); do echo "${rps[$t,$round]}"; done | median)
  c=$(for round in $(seq "$rounds"); do echo "${cpu[$t,$round]}"; done | median)
  echo "| ${label[$t]} | $r | $c |"
done
echo
echo "(wrk -t1 -c$connections, ${duration}s per target, median of $rounds interleaved rounds; CPU of nginx's worker and keyward together for the auth_request path)"
