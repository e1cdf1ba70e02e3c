#!/usr/bin/env bash
# keyward's x86-64 build carries curve25519-dalek's AVX-512 IFMA and AVX2 backends and picks one
# at run time (.cargo/config.toml). This checks that the same build still works on CPUs that
# have neither: under QEMU's user-mode emulator (Debian's qemu-user) with older CPU models —
# Westmere (no AVX2: the portable backend) and Haswell (AVX2, no AVX-512) — and natively,
# it runs
#   1. the signature unit tests of keyward-auth (the RFC 9421 example verifies, every one-bit
#      change of a signature or of the signed base is refused), and
#   2. the release keyward binary itself (and its `keyward sign`), allowing signed requests and
#      refusing one whose signature has one character changed.
# An instruction the emulated CPU lacks ends the process with SIGILL, so a backend chosen
# wrongly fails here rather than on an operator's older machine.
# Usage: scripts/cpu-fallback.sh   (KEYWARD_FALLBACK_CPUS="Westmere Haswell" to change models)
#   KEYWARD_INSTRUCTIONS_BIN=DIR uses a prebuilt release directory, as scripts/instructions.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
install_missing qemu-x86_64=qemu-user curl=curl
command -v qemu-x86_64 >/dev/null || { echo "cpu-fallback.sh needs qemu-x86_64 (apt-get install qemu-user)" >&2; exit 1; }
cpus=(${KEYWARD_FALLBACK_CPUS:-Westmere Haswell})
bin="${KEYWARD_INSTRUCTIONS_BIN:-${CARGO_TARGET_DIR:-target}/release}"
[ -n "${KEYWARD_INSTRUCTIONS_BIN:-}" ] \
  || cargo build --release --bin keyward --example echo_upstream >&2   # the feature set instructions.sh builds
tests=$(cargo test -p keyward-auth --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["profile"] and m["profile"]["test"]:
        print(m["executable"])' | head -1)
[ -x "$tests" ] || { echo "no keyward-auth test binary" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin"/keyward keygen --out "$work/client.pem" >"$work/keygen.out"
public_key=$(awk -F'enrolling\\): ' '/enrolling/ {print $2}' "$work/keygen.out")
host="app.example"
# Asks keyward's /auth/nginx about a GET of /x/fixed on $host with the headers in FILE.
ask() {
  local args=() line
  while IFS= read -r line; do args+=(-H "$line"); done <"$1"
  curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" -H 'X-Original-Method: GET' \
    -H 'X-Original-URI: /x/fixed' "${args[@]}" "http://$authz/auth/nginx"
}

failed=0
for cpu in native "${cpus[@]}"; do
  run=()
  [ "$cpu" = native ] || run=(qemu-x86_64 -cpu "$cpu")
  # 1. The unit tests.
  if "${run[@]}" "$tests" signature:: --test-threads 2 >"$work/tests.out" 2>&1; then
    tests_result="$(grep -o '[0-9]* passed' "$work/tests.out" | head -1)"
  else
    tests_result="FAILED"; failed=1; tail -n 20 "$work/tests.out" >&2
  fi
  # 2. keyward itself, on its own store, deciding signed requests as nginx's auth_request asks
  #    (QEMU's user mode lacks a socket option pingora sets to connect upstream, so the check
  #    is asked of the external-authorization listener, which decides without an upstream).
  dir="$work/$cpu"; mkdir "$dir"
  proxy="127.0.0.1:$(port)"; ops="127.0.0.1:$(port)"; authz="127.0.0.1:$(port)"
  cat >"$dir/keyward.yaml" <<YAML
listen: { proxy: $proxy, ops: $ops, authz: $authz }
external_authz: { trusted_callers: [127.0.0.1/32] }
upstream: { address: 127.0.0.1:9 }
store: { url: sqlite://$dir/keyward.db }
bootstrap:
  admin: { name: admin, password_env: FALLBACK_ADMIN_PASSWORD, functions: [POWER-USER] }
server: { threads: 1 }
logging: { level: warn }
routes:
  - path: /
    require: { min_security_level: EXTERNAL }
YAML
  FALLBACK_ADMIN_PASSWORD=fallback-password "${run[@]}" "$bin"/keyward serve --config "$dir/keyward.yaml" 2>"$dir/stderr" &
  kpid=$!; pids+=("$kpid")
  for _ in $(seq 600); do curl -fs "http://$ops/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  echo 'loader-password' | "${run[@]}" "$bin"/keyward user add loader --password-stdin --config "$dir/keyward.yaml" >/dev/null 2>&1
  keyid=$(curl -fs -u admin:fallback-password -H 'content-type: application/json' \
    -d "{\"publicKey\":\"$public_key\",\"description\":\"cpu-fallback\"}" \
    "http://$proxy/authentication/v1/user/loader/signature" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["keyID"])')
  # Signed requests, each with its own nonce (signed by the same build on the same CPU): 200.
  allowed=0
  for i in $(seq 20); do
    "${run[@]}" "$bin"/keyward sign --key "$work/client.pem" --keyid "loader/$keyid" "http://$host/x/fixed" \
      2>/dev/null | grep '^Signature' >"$dir/signed.txt"
    [ "$(ask "$dir/signed.txt")" = 200 ] && allowed=$((allowed + 1))
  done
  # The last one again with one character of its signature changed (a fresh nonce, so that
  # the replay window is not what refuses it): 401.
  "${run[@]}" "$bin"/keyward sign --key "$work/client.pem" --keyid "loader/$keyid" "http://$host/x/fixed" \
    2>/dev/null | grep '^Signature' >"$dir/signed.txt"
  python3 -c 'import re,sys
p = sys.argv[1]; text = open(p).read()
# The signature'"'"'s tenth base64 character, changed: still 64 bytes, no longer the signature.
def change(m):
    sig = m.group(2); c = "A" if sig[9] != "A" else "B"
    return m.group(1) + sig[:9] + c + sig[10:]
open(p, "w").write(re.sub(r"(Signature: sig1=:)([^:]+)", change, text))' "$dir/signed.txt"
  forged=$(ask "$dir/signed.txt")
  kill "$kpid"; wait "$kpid" 2>/dev/null || true
  if [ "$allowed" != 20 ] || [ "$forged" != 401 ]; then
    failed=1; grep -v "TCG doesn't support" "$dir/stderr" | tail -n 5 >&2
  fi
  printf '%-9s unit tests: %-10s keyward: %s of 20 signed requests allowed, a changed signature %s\n' \
    "$cpu" "$tests_result" "$allowed" "$forged"
done
exit "$failed"
