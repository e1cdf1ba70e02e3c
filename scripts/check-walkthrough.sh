#!/usr/bin/env bash
# Runs the walk-through of README.md — the one the book's *Getting started* includes — as it
# is written: keyward (a debug build) serves the embedded default config/keyward.yaml with the
# password of the README's `make run` line, in front of the echo upstream, from a scratch
# directory where `target/release/keyward` is that build. The addresses 127.0.0.1:8080, :9090
# and :3000 are replaced by free ports, in the configuration and in the commands. Each command
# must succeed and its answer hold the `# ` lines written right under it
# (scripts/docs_checks.py walkthrough). CI runs it after `make test`, which built the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
bin="$target/debug"
cargo build --quiet --bin keyward --example echo_upstream

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
proxy="127.0.0.1:$(free_port)"; ops="127.0.0.1:$(free_port)"; upstream="127.0.0.1:$(free_port)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/config" "$work/target/release"
sed -e "s/127\.0\.0\.1:8080/$proxy/; s/127\.0\.0\.1:9090/$ops/; s/127\.0\.0\.1:3000/$upstream/" \
  config/keyward.yaml >"$work/config/keyward.yaml"
for address in "$proxy" "$ops" "$upstream"; do
  grep -q "$address" "$work/config/keyward.yaml" || { echo "config/keyward.yaml no longer has the walk-through's addresses" >&2; exit 1; }
done
ln -s "$bin/keyward" "$work/target/release/keyward"

"$bin/examples/echo_upstream" "$upstream" 2>"$work/echo.log" &
pids+=($!)
password="$(python3 scripts/docs_checks.py admin-password)"
(cd "$work" && unset KEYWARD_CONFIG && KEYWARD_ADMIN_PASSWORD="$password" exec "$bin/keyward" serve --config config/keyward.yaml) \
  2>"$work/keyward.log" &
pids+=($!)
for _ in $(seq 150); do
  curl -fs "http://$ops/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://$ops/readyz" >/dev/null || { echo "keyward did not become ready" >&2; cat "$work/keyward.log" >&2; exit 1; }

python3 scripts/docs_checks.py walkthrough "$work" "$proxy" "$ops" || {
  echo "--- keyward's log" >&2; tail -40 "$work/keyward.log" >&2; exit 1
}
