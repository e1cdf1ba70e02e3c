#!/usr/bin/env bash
# Checks what building and testing keyward needs, installs what it can, names what it cannot.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1"); }

need cargo
need cc
need cmake   # pingora's zlib-ng build
# The external-authorization tests start real edges in front of keyward: nginx
# (`auth_request`, Debian's nginx-light) and Caddy (`forward_auth`).
need nginx
need caddy
# The directory tests (tests/directory.rs) start their own OpenLDAP slapd and change it with
# ldapmodify.
[ -x /usr/sbin/slapd ] || missing+=(slapd)
need ldapmodify

# The signature interoperability test signs with an independent RFC 9421 implementation.
need python3
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import http_message_signatures, requests, cryptography' 2>/dev/null; then
  echo "installing the Python RFC 9421 signer used by the interoperability test" >&2
  python3 -m pip install --quiet 'http-message-signatures>=3,<4' requests cryptography >&2 || {
    echo "keyward's tests need: python3 -m pip install http-message-signatures requests cryptography" >&2
    exit 1
  }
fi

# The gRPC external-authorization test asks keyward's Check from a real gRPC client.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import grpc; from envoy.service.auth.v3 import external_auth_pb2_grpc' 2>/dev/null; then
  echo "installing Python grpcio and xds-protos for the gRPC ext_authz test" >&2
  python3 -m pip install --quiet grpcio xds-protos >&2 || {
    echo "keyward's tests need: python3 -m pip install grpcio xds-protos" >&2
    exit 1
  }
fi

# The browser tests (tests/browser.rs) drive Debian's Chromium through its own chromedriver
# with Selenium, and sign in at a real OpenID provider: npm's oidc-provider (tests/oidc).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromedriver)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import selenium' 2>/dev/null; then
  echo "installing Python selenium for the browser tests" >&2
  python3 -m pip install --quiet 'selenium>=4.20' >&2 || {
    echo "keyward's tests need: python3 -m pip install selenium" >&2
    exit 1
  }
fi
need node
oidc_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/oidc"
if command -v npm >/dev/null 2>&1 && [ ! -d "$oidc_dir/node_modules/oidc-provider" ]; then
  echo "installing the test OpenID provider (npm ci in tests/oidc)" >&2
  (cd "$oidc_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

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
    python3) packages+=(python3 python3-pip) ;;
    nginx) packages+=(nginx-light) ;;
    caddy) packages+=(caddy) ;;
    slapd) packages+=(slapd) ;;
    ldapmodify) packages+=(ldap-utils) ;;
    chromium) packages+=(chromium) ;;
    chromedriver) packages+=(chromium-driver) ;;
    node) packages+=(nodejs npm) ;;
  esac
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
  echo "installing ${packages[*]} with apt-get" >&2
  # slapd's package asks debconf questions and may start a system slapd: neither is wanted
  # (the tests run their own, on ports of their own).
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}" >/dev/null
  }
else
  echo "keyward needs: ${packages[*]} (install them with your package manager)" >&2
  exit 1
fi
