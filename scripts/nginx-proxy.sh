# shellcheck shell=bash
# Sourced by the measurement scripts (compare.sh, instructions.sh): nginx as the reverse proxy
# keyward is compared with, configured the same way in each.

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
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
NGINX
  done
}
