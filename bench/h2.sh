#!/usr/bin/env bash
# HTTP/2 with prior knowledge (h2c), wharf vs nginx: h2load through each proxy to the same
# HTTP/1.1 backend (nginx answering "ok", as in ../shared/bench), rounds alternating the
# targets, medians reported. nginx is tuned as in the shared bench (upstream keep-alive,
# buffering off) and serves h2c on its own port (`listen ... http2`), the only way nginx
# 1.22 speaks it. With two or more CPUs, h2load and the backend run on the first and the
# proxies on the second, except for the one-stream case, where everything shares the first
# (as in ../shared/bench's one-connection case: with one request in flight nothing runs in
# parallel, and cross-CPU wake-ups would be most of what is measured). Everything listens
# on 127.0.0.1, on ports the OS picks.
#
#   bash bench/h2.sh [--rounds N]     (needs nginx and h2load: bash ../shared/bench/install.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=5
[[ ${1:-} == --rounds ]] && rounds=$2
for tool in nginx h2load taskset; do
  command -v $tool >/dev/null || { echo "bench/h2.sh: needs $tool (bash ../shared/bench/install.sh)" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
scratch
cpus=$(nproc)
client_cpu=0 proxy_cpu=$((cpus > 1 ? 1 : 0))

backend=$(free_port) nginx_port=$(free_port) wharf_port=$(free_port)
backend_conf "$work/backend" "$backend"
nginx_conf "$work/nginx" "http2_max_requests 1000000;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$nginx_port http2 backlog=4096; location / {
    proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_buffering off; proxy_request_buffering off; } }"
taskset -c $client_cpu nginx -p "$work/backend" -c "$work/backend/nginx.conf"
taskset -c $proxy_cpu nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"

export WHARF_STATE_DIR=$work/wharf/state WHARF_RUNTIME_DIR=$work/wharf/run
taskset -c $proxy_cpu "$root/target/release/wharf" proxy --listen "127.0.0.1:$wharf_port" >"$work/wharf.log" 2>&1 &
pids+=($!)
proxies=("$!" "$(cat "$work/nginx/nginx.pid")" $(pgrep -P "$(cat "$work/nginx/nginx.pid")"))
repin() { for p in "${proxies[@]}"; do taskset -a -p -c "$1" "$p" >/dev/null; done; }
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$wharf_port" && break; sleep 0.1; done
"$root/target/release/wharf" alias bench "127.0.0.1:$backend" >/dev/null 2>&1

# CASE: name|proxy CPU|h2load arguments.
cases=("32 connections x 10 streams|$proxy_cpu|-n 200000 -c 32 -m 10" "1 connection, 1 stream|$client_cpu|-n 20000 -c 1 -m 1")
declare -A rps
echo "h2load $(h2load --version | awk '{print $2}'), nginx $(nginx -v 2>&1 | sed 's/.*\///'), $rounds rounds, client+backend on cpu $client_cpu, proxies on cpu $proxy_cpu (one stream: cpu $client_cpu)"
for round in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    IFS='|' read -r name cpu args <<<"$c"
    repin "$cpu"
    targets=(nginx:$nginx_port wharf:$wharf_port)
    ((round % 2)) || targets=(wharf:$wharf_port nginx:$nginx_port)
    for t in "${targets[@]}"; do
      # shellcheck disable=SC2086
      out=$(taskset -c $client_cpu h2load $args -H ':authority: bench.localhost' "http://127.0.0.1:${t#*:}/")
      grep -q ", 0 failed, 0 errored" <<<"$out" || { echo "bench/h2.sh: ${t%%:*} failed requests:" >&2; echo "$out" >&2; exit 1; }
      rps[$name|${t%%:*}]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '\n| case | nginx req/s | wharf req/s | wharf / nginx | spread (min-max) nginx / wharf |\n|---|---:|---:|---:|---|\n'
for c in "${cases[@]}"; do
  name=${c%%|*}
  n=$(median <<<"${rps[$name|nginx]}") w=$(median <<<"${rps[$name|wharf]}")
  span() { tr ' ' '\n' | grep . | sort -g | sed -n '1p;$p' | paste -sd- | awk -F- '{printf "%.0f-%.0f", $1, $2}'; }
  printf '| %s | %.0f | %.0f | %.2f | %s / %s |\n' "$name" "$n" "$w" "$(echo "$w / $n" | bc -l)" \
    "$(span <<<"${rps[$name|nginx]}")" "$(span <<<"${rps[$name|wharf]}")"
done
