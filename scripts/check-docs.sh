#!/usr/bin/env bash
# Builds the book (docs/, an mdBook) into docs/book/ and fails on a broken link: every
# relative link of README.md and of docs/src (and the files the book includes from docs/) must
# name an existing file, and every #anchor a heading of its target; the built pages are then
# checked the same way, as a reader clicks them (scripts/docs_checks.py links).
# mdbook is installed with cargo into a cache that outlives the checkout when it is missing:
# KEYWARD_TOOLS (default ~/.cache/keyward-tools), pinned to MDBOOK_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
tools="${KEYWARD_TOOLS:-$HOME/.cache/keyward-tools}"
export PATH="$tools/bin:$PATH"

if ! mdbook --version 2>/dev/null | grep -qx "mdbook v$MDBOOK_VERSION"; then
  echo "installing mdbook $MDBOOK_VERSION into $tools (once; a few minutes)" >&2
  # Without the default `serve` and `watch` features (a web server, file watching): `build`
  # is all CI needs, and they would double the compile time.
  cargo install --locked --quiet mdbook --version "$MDBOOK_VERSION" \
    --no-default-features --features search --root "$tools" >&2
fi

rm -rf docs/book
# mdbook fails on a chapter or an {{#include}} that is missing (pipefail passes its status on).
mdbook build docs 2>&1 | { grep -v '^ INFO ' || true; }
python3 scripts/docs_checks.py links
