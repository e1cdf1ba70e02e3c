# shellcheck shell=bash
# Sourced by the measurement scripts (compare.sh, compare-authz.sh, compare-builds.sh,
# instructions.sh, load.sh, load-edge.sh): the pieces they share — free ports, a process's CPU
# time, keyward's credentials for the load, nginx as the reverse proxy keyward is compared
# with, configured the same way in each, and the measurement loop of compare.sh and
# compare-authz.sh (each target measured by wrk alone, the other processes paused).

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

# Waits until URL answers 2xx (10 s at most), or ends the script. Usage: ready URL
ready() { for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

# Ends the processes of the global array `pids` and removes the global `$work` directory, for
# `trap stop_all EXIT`. A paused process would not act on SIGTERM: each is resumed first.
# shellcheck disable=SC2154 # pids and work are the caller's
stop_all() {
  kill -CONT "${pids[@]}" 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

# Resumes (SIGCONT) each PID among KEEP (space-separated) and pauses (SIGSTOP) every other, so
# that the processes not measured take no core from the one measured.
# Usage: pause_all_but "KEEP" PID...
pause_all_but() {
  local p keep=" $1 "
  shift
  for p in "$@"; do
    case $keep in *" $p "*) kill -CONT "$p" ;; *) kill -STOP "$p" ;; esac
  done
}

# One wrk run (wrk -t1 -cCONNECTIONS -dSECONDS WRK_ARGS...) and the CPU time the processes PIDS
# (space-separated) spent meanwhile. Prints "<req/s> <CPU µs per request>"; a run with answers
# other than 2xx counts 0 req/s, and says so on stderr naming URL.
# Usage: wrk_cpu SECONDS CONNECTIONS "PIDS" URL WRK_ARGS...
wrk_cpu() {
  local duration=$1 connections=$2 measured=$3 url=$4 before=0 after=0 out p hz
  shift 4
  hz=$(getconf CLK_TCK)
  for p in $measured; do before=$((before + $(cpu_ticks "$p"))); done
  out=$(wrk -t1 -c"$connections" -d"${duration}s" "$@")
  for p in $measured; do after=$((after + $(cpu_ticks "$p"))); done
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" -v url="$url" '
    /requests in/ {n=$1} /Requests\/sec/ {r=$2} /Non-2xx/ {bad=$NF}
    END {
      if (bad > 0) {printf("%s: %d of %d answers not 2xx, counted as 0 req/s\n", url, bad, n) > "/dev/stderr"; r = 0}
      printf "%s %.2f\n", r, t * 1000000 / hz / n
    }'
}

# The median of the numbers on stdin, one a line.
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# ROUNDS interleaved rounds: in each, every TARGET in turn is left alone (the caller's
# `alone TARGET` pauses what it does not need) and measured (the caller's `measure TARGET`
# prints "<req/s> <CPU µs per request>"), into the caller's global associative arrays
# rps[TARGET,ROUND] and cpu[TARGET,ROUND]; each round's figures go to stderr as one line.
# Usage: measure_rounds ROUNDS TARGET...
# shellcheck disable=SC2154 # rps and cpu are the caller's
measure_rounds() {
  local rounds=$1 round t line
  shift
  for round in $(seq "$rounds"); do
    line="round $round:"
    for t in "$@"; do
      alone "$t"
      read -r "rps[$t,$round]" "cpu[$t,$round]" <<<"$(measure "$t")"
      line+=" $t ${rps[$t,$round]} (${cpu[$t,$round]} µs)"
    done
    echo "$line" >&2
  done
}
