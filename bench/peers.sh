#!/usr/bin/env bash
# What a Connection: close request makes the proxy's PEERS do, proxy by proxy: the client (wrk)
# and the backend share CPU 0 in ../shared/bench's runs, so their CPU per request (and the
# kernel's softirq on that CPU) sets the rate there once the proxy has CPU to spare.
#
# For each proxy (started, configured and pinned as bench/syscalls.sh does: proxy on CPU 1,
# backend and client on CPU 0):
#   1. packets: tcpdump on lo while PACKETS requests go one at a time, each on a new connection;
#      per connection, the segments each side sent (SYN, data, pure ACK, FIN, RST), whether the
#      FIN rode on the last data, who sent the first FIN (that side keeps the TIME_WAIT), and on
#      the upstream side how many connections were opened and how many segments crossed;
#   2. CPU: wrk -t1 -c32 with `Connection: close` for SECONDS (as the timed close case), and
#      per request: wrk's and the backend's CPU (utime+stime, /proc/PID/stat), their
#      voluntary context switches (each one a sleep and a wake-up), the proxy's CPU, and the
#      softirq time of each CPU (/proc/stat).
#
#   bash bench/peers.sh [SECONDS] [PROXIES]    SECONDS = 5, PROXIES = wharf,nginx,haproxy
#   PACKETS=50 ...; WHARF_BIN=/path/to/other/wharf ... (another build, to compare)
# CPU numbers are timings: take them on a quiet machine (the script prints the other
# processes' CPU share during each run; trust runs where it is near 0). Packet counts are not.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$root/../shared/bench
secs=${1:-5}
proxies=${2:-wharf,nginx,haproxy}
packets=${PACKETS:-50}
me=bench/peers.sh tools="tcpdump wrk python3 nginx taskset" apt="tcpdump wrk nginx haproxy"
# shellcheck source=bench/side-by-side.sh
source "$root/bench/side-by-side.sh"

group_pids() {
  local pid
  while read -r pid; do bench_session_pids "$pid"; done <"$BENCH_WORK/pids/$1" | paste -sd,
}

IFS=, read -ra list <<<"$proxies"
for proxy in "${list[@]}"; do
  start_target "$proxy"
  echo "## $proxy"
  python3 "$root/bench/peers.py" --port "$port" --backend-port "$BENCH_BACKEND_PORT" \
    --host "$BENCH_HOST" --packets "$packets" --seconds "$secs" --work "$BENCH_WORK" \
    --proxy-pids "$(group_pids "$BENCH_GROUP")" --backend-pids "$(group_pids backend)"
  bench_stop "$BENCH_GROUP"
  echo
done
