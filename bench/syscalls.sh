#!/usr/bin/env bash
# System calls per Connection: close request, proxy by proxy, counted by strace: as repeatable
# as instructions on a noisy shared machine, and what tells where a new connection's cost goes.
#
# The backend and the peers are ../shared/bench's (lib/backend.sh, targets/nginx.sh and
# targets/haproxy.sh, configured and pinned as in its runs: proxy on CPU 1, backend on CPU 0,
# one worker or thread); wharf runs as bench/run.sh runs it (an alias to the backend). For
# each proxy, after a warm-up, strace attaches to all its processes and threads while a client
# sends N requests one at a time, each on a new connection with `Connection: close` (read to
# the close); then strace detaches and prints the table (`strace -c -f`). With SEQUENCE=1 it
# also prints the calls made for one more such request, in order (`strace -f`).
#
#   bash bench/syscalls.sh [N] [PROXIES]      N = 2000, PROXIES = wharf,nginx,haproxy
#   CONNS=32 bash bench/syscalls.sh 3         wrk, 32 connections for 3 s instead (N seconds,
#                                             requests as wrk counted them): as bench/run.sh's
#                                             close case loads the proxy; less repeatable
#   WHARF_BIN=/path/to/other/wharf bash bench/syscalls.sh    (another build, to compare)
# Everything listens on 127.0.0.1, on ports the OS picks.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$root/../shared/bench
n=${1:-2000}
proxies=${2:-wharf,nginx,haproxy}
me=bench/syscalls.sh tools="strace python3 nginx taskset" apt="strace nginx haproxy"
# shellcheck source=bench/side-by-side.sh
source "$root/bench/side-by-side.sh"

# requests PORT N: N requests, each on its own connection, one at a time; fails on any answer
# but 200.
requests() {
  python3 - "$1" "$2" "$BENCH_HOST" <<'PY'
import socket, sys
port, n, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"bench/syscalls.sh: unexpected answer {got[:80]!r}")
PY
}

# load PORT N: the counted load, one at a time or (CONNS > 1) wrk's; its request count in
# $BENCH_WORK/done.
load() {
  if ((${CONNS:-1} <= 1)); then
    requests "$1" "$2"
    echo "$2" >"$BENCH_WORK/done"
    return
  fi
  wrk -t 1 -c "$CONNS" -d "$2" -H "Host: $BENCH_HOST" -H 'Connection: close' "http://127.0.0.1:$1/" \
    >"$BENCH_WORK/wrk.out"
  ! grep -q 'Non-2xx' "$BENCH_WORK/wrk.out" || { echo "bench/syscalls.sh: requests failed" >&2; exit 1; }
  awk '/requests in/ {print $1}' "$BENCH_WORK/wrk.out" >"$BENCH_WORK/done"
}

# traced OUT ARGS -- CMD: run CMD with strace ARGS attached to every thread of the group.
traced() {
  local out=$1 pid p tasks=0 log=$1.log
  shift
  local -a attach=()
  while read -r pid; do
    for p in $(bench_session_pids "$pid"); do
      attach+=(-p "$p")
      tasks=$((tasks + $(ls /proc/"$p"/task | wc -l)))
    done
  done <"$BENCH_WORK/pids/$BENCH_GROUP"
  local -a args=()
  while [[ $1 != -- ]]; do args+=("$1"); shift; done
  shift
  strace -f -o "$out" "${args[@]}" "${attach[@]}" 2>"$log" &
  local tracer=$!
  # strace says "Process N attached" for each thread; bounded.
  for _ in $(seq 100); do
    (($(grep -c attached "$log") >= tasks)) && break
    sleep 0.1
  done
  (($(grep -c attached "$log") >= tasks)) || { echo "bench/syscalls.sh: strace did not attach" >&2; exit 1; }
  "$@"
  kill -INT "$tracer"
  wait "$tracer" 2>/dev/null || true
}

IFS=, read -ra list <<<"$proxies"
for proxy in "${list[@]}"; do
  start_target "$proxy"
  requests "$port" 200
  traced "$BENCH_WORK/$proxy.count" -c -- load "$port" "$n"
  done=$(cat "$BENCH_WORK/done")
  # strace -c's table: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v n="$done" -v proxy="$proxy" -v conns="${CONNS:-1}" 'NR > 2 && $1 !~ /^-/ && $NF != "total" {
      calls[$NF] = $4; errs[$NF] = (NF == 6) ? $5 : 0; total += $4; order[++k] = $NF
    }
    END {
      printf "## %s: %d Connection: close requests, %d at a time: %.2f system calls per request\n", proxy, n, conns, total / n
      for (i = 1; i <= k; i++) {
        s = order[i]
        printf "%-16s %8.2f%s\n", s, calls[s] / n, errs[s] ? sprintf("  (%.2f failed)", errs[s] / n) : ""
      }
    }' "$BENCH_WORK/$proxy.count"
  if [[ ${SEQUENCE:-0} == 1 ]]; then
    echo "### one request, in order"
    traced "$BENCH_WORK/$proxy.seq" -- requests "$port" 1
    cat "$BENCH_WORK/$proxy.seq"
  fi
  bench_stop "$BENCH_GROUP"
  echo
done
