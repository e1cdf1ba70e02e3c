#!/usr/bin/env bash
# Two builds of keyward side by side, one run, one machine, one echo upstream: CPU time per
# request of a baseline binary and a candidate binary on the public route and with each
# credential (Basic, API key, token cookie, RFC 9421 signature), to check that a change (a
# refactor, a profile setting, a dependency bump) costs no CPU per request.
# Usage: scripts/compare-builds.sh BASELINE_BIN CANDIDATE_BIN [SECONDS] [CONNECTIONS] [ROUNDS]
#   e.g. scripts/compare-builds.sh /tmp/before/release/keyward target/release/keyward 5 32 5
#
# Each binary serves the same configuration (server.threads 1, logging at warn) on a SQLite
# store of its own in a temporary directory, with the same users and credentials, made as
# scripts/load.sh makes them: the bootstrap administrator (admin, Basic, cached), an API key
# and a gateway token of it, and a second user (loader) with an enrolled Ed25519 key (the same
# key in both stores).
# In each of ROUNDS rounds every route is measured on both binaries back to back (baseline
# first in odd rounds, candidate first in even ones): wrk -t1 -cCONNECTIONS for SECONDS, or,
# for signed requests (wrk cannot sign), examples/signed_load with KEYWARD_COMPARE_SIGNED
# requests (default 40000, as scripts/load.sh) signed before its clock starts. Requests/s and
# the CPU time of the keyward process per request (utime + stime from /proc/PID/stat) are
# taken per measurement; while one keyward is measured the other is paused (SIGSTOP), as in
# scripts/compare.sh.
# Prints per route the median CPU µs/request and req/s of each binary and the candidate ÷
# baseline CPU ratio (the median of the per-round ratios: each pair ran in the same minute),
# then, per binary, the signed route's CPU minus the public route's measured by the same client
# (signed_load) just before it: what a signature costs above an anonymous request.
# Exits 1 when a route's ratio is above 1 + KEYWARD_COMPARE_MAX_WORSE/100 (percent, default 3).
# Nothing is built: examples/echo_upstream and examples/signed_load are taken from
# KEYWARD_COMPARE_EXAMPLES (default: the examples/ directory beside CANDIDATE_BIN, i.e.
# `cargo build --release --bin keyward --example echo_upstream --example signed_load`).
set -euo pipefail
usage="usage: $0 BASELINE_BIN CANDIDATE_BIN [SECONDS] [CONNECTIONS] [ROUNDS]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
declare -A bin
bin[baseline]=$(realpath "$1")
bin[candidate]=$(realpath "$2")
duration="${3:-5}"
connections="${4:-32}"
rounds="${5:-5}"
max_worse="${KEYWARD_COMPARE_MAX_WORSE:-3}"
signed_requests="${KEYWARD_COMPARE_SIGNED:-40000}"
examples="${KEYWARD_COMPARE_EXAMPLES:-$(dirname "${bin[candidate]}")/examples}"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh

install_missing wrk=wrk bc=bc
for tool in wrk bc curl python3; do
  command -v "$tool" >/dev/null || {
    echo "compare-builds.sh needs $tool (apt-get install wrk bc curl python3)" >&2
    exit 1
  }
done
for f in "${bin[baseline]}" "${bin[candidate]}" "$examples/echo_upstream" "$examples/signed_load"; do
  [ -x "$f" ] || { echo "not an executable: $f ($usage)" >&2; exit 1; }
done

builds=(baseline candidate)
work="$(mktemp -d)"
pids=()
cleanup() {
  kill -CONT "${pids[@]}" 2>/dev/null || true   # a paused process would not act on SIGTERM
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ready() { for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

up="127.0.0.1:$(port)"
"$examples"/echo_upstream "$up" 2>/dev/null & pids+=($!)
ready "http://$up/public/fixed"

declare -A addr kpid
for b in "${builds[@]}"; do
  mkdir "$work/$b"
  addr[$b]="127.0.0.1:$(port)"; ops="127.0.0.1:$(port)"
  cat >"$work/$b/keyward.yaml" <<YAML
listen: { proxy: ${addr[$b]}, ops: $ops }
upstream: { address: $up }
store: { url: sqlite://$work/$b/keyward.db }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: 1, pid_file: $work/$b/keyward.pid }
logging: { level: warn }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
  LOAD_ADMIN_PASSWORD=load-password "${bin[$b]}" serve --config "$work/$b/keyward.yaml" 2>"$work/$b/stderr" &
  kpid[$b]=$!; pids+=("${kpid[$b]}")
  ready "http://$ops/readyz"
done

# The credentials, as scripts/load.sh makes them; the signing key is one key enrolled in both.
"${bin[candidate]}" keygen --out "$work/client.pem" >"$work/keygen.out"
public_key=$(awk -F'enrolling\\): ' '/enrolling/ {print $2}' "$work/keygen.out")
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"
declare -A apikey cookie keyid
for b in "${builds[@]}"; do
  apikey[$b]="Argus-API-Key: $(new_api_key "${addr[$b]}" compare-builds)"
  cookie[$b]="Cookie: token=$(new_token "${addr[$b]}")"
  echo 'loader-password' | "${bin[$b]}" user add loader --password-stdin --config "$work/$b/keyward.yaml" \
    >/dev/null 2>"$work/$b/user-add.err" || { cat "$work/$b/user-add.err" >&2; exit 1; }
  keyid[$b]=$(curl -fs -u admin:load-password -H 'content-type: application/json' \
    -d "{\"publicKey\":\"$public_key\",\"description\":\"compare-builds\"}" \
    "http://${addr[$b]}/authentication/v1/user/loader/signature" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["keyID"])')
done

routes=(public basic apikey token signed)
declare -A label=([public]="public route" [basic]="Basic (cached)" [apikey]="API key" [token]="token cookie" [signed]="signed (RFC 9421)")
# wrk's arguments for route R of build B, one a line.
args() {
  case $1 in
    public) echo "http://${addr[$2]}/public/fixed" ;;
    basic) printf '%s\n' -H "$basic" "http://${addr[$2]}/x/fixed" ;;
    apikey) printf '%s\n' -H "${apikey[$2]}" "http://${addr[$2]}/x/fixed" ;;
    token) printf '%s\n' -H "${cookie[$2]}" "http://${addr[$2]}/x/fixed" ;;
  esac
}
# alone B: the other keyward is paused; alone -: both run.
alone() {
  local b
  for b in "${builds[@]}"; do
    if [ "$1" = - ] || [ "$1" = "$b" ]; then kill -CONT "${kpid[$b]}"; else kill -STOP "${kpid[$b]}"; fi
  done
}

hz=$(getconf CLK_TCK)
# Prints "<req/s> <CPU µs per request of keyward B>" for route R of build B; a wrk run with
# answers other than 2xx fails the script (the two builds would not be doing the same work).
measure() {
  local r=$1 b=$2 before after out a
  if [ "$r" = signed ]; then
    # signed_load measures the public route and then the signed one, with its own client; the
    # signed line is "round 1: public … | signed N req/s (C µs CPU/req)".
    "$examples"/signed_load "${addr[$b]}" "$work/client.pem" "loader/${keyid[$b]}" "${kpid[$b]}" \
      "$signed_requests" "$connections" 1 2>"$work/signed.err" >/dev/null \
      || { cat "$work/signed.err" >&2; exit 1; }
    # A third figure: the public route's CPU per request with the same client, just before.
    sed -n 's/.*public [0-9.]* req\/s (\([0-9.]*\) µs CPU\/req) | signed \([0-9.]*\) req\/s (\([0-9.]*\) µs CPU\/req).*/\2 \3 \1/p' "$work/signed.err"
    return
  fi
  mapfile -t a < <(args "$r" "$b")
  before=$(cpu_ticks "${kpid[$b]}")
  out=$(wrk -t1 -c"$connections" -d"${duration}s" "${a[@]}")
  after=$(cpu_ticks "${kpid[$b]}")
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" '
    /requests in/ {n=$1} /Requests\/sec/ {r=$2} /Non-2xx/ {bad=$NF}
    END {
      if (bad > 0 || n == 0) {printf("%d of %d answers not 2xx\n", bad, n) > "/dev/stderr"; exit 1}
      printf "%s %.2f\n", r, t * 1000000 / hz / n
    }'
}

# Every route answers 200 on both, then a warm-up (connection pools, credential caches).
for b in "${builds[@]}"; do
  alone "$b"
  for r in public basic apikey token; do
    mapfile -t a < <(args "$r" "$b")
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${a[@]}")" = 200 ] \
      || { echo "$b $r: does not answer 200" >&2; exit 1; }
    wrk -t1 -c4 -d1s "${a[@]}" >/dev/null
  done
done

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A rps cpu same_client_public
for round in $(seq "$rounds"); do
  order=(baseline candidate)
  [ $((round % 2)) = 1 ] || order=(candidate baseline)
  line="round $round:"
  for r in "${routes[@]}"; do
    line+=" $r"
    for b in "${order[@]}"; do
      alone "$b"
      out=$(measure "$r" "$b")
      read -r "rps[$r,$b,$round]" "cpu[$r,$b,$round]" "same_client_public[$r,$b,$round]" <<<"$out"
      [ -n "${cpu[$r,$b,$round]}" ] || { echo "$b $r: no measurement" >&2; exit 1; }
      line+=" $b ${rps[$r,$b,$round]}/s ${cpu[$r,$b,$round]}µs"
    done
    line+=" |"
  done
  alone -
  echo "${line% |}" >&2
done

limit=$(echo "1 + $max_worse / 100" | bc -l)
worse=()
echo
echo "CPU per request of the keyward process, candidate vs baseline: median of $rounds rounds of ${duration}s,"
echo "wrk -t1 -c$connections (signed: signed_load, $signed_requests requests, $connections connections); ratio: median of per-round ratios"
echo "baseline:  ${bin[baseline]}"
echo "candidate: ${bin[candidate]}"
printf '%-18s %14s %14s %9s %10s %14s %14s\n' route 'base µs/req' 'cand µs/req' 'ratio' 'range' 'base req/s' 'cand req/s'
for r in "${routes[@]}"; do
  ratios=$(for round in $(seq "$rounds"); do echo "${cpu[$r,candidate,$round]} / ${cpu[$r,baseline,$round]}" | bc -l; done)
  ratio=$(echo "$ratios" | median)
  range="$(printf '%.2f-%.2f' "$(echo "$ratios" | sort -g | head -1)" "$(echo "$ratios" | sort -g | tail -1)")"
  base_cpu=$(for round in $(seq "$rounds"); do echo "${cpu[$r,baseline,$round]}"; done | median)
  cand_cpu=$(for round in $(seq "$rounds"); do echo "${cpu[$r,candidate,$round]}"; done | median)
  base_rps=$(for round in $(seq "$rounds"); do echo "${rps[$r,baseline,$round]}"; done | median)
  cand_rps=$(for round in $(seq "$rounds"); do echo "${rps[$r,candidate,$round]}"; done | median)
  flag=""
  if [ "$(echo "$ratio > $limit" | bc -l)" = 1 ]; then flag="  > +$max_worse %"; worse+=("$r"); fi
  printf '%-18s %14.1f %14.1f %9.3f %10s %14.0f %14.0f%s\n' "${label[$r]}" "$base_cpu" "$cand_cpu" \
    "$ratio" "$range" "$base_rps" "$cand_rps" "$flag"
done
# What a signature costs above the public route, both measured by signed_load's one client.
for b in "${builds[@]}"; do
  extra=$(for round in $(seq "$rounds"); do echo "${cpu[signed,$b,$round]} - ${same_client_public[signed,$b,$round]}" | bc -l; done | median)
  printf 'signed minus public route (same client), %-9s %6.1f µs CPU/request\n' "$b:" "$extra"
done
if [ "${#worse[@]}" -gt 0 ]; then
  echo "candidate more than $max_worse % worse in CPU per request on: ${worse[*]}"
  exit 1
fi
echo "no route more than $max_worse % worse in CPU per request"
