# shellcheck shell=bash
# Sourced by the measurement scripts (compare.sh, compare-builds.sh, instructions.sh, load.sh,
# load-edge.sh): the pieces they share — free ports, a process's CPU time, keyward's
# credentials for the load, and nginx as the reverse proxy keyward is compared with,
# configured the same way in each.

# Installs the Debian packages of the tools that are missing (as root or with sudo), as
# prereqs.sh does; a script still checks afterwards that it has what it needs.
# Usage: install_missing TOOL=PACKAGE...
install_missing() {
  local pair packages=() sudo=""
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
  done
  [ "${#packages[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "installing ${packages[*]} with apt-get" >&2
    $sudo apt-get install -y "${packages[@]}" >/dev/null 2>&1 || {
      $sudo apt-get update >/dev/null && $sudo apt-get install -y "${packages[@]}" >/dev/null
    } || true
  fi
}

# The CPU time (user + system, in clock ticks of `getconf CLK_TCK`) process PID has used so far,
# from /proc/PID/stat (fields 14 and 15; the command name in field 2 has no spaces here).
# Usage: cpu_ticks PID
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A new API key of the bootstrap administrator (password load-password), made through the
# admin API at ADDR. Usage: new_api_key ADDR DESCRIPTION
new_api_key() {
  curl -fs -u admin:load-password -H 'content-type: application/json' \
    -d "{\"description\":\"$2\"}" "http://$1/authentication/v1/user/admin/apikey" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["apiKeyString"])'
}

# A new gateway token of the bootstrap administrator, minted at ADDR. Usage: new_token ADDR
new_token() {
  curl -fs -u admin:load-password -XPOST "http://$1/.TOKEN/?setcookie=false" -o /dev/null -D - \
    | awk -F': ' 'tolower($1) == "gateway-token" {print $2}' | tr -d '\r'
}

# nginx's `location /` proxying to the `upstream app` block, with keep-alive to it.
nginx_proxy_location() {
  cat <<'NGINX'
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }
NGINX
}

# The body of an nginx `http` block proxying to UPSTREAM (host:port) with keep-alive, one
# `server` per listen address; a LISTEN=FILE pair also writes the access log (nginx's default
# `combined` format) to FILE. Usage: nginx_proxy_http WORKDIR UPSTREAM LISTEN[=ACCESS_LOG]...
nginx_proxy_http() {
  local work=$1 upstream=$2 listen log
  shift 2
  cat <<NGINX
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $work/ngx-body;
  proxy_temp_path $work/ngx-proxy;
  upstream app { server $upstream; keepalive 32; keepalive_requests 10000000; }
NGINX
  for listen in "$@"; do
    log=""
    case $listen in *=*) log="access_log ${listen#*=};"; listen=${listen%%=*} ;; esac
    cat <<NGINX
  server {
    listen $listen;
    $log
$(nginx_proxy_location)
  }
NGINX
  done
}
