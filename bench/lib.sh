# Sourced by the repo's bench scripts: a scratch directory cleaned up on exit, ports from the
# OS, and throwaway nginx instances (the backend answering "ok", as in ../shared/bench, and
# nginx as a proxy to compare with).

# A free port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx_conf DIR HTTP-BLOCK: DIR/nginx.conf for one daemonised worker that keeps all its files
# in DIR; HTTP-BLOCK goes inside `http { }` (servers, upstreams). Start it with
# `nginx -p DIR -c DIR/nginx.conf`; `nginx_stop_all` stops it.
nginx_conf() {
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 16384; }
http {
  access_log off; tcp_nodelay on; keepalive_timeout 75s; keepalive_requests 1000000;
  client_body_temp_path $1/tmp/body; proxy_temp_path $1/tmp/proxy; fastcgi_temp_path $1/tmp/f;
  uwsgi_temp_path $1/tmp/u; scgi_temp_path $1/tmp/s;
  $2
}
CONF
}

# backend_conf DIR PORT: the backend every proxy is measured against, answering 200 "ok".
backend_conf() {
  nginx_conf "$1" "server { listen 127.0.0.1:$2 backlog=4096; location / { default_type text/plain; return 200 ok; } }"
}

# nginx_stop_all DIR: stop every nginx configured in a subdirectory of DIR.
nginx_stop_all() {
  for conf in "$1"/*/nginx.conf; do
    [[ -e $conf ]] && nginx -p "${conf%/*}" -c "$conf" -s stop 2>/dev/null || true
  done
}

# scratch: a new directory in $work, and an EXIT trap that stops the processes a script adds
# to $pids and every nginx configured under $work, then removes it. Nothing in the trap may
# fail it: a process that already exited is the case where cleaning up matters most.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; nginx_stop_all "$work"; rm -rf "$work"' EXIT
}
