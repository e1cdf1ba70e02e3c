#!/usr/bin/env bash
# Edge comparison, one run, same machine, same certificate: keyward against nginx (the proxy
# operators compare it with) in front of the same upstream, over plaintext HTTP/1.1, TLS
# HTTP/1.1 (wrk) and TLS HTTP/2 (h2load), plus keyward with an API key over each.
# Usage: scripts/load-edge.sh [SECONDS_PER_MEASUREMENT] [CONNECTIONS] [ROUNDS]
# Prints requests/s of each and the ratios (keyward ÷ nginx, API key ÷ public), each the
# median of per-round ratios. Figures vary by machine; the ratios are the result.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
duration="${1:-4}"
connections="${2:-32}"
rounds="${3:-5}"
install_missing wrk=wrk h2load=nghttp2-client nginx=nginx-light openssl=openssl bc=bc
for tool in wrk h2load nginx openssl curl bc python3; do
  command -v "$tool" >/dev/null || {
    echo "load-edge.sh needs $tool (apt-get install wrk nghttp2-client nginx-light openssl curl bc)" >&2
    exit 1
  }
done

cargo build --release --bin keyward --example echo_upstream >&2
work="$(mktemp -d)"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

up="127.0.0.1:$(port)"
kw_http="127.0.0.1:$(port)"; kw_tls="127.0.0.1:$(port)"; kw_admin="127.0.0.1:$(port)"
kw_ops="127.0.0.1:$(port)"; kw_tls_ops="127.0.0.1:$(port)"
ng_http="127.0.0.1:$(port)"; ng_tls="127.0.0.1:$(port)"

# One certificate for both proxies (P-256, like most edge certificates).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

"$bin"/examples/echo_upstream "$up" 2>/dev/null & pids+=($!)

# Two keywards on one store: plaintext, and TLS (ALPN h2 + http/1.1).
keyward_config() { # $1 proxy address, $2 ops address, $3 extra listen lines
  cat <<YAML
listen:
  proxy: $1
  ops: $2
$3
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: 2, pid_file: $work/keyward-$(echo "$1" | tr -c '0-9' _).pid }
logging: { level: warn }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
}
keyward_config "$kw_http" "$kw_ops" "  admin: $kw_admin" >"$work/plain.yaml"
keyward_config "$kw_tls" "$kw_tls_ops" "  tls: { cert: $work/tls.crt, key: $work/tls.key }" >"$work/tls.yaml"
LOAD_ADMIN_PASSWORD=load-password "$bin"/keyward serve --config "$work/plain.yaml" 2>"$work/plain.err" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://$kw_ops/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
LOAD_ADMIN_PASSWORD=load-password "$bin"/keyward serve --config "$work/tls.yaml" 2>"$work/tls.err" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://$kw_tls_ops/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
daemon on;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx closes a connection after 1000 requests by default; h2load does not reconnect, so
  # without this its figure is a cap (connections x 1000 / duration), not a throughput.
  keepalive_requests 10000000;
  client_body_temp_path $work/ngx-body;
  proxy_temp_path $work/ngx-proxy;
  upstream app { server $up; keepalive 64; }
  server {
    listen $ng_http;
    listen $ng_tls ssl http2;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
$(nginx_proxy_location)
  }
}
NGINX
nginx -c "$work/nginx.conf"
for _ in $(seq 50); do curl -fs "http://$ng_http/public/fixed" >/dev/null 2>&1 && break; sleep 0.1; done

key=$(new_api_key "$kw_admin" "load test")
apikey="Argus-API-Key: $key"
# The TLS keyward shares the store: the key is known there after its first miss.
curl -fsk -H "$apikey" "https://$kw_tls/x/fixed" >/dev/null

h1() { wrk -t2 -c"$connections" -d"${duration}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
h2() { h2load -D "$duration" -c"$connections" -m 4 -t 2 "$@" 2>/dev/null | awk '/^finished in/ {gsub(",", "", $4); print $4}'; }
for probe in "https://$kw_tls/public/fixed" "https://$ng_tls/public/fixed"; do
  proto=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "$probe")
  [ "$proto" = 2 ] || { echo "no HTTP/2 at $probe (got $proto)" >&2; exit 1; }
done

declare -a np kp ka nt kt kta n2 k2 k2a
for round in $(seq "$rounds"); do
  np+=("$(h1 "http://$ng_http/public/fixed")")
  kp+=("$(h1 "http://$kw_http/public/fixed")")
  ka+=("$(h1 -H "$apikey" "http://$kw_http/x/fixed")")
  nt+=("$(h1 "https://$ng_tls/public/fixed")")
  kt+=("$(h1 "https://$kw_tls/public/fixed")")
  kta+=("$(h1 -H "$apikey" "https://$kw_tls/x/fixed")")
  n2+=("$(h2 "https://$ng_tls/public/fixed")")
  k2+=("$(h2 "https://$kw_tls/public/fixed")")
  k2a+=("$(h2 -H "$apikey" "https://$kw_tls/x/fixed")")
  echo "round $round: http nginx ${np[-1]} keyward ${kp[-1]} apikey ${ka[-1]} | tls nginx ${nt[-1]} keyward ${kt[-1]} apikey ${kta[-1]} | h2 nginx ${n2[-1]} keyward ${k2[-1]} apikey ${k2a[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { local -n num=$1 den=$2; for i in "${!num[@]}"; do echo "${num[$i]} / ${den[$i]}" | bc -l; done; }
row() { # label nginx keyward apikey
  local -n n=$2 k=$3 a=$4
  mapfile -t vs < <(ratio "$3" "$2"); mapfile -t as < <(ratio "$4" "$3")
  printf '%-22s nginx %9.0f req/s   keyward %9.0f req/s (%.2f of nginx)   keyward API key %9.0f req/s (%.2f of keyward public)\n' \
    "$1" "$(median "${n[@]}")" "$(median "${k[@]}")" "$(median "${vs[@]}")" "$(median "${a[@]}")" "$(median "${as[@]}")"
}
echo "median of $rounds rounds of ${duration}s, $connections connections (wrk -t2; h2load -t2 -m4); ratios: median of per-round ratios:"
row "HTTP/1.1 plaintext" np kp ka
row "HTTP/1.1 over TLS" nt kt kta
row "HTTP/2 over TLS" n2 k2 k2a
