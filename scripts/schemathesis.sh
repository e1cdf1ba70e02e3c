#!/usr/bin/env bash
# Tests a live keyward against its OpenAPI document (docs/openapi.json) with schemathesis:
# no 5xx, no status code, content type or body the document does not describe.
#
# Builds target/debug/keyward and target/debug/examples/echo_upstream first.
# Environment: KEYWARD_ADMIN_PASSWORD (the bootstrap administrator's; a random one if unset),
# SCHEMATHESIS_MAX_EXAMPLES (per operation, default 25), SCHEMATHESIS_SEED (default fixed, so
# CI runs are repeatable), KEYWARD_SCHEMATHESIS_PORT (first of three loopback ports, 19201).
set -euo pipefail
cd "$(dirname "$0")/.."

schemathesis_version=4.32.5
validator_version=0.9.0
venv="${XDG_CACHE_HOME:-$HOME/.cache}/keyward/schemathesis-$schemathesis_version"
bin="${CARGO_TARGET_DIR:-target}/debug"
port="${KEYWARD_SCHEMATHESIS_PORT:-19201}"
proxy="127.0.0.1:$port"
ops="127.0.0.1:$((port + 1))"
upstream="127.0.0.1:$((port + 2))"

# `cargo test` builds examples only as test harnesses, so build the two binaries here (a no-op
# when they are current).
cargo build --quiet --bin keyward --example echo_upstream

# A virtualenv of its own, so the pinned versions never clash with the test suite's packages.
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$schemathesis_version" \
  || ! "$venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
  echo "installing schemathesis $schemathesis_version into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv in a package of its own.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y python3-venv >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; }
      python3 -m venv "$venv"
    else
      echo "schemathesis.sh: python3 -m venv failed; install python3-venv" >&2
      exit 1
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$schemathesis_version" "openapi-spec-validator==$validator_version"
fi

# The document itself first: a valid OpenAPI 3.1 description.
"$venv/bin/python" -c 'import sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename
validate(read_from_filename(sys.argv[1])[0])
print("docs/openapi.json: valid OpenAPI", flush=True)' docs/openapi.json

work="$(mktemp -d)"
pids=()
stop() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap stop EXIT

password="${KEYWARD_ADMIN_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')}"
# Routes let nothing through to the upstream: every answer comes from keyward itself (a path
# that normalizes out of the admin namespaces gets the proxy's 403, which the document has).
cat >"$work/keyward.yaml" <<EOF
listen:
  proxy: $proxy
  ops: $ops
upstream:
  address: $upstream
store:
  url: sqlite://$work/keyward.db
bootstrap:
  admin:
    name: admin
    password_env: KEYWARD_ADMIN_PASSWORD
    functions: [POWER-USER]
tokens:
  administrator: admin
server:
  pid_file: $work/keyward.pid
  grace_period: 1s
  shutdown_timeout: 1s
routes:
  - path: /healthz
    methods: [GET]
    public: true
logging:
  format: text
  level: warn
EOF

"$bin/examples/echo_upstream" "$upstream" >"$work/upstream.log" 2>&1 &
pids+=($!)
KEYWARD_ADMIN_PASSWORD="$password" "$bin/keyward" serve --config "$work/keyward.yaml" >"$work/keyward.log" 2>&1 &
pids+=($!)

ready=""
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$ops/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "schemathesis.sh: keyward did not become ready on $ops" >&2
  cat "$work/keyward.log" >&2
  exit 1
fi

# What the document's examples name, so the examples phase reaches real handlers: john (user 2,
# whom locking does not lock the administrator out), his API key 2/1 and signature key 1, and
# the administrator's own key 1/1.
printf '%s\n' "john-password-1" |
  "$bin/keyward" user add john --function CASE-SECMON-RO --config "$work/keyward.yaml" --password-stdin >/dev/null
admin_call() {
  curl -sf -o /dev/null -u "admin:$password" -H 'content-type: application/json' -X POST \
    "http://$proxy$1" -d "$2" || {
    echo "schemathesis.sh: setting up POST $1 failed" >&2
    exit 1
  }
}
admin_call /authentication/v1/user/john/apikey '{"description": "schemathesis"}'
admin_call /authentication/v1/apikey '{"description": "schemathesis"}'
admin_call /authentication/v1/user/john/signature \
  '{"publicKey": "/ryNMsLv7VXGowMAipCTLXyNfSnGfCbSjiYqiyq69Zk=", "description": "schemathesis"}'

# What the ops listener serves is the file in the repository.
"$venv/bin/python" -c 'import sys, urllib.request
served = urllib.request.urlopen(sys.argv[1], timeout=5).read()
if served != open(sys.argv[2], "rb").read():
    sys.exit("GET /openapi.json differs from docs/openapi.json")' "http://$ops/openapi.json" docs/openapi.json

# Run from the scratch directory: schemathesis and hypothesis keep caches in the working one.
document="$PWD/docs/openapi.json"
status=0
(cd "$work" && "$venv/bin/st" --no-color run "$document" \
  --url "http://$proxy" \
  --auth "admin:$password" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --seed "${SCHEMATHESIS_SEED:-20260401}" \
  --workers 2 \
  --request-timeout 10 \
  --suppress-health-check all \
  --generation-database none ${SCHEMATHESIS_ARGS:-}) || status=$?

if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: schemathesis found failures (exit $status); keyward's log:" >&2
  tail -n 50 "$work/keyward.log" >&2
fi
exit "$status"
