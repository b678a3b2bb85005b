#!/usr/bin/env bash
# Instructions the proxy executes per request, counted by callgrind: repeatable to a fraction
# of a percent on a noisy shared machine, where req/s moves by ±10-20 % between runs. Use it
# to see what a change to the request path costs before benchmarking it.
#
# The proxy runs under valgrind with one route to an nginx answering "ok" (as in
# ../shared/bench); after a warm-up, counters are zeroed and each case is measured alone:
#   http1  wrk, 1 connection, keep-alive GETs (the express lane)
#   close  wrk, 1 connection at a time, Connection: close GETs (the lane, plus each
#          connection's accept, set-up and teardown)
#   http2  h2load, 1 connection, 1 stream, GETs (hyper's HTTP/2 server, then wharf's pool)
# Everything listens on 127.0.0.1, on ports the OS picks.
#
#   bash bench/instructions.sh     (needs valgrind, nginx, wrk, h2load)
#   WHARF_BIN=/path/to/other/wharf bash bench/instructions.sh     (another build, to compare)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
for tool in valgrind callgrind_control callgrind_annotate nginx wrk h2load curl; do
  command -v $tool >/dev/null || { echo "bench/instructions.sh: needs $tool (apt-get install valgrind nginx wrk nghttp2-client curl)" >&2; exit 1; }
done
if [[ -z ${WHARF_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi
wharf=${WHARF_BIN:-$root/target/release/wharf}
scratch
backend=$(free_port) port=$(free_port)

backend_conf "$work/backend" "$backend"
nginx -p "$work/backend" -c "$work/backend/nginx.conf"

export WHARF_STATE_DIR=$work/state WHARF_RUNTIME_DIR=$work/run
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$wharf" proxy --listen "127.0.0.1:$port" >"$work/wharf.log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 300); do curl -s -o /dev/null "127.0.0.1:$port" && break; sleep 0.1; done
"$wharf" alias bench "127.0.0.1:$backend" >/dev/null

h2() { h2load -n "$1" -c 1 -m 1 -H ':authority: bench.localhost' "http://127.0.0.1:$port/"; }
h1() { local d=$1; shift; wrk -t 1 -c 1 -d "$d" -H 'Host: bench.localhost' "$@" "http://127.0.0.1:$port/"; }
# Warm-up: connections, pools and caches as in steady state.
h2 200 >/dev/null
h1 1 >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1

h2_requests=5000
h2 $h2_requests | grep -q "$h2_requests succeeded" || { echo "bench/instructions.sh: HTTP/2 requests failed" >&2; exit 1; }
callgrind_control -d http2 "$pid" >/dev/null 2>&1
out=$(h1 3)
h1_requests=$(awk '/requests in/ {print $1}' <<<"$out")
grep -q 'Non-2xx' <<<"$out" && { echo "bench/instructions.sh: HTTP/1.1 requests failed" >&2; exit 1; }
callgrind_control -d http1 "$pid" >/dev/null 2>&1
out=$(h1 3 -H 'Connection: close')
close_requests=$(awk '/requests in/ {print $1}' <<<"$out")
grep -q 'Non-2xx' <<<"$out" && { echo "bench/instructions.sh: Connection: close requests failed" >&2; exit 1; }
callgrind_control -d close "$pid" >/dev/null 2>&1

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
dumps=("$work"/callgrind.out.*)
printf '| case | requests | instructions per request |\n|---|---:|---:|\n'
printf '| HTTP/1.1 keep-alive (express lane) | %d | %d |\n' "$h1_requests" $(($(total "${dumps[1]}") / h1_requests))
printf '| HTTP/1.1 Connection: close | %d | %d |\n' "$close_requests" $(($(total "${dumps[2]}") / close_requests))
printf '| HTTP/2, one stream | %d | %d |\n' "$h2_requests" $(($(total "${dumps[0]}") / h2_requests))
echo "(for a profile: keep the dumps with KEEP=dir; callgrind_annotate --inclusive=yes FILE)"
[[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$work"/callgrind.out.* "$KEEP"/
exit 0
