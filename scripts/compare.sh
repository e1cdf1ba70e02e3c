#!/usr/bin/env bash
# The floor and the anchor side by side, one run, one machine, one echo upstream: nginx as a
# reverse proxy (1 worker), a bare pingora passthrough (examples/bare_pingora.rs, 1 thread) and
# keyward (server.threads 1) on its public route and with each credential, plus keyward and
# nginx each writing an access log to a file, and keyward with 2 threads, with and without
# tokio's work stealing (server.work_stealing).
# Usage: scripts/compare.sh [SECONDS_PER_MEASUREMENT] [CONNECTIONS] [ROUNDS] [LATENCY_ROUNDS]
#
# 1. Throughput: wrk -t1 -cCONNECTIONS for SECONDS against each target, in interleaved rounds;
#    requests/s and the CPU time the proxy process spent per request (utime + stime from
#    /proc/PID/stat), each the median of the rounds; ratios to nginx are taken within each
#    round, then the median. Signed requests (wrk cannot sign) come from examples/signed_load,
#    relative to keyward's public route measured by that same client.
# 2. Latency: at half of nginx's saturation rate (its median wrk req/s), examples/open_loop
#    sends a constant rate (latency from each request's intended send time) to the upstream
#    directly, nginx, bare pingora and keyward (public route, API key); the added latency of a
#    hop is its percentile minus the direct one of the same round (median of LATENCY_ROUNDS
#    rounds: a p99 varies more from run to run than a throughput does).
# While one target is measured, every other proxy process is paused (SIGSTOP), so that their
# timers and background threads (keyward's change-feed poll and store thread) do not take
# the cores from the one measured; they are resumed (SIGCONT) as soon as it is done
# (KEYWARD_COMPARE_ALONE=0 keeps them all running, as the script did before).
# Figures vary by machine; the ratios are the result.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
duration="${1:-4}"
connections="${2:-32}"
rounds="${3:-3}"
latency_rounds="${4:-$rounds}"

install_missing nginx=nginx-light wrk=wrk bc=bc
for tool in wrk nginx bc curl python3; do
  command -v "$tool" >/dev/null || {
    echo "compare.sh needs $tool (apt-get install wrk nginx-light bc curl python3)" >&2
    exit 1
  }
done

cargo build --release --bin keyward --example echo_upstream --example bare_pingora \
  --example open_loop --example signed_load >&2
work="$(mktemp -d)"
pids=()
trap stop_all EXIT

up="127.0.0.1:$(port)"; ng="127.0.0.1:$(port)"; ng_log="127.0.0.1:$(port)"; bare="127.0.0.1:$(port)"
kw="127.0.0.1:$(port)"; kw_ops="127.0.0.1:$(port)"; kw_log="127.0.0.1:$(port)"; kw_log_ops="127.0.0.1:$(port)"
kw_ws="127.0.0.1:$(port)"; kw_ws_ops="127.0.0.1:$(port)"; kw_ps="127.0.0.1:$(port)"; kw_ps_ops="127.0.0.1:$(port)"

"$bin"/examples/echo_upstream "$up" 2>/dev/null & up_pid=$!; pids+=("$up_pid")
ready "http://$up/public/fixed"

# nginx: one worker, keep-alive to the upstream; the second server block writes the access log
# (nginx's default `combined` format, unbuffered) to a file.
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
$(nginx_proxy_http "$work" "$up" "$ng" "$ng_log=$work/nginx-access.log")
}
NGINX
nginx -c "$work/nginx.conf" & pids+=($!)
ready "http://$ng/public/fixed"
ng_master=$(cat "$work/nginx.pid")
ng_pid=$(ps -o pid= --ppid "$ng_master" | head -1 | tr -d ' ')   # the worker

"$bin"/examples/bare_pingora "$bare" "$up" 1 2>"$work/bare.err" & bare_pid=$!; pids+=("$bare_pid")
ready "http://$bare/public/fixed"

# Keywards on one store: logging at warn (no access log); the access log as JSON lines on
# stderr, to a file; and, for the runtime settings, two threads with and without tokio's work
# stealing.
keyward_config() { # $1 proxy address, $2 ops address, $3 logging, $4 threads, $5 work stealing
  cat <<YAML
listen: { proxy: $1, ops: $2 }
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: ${4:-1}, work_stealing: ${5:-true}, pid_file: $work/keyward-$(echo "$1" | tr -c '0-9' _).pid }
logging: $3
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
}
# start_keyward NAME OPS_ADDRESS: serves $work/NAME.yaml (stderr to $work/NAME.err) and waits
# until it is ready; its pid is left in $started.
start_keyward() {
  LOAD_ADMIN_PASSWORD=load-password "$bin"/keyward serve --config "$work/$1.yaml" 2>"$work/$1.err" &
  started=$!; pids+=("$started")
  ready "http://$2/readyz"
}
keyward_config "$kw" "$kw_ops" "{ level: warn }" >"$work/keyward.yaml"
keyward_config "$kw_log" "$kw_log_ops" "{ level: info, format: json }" >"$work/keyward-log.yaml"
keyward_config "$kw_ws" "$kw_ws_ops" "{ level: warn }" 2 true >"$work/keyward-ws.yaml"
keyward_config "$kw_ps" "$kw_ps_ops" "{ level: warn }" 2 false >"$work/keyward-ps.yaml"
start_keyward keyward "$kw_ops"; kw_pid=$started
start_keyward keyward-log "$kw_log_ops"; kw_log_pid=$started
start_keyward keyward-ws "$kw_ws_ops"; kw_ws_pid=$started
start_keyward keyward-ps "$kw_ps_ops"; kw_ps_pid=$started

key=$(new_api_key "$kw" compare)
apikey="Argus-API-Key: $key"
token=$(new_token "$kw")
cookie="Cookie: token=$token"
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"

# The targets: label, process whose CPU is counted, URL, header (or empty).
targets=(direct nginx bare public apikey token basic nginx_log public_log apikey_log public_ws public_ps)
declare -A label pid url header
add() { label[$1]=$2; pid[$1]=$3; url[$1]=$4; header[$1]=${5:-}; }
add direct "upstream direct (echo CPU)" "$up_pid" "http://$up/public/fixed"
add nginx "nginx" "$ng_pid" "http://$ng/public/fixed"
add bare "bare pingora" "$bare_pid" "http://$bare/public/fixed"
add public "keyward public route" "$kw_pid" "http://$kw/public/fixed"
add apikey "keyward API key" "$kw_pid" "http://$kw/x/fixed" "$apikey"
add token "keyward token cookie" "$kw_pid" "http://$kw/x/fixed" "$cookie"
add basic "keyward Basic (cached)" "$kw_pid" "http://$kw/x/fixed" "$basic"
add nginx_log "nginx + access log" "$ng_pid" "http://$ng_log/public/fixed"
add public_log "keyward public + JSON log" "$kw_log_pid" "http://$kw_log/public/fixed"
add apikey_log "keyward API key + JSON log" "$kw_log_pid" "http://$kw_log/x/fixed" "$apikey"
add public_ws "keyward public, 2 threads" "$kw_ws_pid" "http://$kw_ws/public/fixed"
add public_ps "keyward public, 2, no stealing" "$kw_ps_pid" "http://$kw_ps/public/fixed"
args() { if [ -n "${header[$1]}" ]; then echo "-H"; echo "${header[$1]}"; fi; echo "${url[$1]}"; }
# alone T: every proxy but T's process is paused (the upstream always runs); alone - resumes all.
proxies=("$ng_master" "$ng_pid" "$bare_pid" "$kw_pid" "$kw_log_pid" "$kw_ws_pid" "$kw_ps_pid")
alone() {
  [ "${KEYWARD_COMPARE_ALONE:-1}" = 1 ] || return 0   # 0: every target runs all the time
  local keep="${pid[$1]:-all}"
  case $1 in nginx | nginx_log) keep+=" $ng_master" ;; -) keep="${proxies[*]}" ;; esac
  pause_all_but "$keep" "${proxies[@]}"
}

for t in "${targets[@]}"; do
  mapfile -t a < <(args "$t")
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${a[@]}")" = 200 ] \
    || { echo "$t: ${url[$t]} does not answer 200" >&2; exit 1; }
  wrk -t1 -c4 -d1s "${a[@]}" >/dev/null   # warm-up: connection pools, caches
done

# Prints "<req/s> <CPU µs per request of the target's process>" for one wrk run.
measure() {
  mapfile -t a < <(args "$1")
  wrk_cpu "$duration" "$connections" "${pid[$1]}" "${url[$1]}" "${a[@]}"
}
declare -A rps cpu
measure_rounds "$rounds" "${targets[@]}"
alone -
# column T KIND [DEN]: the values of target T over the rounds (KIND rps or cpu), or the
# per-round ratios T / DEN.
column() {
  local -n values=$2
  local round
  for round in $(seq "$rounds"); do
    if [ -n "${3:-}" ]; then echo "${values[$1,$round]} / ${values[$3,$round]}" | bc -l
    else echo "${values[$1,$round]}"; fi
  done
}
med() { column "$@" | median; }

# Signed requests, enrolled as in scripts/load.sh: a second user's key, enrolled by the
# POWER-USER administrator.
echo 'loader-password' | "$bin"/keyward user add loader --password-stdin --config "$work/keyward.yaml" >/dev/null
"$bin"/keyward keygen --out "$work/client.pem" >"$work/keygen.out"
public_key=$(awk -F'enrolling\\): ' '/enrolling/ {print $2}' "$work/keygen.out")
key_id=$(curl -fs -u admin:load-password -H 'content-type: application/json' \
  -d "{\"publicKey\":\"$public_key\",\"description\":\"compare\"}" \
  "http://$kw/authentication/v1/user/loader/signature" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["keyID"])')
"$bin"/examples/signed_load "$kw" "$work/client.pem" "loader/$key_id" "$kw_pid" 20000 "$connections" "$rounds" \
  >"$work/signed.out" 2>"$work/signed.err"
cat "$work/signed.err" >&2
signed_rps=$(sed -n 's/^keyward signed (RFC 9421) *\([0-9.]*\) req\/s *\([0-9.]*\) of public.*/\1/p' "$work/signed.out")
signed_of_public=$(sed -n 's/^keyward signed (RFC 9421) *\([0-9.]*\) req\/s *\([0-9.]*\) of public.*/\2/p' "$work/signed.out")
signed_cpu=$(sed -n 's/.*| signed [0-9.]* req\/s (\([0-9.]*\) µs CPU\/req).*/\1/p' "$work/signed.err" | median)

# Latency, open loop, at a constant RATE: each round measures every target in turn; the added
# latency of a hop is its percentile minus the direct one of the same round. The table goes to
# $work/latency-NAME, printed at the end.
lat_targets=(direct nginx bare public apikey)
latency() { # NAME RATE DESCRIPTION
  local name=$1 rate=$2 round t out rest a50 a90 a99
  local -A p50 p90 p99 bad lag load
  local -a hdr
  # The load each target is under: this rate ÷ its throughput above (taken before `rounds`
  # becomes the latency rounds, which the helpers below read).
  for t in "${lat_targets[@]}"; do load[$t]=$(echo "$rate / $(med "$t" rps)" | bc -l); done
  local rounds=$latency_rounds
  for round in $(seq "$rounds"); do
    line="latency round $round at $rate req/s:"
    for t in "${lat_targets[@]}"; do
      hdr=()
      if [ -n "${header[$t]}" ]; then hdr=(-H "${header[$t]}"); fi
      rest=${url[$t]#http://}
      alone "$t"
      out=$("$bin"/examples/open_loop "${rest%%/*}" "/${rest#*/}" "$rate" "$duration" "$connections" "${hdr[@]}")
      field() { echo "$out" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
      p50[$t,$round]=$(field p50_us); p90[$t,$round]=$(field p90_us); p99[$t,$round]=$(field p99_us)
      # shellcheck disable=SC2034 # read through `med` (a nameref)
      lag[$t,$round]=$(field tick_lag_p99_us)
      bad[$t,$round]=$(($(field errors) + $(field late)))
      line+=" $t p50 ${p50[$t,$round]} p90 ${p90[$t,$round]} p99 ${p99[$t,$round]} µs"
      [ "${bad[$t,$round]}" = 0 ] || line+=" (${bad[$t,$round]} errors/late)"
    done
    echo "$line" >&2
  done
  alone -
  # The added latency of target T over the direct path, per round (KIND p50, p90 or p99).
  added() { local -n v=$2; local round; for round in $(seq "$rounds"); do echo $((${v[$1,$round]} - ${v[direct,$round]})); done; }
  # Target T's added latency ÷ nginx's (medians), or - when nginx adds nothing measurable.
  of_nginx() { local n; n=$(added nginx "$2" | median); if [ "$n" -gt 0 ]; then printf '%.2f' "$(echo "$(added "$1" "$2" | median) / $n" | bc -l)"; else echo -; fi; }
  {
    echo "latency: open loop at $rate req/s ($3), $connections connections, ${duration}s + 1 s warm-up, median of $rounds rounds (µs)"
    printf '%-26s %5s %8s %8s %8s %8s %8s %8s %7s %6s\n' target load p50 p90 p99 '+p50' '+p90' '+p99' 'failed' 'lag'
    for t in "${lat_targets[@]}"; do
      if [ "$t" = direct ]; then a50=- a90=- a99=-; else
        a50=$(added "$t" p50 | median); a90=$(added "$t" p90 | median); a99=$(added "$t" p99 | median)
      fi
      printf '%-26s %5.2f %8s %8s %8s %8s %8s %8s %7s %6s\n' "${label[$t]/ (echo CPU)/}" \
        "${load[$t]}" "$(med "$t" p50)" "$(med "$t" p90)" "$(med "$t" p99)" \
        "$a50" "$a90" "$a99" "$(med "$t" bad)" "$(med "$t" lag)"
    done
    echo "(+pN: added by the hop, the target's pN minus the direct pN of the same round; load: this rate ÷"
    echo " the target's wrk req/s above; failed: errors + unanswered 2 s after the last send (those count in"
    echo " the percentiles with the time they waited); lag: p99 of how late open_loop's own scheduler"
    echo " released requests, included in every figure)"
    for t in bare public apikey; do
      printf '%s added latency ÷ nginx added latency: p50 %s, p90 %s, p99 %s\n' "${label[$t]}" \
        "$(of_nginx "$t" p50)" "$(of_nginx "$t" p90)" "$(of_nginx "$t" p99)"
    done
  } >"$work/latency-$name"
}
# Half of nginx's saturation rate; and half of the slowest latency target's, where no hop is
# saturated.
latency nginx "$(echo "$(med nginx rps) / 2" | bc)" "half of nginx's wrk req/s"
slowest=$(for t in nginx bare public apikey; do med "$t" rps; done | sort -g | head -1)
latency slowest "$(echo "$slowest / 2" | bc)" "half of the slowest target's wrk req/s"

echo
echo "throughput: median of $rounds rounds of ${duration}s, wrk -t1 -c$connections; ratios: median of per-round ratios"
printf '%-28s %10s %9s %9s %12s %11s\n' target 'req/s' '÷ nginx' '÷ bare' 'CPU µs/req' 'CPU ÷ nginx'
for t in "${targets[@]}"; do
  cpu_of_nginx=-
  [ "$t" = direct ] || cpu_of_nginx=$(printf '%.2f' "$(med "$t" cpu nginx)")
  printf '%-28s %10.0f %9.2f %9.2f %12.1f %11s\n' "${label[$t]}" "$(med "$t" rps)" \
    "$(med "$t" rps nginx)" "$(med "$t" rps bare)" "$(med "$t" cpu)" "$cpu_of_nginx"
done
signed_of_nginx=$(echo "$signed_of_public * $(med public rps nginx)" | bc -l)
printf '%-28s %10.0f %9.2f %9s %12.1f %11.2f\n' "keyward signed (RFC 9421)*" "$signed_rps" \
  "$signed_of_nginx" - "$signed_cpu" "$(echo "$signed_cpu / $(med nginx cpu)" | bc -l)"
echo "* signed_load's own client (20000 requests x $rounds rounds): $signed_of_public of keyward's public route with that client; ÷ nginx = that x (public ÷ nginx)"
echo
cat "$work/latency-nginx"
echo
cat "$work/latency-slowest"
