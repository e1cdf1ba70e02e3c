#!/usr/bin/env bash
# keyward at scale (make scale): memory per cached key and token, start-up with a million keys,
# bounded memory under floods of distinct and unknown keys, the cost of cache misses on SQLite
# and PostgreSQL, and memory per kept-alive connection — one run, the release binary, stores
# filled directly by examples/fill_store (scripts/scale.py says how each figure is taken).
#
# Usage: scripts/scale.sh [scale.py options]   e.g. --sizes 10000,100000 --connections 0
# Writes docs/src/images/scale.png (the plot, shown in the book's Scale chapter) unless --plot
# names another file. KEYWARD_TEST_POSTGRES names the PostgreSQL server (default
# postgres://postgres@127.0.0.1:5432/test; a database of the run's own is made and dropped).
# Figures vary by machine; each table is one run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh
install_missing psql=postgresql-client h2load=nghttp2-client openssl=openssl
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "installing matplotlib for the plot" >&2
  python3 -m pip install --quiet matplotlib >&2
fi
cargo build --release --bin keyward --example echo_upstream --example open_loop --example fill_store --example bare_pingora >&2
target="${CARGO_TARGET_DIR:-target}/release"
plot=(--plot docs/src/images/scale.png)
for arg in "$@"; do [ "$arg" = --plot ] && plot=(); done
exec python3 scripts/scale.py "$target" "${plot[@]}" "$@"
