#!/usr/bin/env bash
# Checks what building and testing keyward needs, installs what it can, names what it cannot.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1"); }

need cargo
need cc
need cmake   # pingora's zlib-ng build

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [[ " ${missing[*]} " == *" cargo "* ]]; then
  echo "keyward needs a Rust toolchain (cargo): install it from https://rustup.rs" >&2
  exit 1
fi

packages=()
for tool in "${missing[@]}"; do
  case "$tool" in
    cmake) packages+=(cmake) ;;
    cc) packages+=(gcc) ;;
  esac
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
  echo "installing ${packages[*]} with apt-get" >&2
  $sudo apt-get install -y "${packages[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update >/dev/null && $sudo apt-get install -y "${packages[@]}" >/dev/null
  }
else
  echo "keyward needs: ${packages[*]} (install them with your package manager)" >&2
  exit 1
fi
