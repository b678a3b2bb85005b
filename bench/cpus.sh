#!/usr/bin/env bash
# Which CPU limits keep-alive throughput: wrk through direct, nginx and wharf at several
# connection counts, with each CPU's busy share and busy time per request read from
# /proc/stat. As in ../shared/bench, wrk and the backend (nginx answering "ok") share the
# first CPU and the proxies run on the second; nginx is tuned the same way (upstream
# keep-alive, buffering off). Rounds rotate the order of the targets; medians are reported.
# Everything listens on 127.0.0.1, on ports the OS picks.
#
#   bash bench/cpus.sh [--rounds N] [--duration S] [--conns "4 32 128"]
#   (needs two CPUs, nginx and wrk: bash ../shared/bench/install.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=5 duration=4 conns="4 32 128"
while (($#)); do
  case $1 in
    --rounds) rounds=$2 ;;
    --duration) duration=$2 ;;
    --conns) conns=$2 ;;
    *) echo "bench/cpus.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
for tool in nginx wrk taskset; do
  command -v $tool >/dev/null || { echo "bench/cpus.sh: needs $tool (bash ../shared/bench/install.sh)" >&2; exit 1; }
done
(($(nproc) >= 2)) || { echo "bench/cpus.sh: needs two CPUs (client and proxy apart)" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
scratch

backend=$(free_port) nginx_port=$(free_port) wharf_port=$(free_port)
backend_conf "$work/backend" "$backend"
nginx_conf "$work/nginx" "upstream backend { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$nginx_port backlog=4096; location / {
    proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_buffering off; proxy_request_buffering off; } }"
taskset -c 0 nginx -p "$work/backend" -c "$work/backend/nginx.conf"
taskset -c 1 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
export WHARF_STATE_DIR=$work/wharf/state WHARF_RUNTIME_DIR=$work/wharf/run
taskset -c 1 "$root/target/release/wharf" proxy --listen "127.0.0.1:$wharf_port" >"$work/wharf.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$wharf_port" && break; sleep 0.1; done
curl -s -o /dev/null "127.0.0.1:$wharf_port" || { echo "bench/cpus.sh: wharf did not start:" >&2; cat "$work/wharf.log" >&2; exit 1; }
"$root/target/release/wharf" alias bench "127.0.0.1:$backend" >/dev/null 2>&1

# busy: CPU 0's and CPU 1's busy and total jiffies, from /proc/stat (user to steal; guest time
# is already in user and nice; steal counts as busy, as the CPU was not free).
busy() { awk '/^cpu[01] / {t=0; for (i=2;i<=9;i++) t+=$i; printf "%d %d ", t-$5-$6, t}' /proc/stat; }
# One run: "req/s p50 p99 busy0% busy1% µs0/req µs1/req" (latencies in µs).
measure() {
  local before after out
  before=$(busy)
  out=$(taskset -c 0 wrk -t1 -c"$2" -d"$duration" --latency -H 'Host: bench.localhost' "http://127.0.0.1:$1/" 2>&1) &&
    ! grep -q 'Non-2xx\|Socket errors' <<<"$out" ||
    { echo "bench/cpus.sh: failed requests on port $1:" >&2; echo "$out" >&2; exit 1; }
  after=$(busy)
  awk -v b="$before" -v a="$after" -v hz="$(getconf CLK_TCK)" '
    function us(v) { return v ~ /ms$/ ? v * 1000 : v ~ /us$/ ? v + 0 : v * 1e6 }
    /requests in/ { n = $1 } /Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) }
    END { split(b, x, " "); split(a, y, " ")
      printf "%.0f %.0f %.0f %.1f %.1f %.2f %.2f\n", rps, p50, p99,
        100 * (y[1] - x[1]) / (y[2] - x[2]), 100 * (y[3] - x[3]) / (y[4] - x[4]),
        (y[1] - x[1]) / hz * 1e6 / n, (y[3] - x[3]) / hz * 1e6 / n }' <<<"$out"
}

targets=(direct:$backend nginx:$nginx_port wharf:$wharf_port)
declare -A runs
echo "wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'), nginx $(nginx -v 2>&1 | sed 's/.*\///'), $rounds rounds of ${duration} s; wrk and backend on cpu 0, proxies on cpu 1"
for round in $(seq "$rounds"); do
  for c in $conns; do
    for k in 0 1 2; do
      t=${targets[$(((k + round - 1) % 3))]}
      runs[$c|${t%%:*}]+="$(measure "${t#*:}" "$c")"$'\n'
    done
  done
done

# median COLUMN: the median of one column of a target's runs.
median() { awk -v c="$1" 'NF {print $c}' | sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '\n| conns | target | req/s | / direct | p50 µs | p99 µs | cpu 0 busy | cpu 1 busy | cpu 0 µs/req | cpu 1 µs/req |\n'
printf '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for c in $conns; do
  direct=$(median 1 <<<"${runs[$c|direct]}")
  for t in direct nginx wharf; do
    r=${runs[$c|$t]}
    rps=$(median 1 <<<"$r")
    printf '| %s | %s | %.0f | %.2f | %.0f | %.0f | %.1f %% | %.1f %% | %.2f | %.2f |\n' "$c" "$t" "$rps" \
      "$(echo "$rps / $direct" | bc -l)" "$(median 2 <<<"$r")" "$(median 3 <<<"$r")" \
      "$(median 4 <<<"$r")" "$(median 5 <<<"$r")" "$(median 6 <<<"$r")" "$(median 7 <<<"$r")"
  done
done
