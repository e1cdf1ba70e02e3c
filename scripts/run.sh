#!/usr/bin/env bash
# Runs keyward with the embedded default config (config/keyward.yaml), and a demo echo
# upstream on 127.0.0.1:3000 when nothing listens there yet, so the README's curl walk-through
# works on a fresh machine.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/release"
cd "$(dirname "$0")/.."

if [ -z "${KEYWARD_ADMIN_PASSWORD:-}" ] && [ ! -f data/keyward.db ]; then
  echo "set KEYWARD_ADMIN_PASSWORD: the administrator 'admin' is created with it on first start" >&2
  exit 1
fi

upstream_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null; then
  "$bin"/examples/echo_upstream 127.0.0.1:3000 &
  upstream_pid=$!
  trap 'kill "$upstream_pid" 2>/dev/null || true' EXIT
fi

"$bin"/keyward serve --config config/keyward.yaml
