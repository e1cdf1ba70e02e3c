#!/usr/bin/env bash
# Load comparison, one run, same tool (wrk), same machine: the upstream directly, keyward on a
# public route, keyward with cached Basic auth, keyward with an API key.
# Usage: scripts/load.sh [SECONDS_PER_MEASUREMENT] [CONNECTIONS] [ROUNDS]
# KEYWARD_LOAD_STORE=postgres runs keyward on a fresh PostgreSQL database (on the server named by
# KEYWARD_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test; dropped afterwards)
# instead of a SQLite file: warm caches do no store I/O, whatever the backend.
# KEYWARD_LOAD_REDIS=redis://127.0.0.1:6379 shares the replay window in that Redis
# (redis.url): every signed request and cached Basic login then makes one Redis call.
# KEYWARD_LOAD_LIMITS=fleet|replica adds a per-credential rate limit far above the load
# (500 000/s, burst 1 000 000) in that scope: with fleet (needs KEYWARD_LOAD_REDIS) a key
# under its quota is served from leased slices, so this measures what the fleet limiter costs
# a key that is not limited.
# Prints requests/s of each and the ratios. Figures vary by machine; the ratios are the result.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
duration="${1:-10}"
connections="${2:-32}"
rounds="${3:-3}"
install_missing wrk=wrk bc=bc
for tool in wrk bc curl; do
  command -v "$tool" >/dev/null || { echo "load.sh needs $tool (apt-get install wrk bc curl)" >&2; exit 1; }
done

cargo build --release --bin keyward --example echo_upstream --example signed_load >&2
work="$(mktemp -d)"
pids=()
pg_admin="${KEYWARD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
pg_db=""
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  if [ -n "$pg_db" ]; then psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
store_url="sqlite://$work/keyward.db"
if [ "${KEYWARD_LOAD_STORE:-sqlite}" = postgres ]; then
  command -v psql >/dev/null || { echo "KEYWARD_LOAD_STORE=postgres needs psql" >&2; exit 1; }
  pg_db="keyward_load_$$"
  psql "$pg_admin" -qc "CREATE DATABASE $pg_db" >/dev/null
  store_url="${pg_admin%/*}/$pg_db"
fi
echo "store: ${store_url%%://*}" >&2
replay=""
if [ -n "${KEYWARD_LOAD_REDIS:-}" ]; then
  replay="redis: { url: \"$KEYWARD_LOAD_REDIS\" }"
  echo "replay window: redis" >&2
fi
limits=""
if [ -n "${KEYWARD_LOAD_LIMITS:-}" ]; then
  limits="rate_limits: { scope: $KEYWARD_LOAD_LIMITS, per_credential: { requests_per_second: 500000, burst: 1000000 } }"
  echo "rate limits: per credential, scope $KEYWARD_LOAD_LIMITS" >&2
fi

up="127.0.0.1:$(port)"; proxy="127.0.0.1:$(port)"; ops="127.0.0.1:$(port)"

"$bin"/examples/echo_upstream "$up" 2>/dev/null & pids+=($!)
cat > "$work/keyward.yaml" <<YAML
listen: { proxy: $proxy, ops: $ops }
upstream: { address: $up }
store: { url: $store_url }
bootstrap:
  admin: { name: admin, password_env: LOAD_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: 2 }
logging: { level: warn }
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
$replay
$limits
YAML
LOAD_ADMIN_PASSWORD=load-password "$bin"/keyward serve --config "$work/keyward.yaml" 2>"$work/stderr" &
keyward_pid=$!; pids+=("$keyward_pid")
for _ in $(seq 100); do curl -fs "http://$ops/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

rps() { wrk -t2 -c"$connections" -d"${duration}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
# keyward's CPU time (user + system, in clock ticks) so far.
ticks() { awk '{print $14 + $15}' "/proc/$keyward_pid/stat"; }
hz=$(getconf CLK_TCK)
# Prints "<req/s> <keyward CPU µs per request>" for one wrk run against keyward.
measure() {
  local before after out
  before=$(ticks)
  out=$(wrk -t2 -c"$connections" -d"${duration}s" "$@")
  after=$(ticks)
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" '
    /requests in/ {n=$1} /Requests\/sec/ {r=$2}
    END {printf "%s %.2f\n", r, t * 1000000 / hz / n}'
}
basic="Authorization: Basic $(printf 'admin:load-password' | base64)"

key=$(new_api_key "$proxy" "load test")
apikey="Argus-API-Key: $key"
token=$(new_token "$proxy")
cookie="Cookie: token=$token"

# Warm-up (connection pools, the caches).
wrk -t1 -c4 -d1s -H "$basic" "http://$proxy/x/fixed" >/dev/null
wrk -t1 -c4 -d1s -H "$apikey" "http://$proxy/x/fixed" >/dev/null
wrk -t1 -c4 -d1s -H "$cookie" "http://$proxy/x/fixed" >/dev/null

# Paths ending in /fixed get the same small answer from the upstream whatever the headers, so
# the routes differ only by keyward's own work. The targets are measured in interleaved rounds
# and the median of each is reported, so drift on a shared machine hits all of them alike.
declare -a d p b k t pc bc kc tc
for round in $(seq "$rounds"); do
  d+=("$(rps "http://$up/public/fixed")")
  read -r r c <<<"$(measure "http://$proxy/public/fixed")"; p+=("$r"); pc+=("$c")
  read -r r c <<<"$(measure -H "$basic" "http://$proxy/x/fixed")"; b+=("$r"); bc+=("$c")
  read -r r c <<<"$(measure -H "$apikey" "http://$proxy/x/fixed")"; k+=("$r"); kc+=("$c")
  read -r r c <<<"$(measure -H "$cookie" "http://$proxy/x/fixed")"; t+=("$r"); tc+=("$c")
  echo "round $round: direct ${d[-1]} | public ${p[-1]} (${pc[-1]} µs CPU/req) | basic ${b[-1]} (${bc[-1]}) | apikey ${k[-1]} (${kc[-1]}) | token ${t[-1]} (${tc[-1]})" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# Ratios are taken within each round (same minute, same machine state), then the median.
ratios() { local -n num=$1 den=$2; for i in "${!num[@]}"; do echo "${num[$i]} / ${den[$i]}" | bc -l; done; }
direct=$(median "${d[@]}"); public=$(median "${p[@]}"); authed=$(median "${b[@]}"); keyed=$(median "${k[@]}")
public_cpu=$(median "${pc[@]}"); basic_cpu=$(median "${bc[@]}"); apikey_cpu=$(median "${kc[@]}")
tokened=$(median "${t[@]}"); token_cpu=$(median "${tc[@]}")
mapfile -t r_public < <(ratios p d); mapfile -t r_basic < <(ratios b p); mapfile -t r_key < <(ratios k p)
mapfile -t c_basic < <(ratios pc bc); mapfile -t c_key < <(ratios pc kc)
mapfile -t r_token < <(ratios t p); mapfile -t c_token < <(ratios pc tc)

echo "median of $rounds rounds of ${duration}s, wrk -t2 -c$connections (ratios: median of per-round ratios):"
printf 'upstream direct         %10.0f req/s\n' "$direct"
printf 'keyward public route    %10.0f req/s   %.2f of direct                        %6.1f µs keyward CPU/req\n' "$public" "$(median "${r_public[@]}")" "$public_cpu"
printf 'keyward Basic (cached)  %10.0f req/s   %.2f of public route (CPU ratio %.2f)  %6.1f µs keyward CPU/req\n' "$authed" "$(median "${r_basic[@]}")" "$(median "${c_basic[@]}")" "$basic_cpu"
printf 'keyward API key         %10.0f req/s   %.2f of public route (CPU ratio %.2f)  %6.1f µs keyward CPU/req\n' "$keyed" "$(median "${r_key[@]}")" "$(median "${c_key[@]}")" "$apikey_cpu"
printf 'keyward token cookie    %10.0f req/s   %.2f of public route (CPU ratio %.2f)  %6.1f µs keyward CPU/req\n' "$tokened" "$(median "${r_token[@]}")" "$(median "${c_token[@]}")" "$token_cpu"

# Signed requests: wrk cannot sign, and a signature is accepted only once, so a client of our
# own signs every request before each round starts and compares with the public route itself.
# Enrolling your own key needs ADMINISTRATIVE (password + TOTP); the POWER-USER administrator
# enrolls one for a second user instead.
echo 'loader-password' | "$bin"/keyward user add loader --password-stdin --config "$work/keyward.yaml" >/dev/null
"$bin"/keyward keygen --out "$work/client.pem" >"$work/keygen.out"
public_key=$(awk -F'enrolling\\): ' '/enrolling/ {print $2}' "$work/keygen.out")
key_id=$(curl -fs -u admin:load-password -H 'content-type: application/json' \
  -d "{\"publicKey\":\"$public_key\",\"description\":\"load test\"}" \
  "http://$proxy/authentication/v1/user/loader/signature" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["keyID"])')
"$bin"/examples/signed_load "$proxy" "$work/client.pem" "loader/$key_id" "$keyward_pid" 40000 "$connections" "$rounds"
