#!/usr/bin/env bash
# What a 1 MiB body costs through wharf, nginx and HAProxy, counted rather than timed (the
# machine is shared and req/s moves by ±10-20 %): per response (or request body), the proxy's
# CPU time (/proc/PID/stat utime + stime over a fixed number of requests), its voluntary
# context switches (wakeups), the backend's and the client's, and, in a second pass under
# strace, its system calls: how many of each kind and how many bytes each moved.
#
# Started as ../shared/bench/run.sh starts them: the backend nginx (lib/backend.sh, GET /1m is
# a 1 MiB file by sendfile, POST / answers "ok"), nginx and HAProxy from targets/*.sh, wharf
# with an alias; the proxy on the second CPU, client and backend on the first. The client is
# h2load over HTTP/1.1: a fixed number of requests on keep-alive connections.
#
#   bash bench/bodies.sh [REQUESTS [CONNS]]     (default 2000 8, 500 of them under strace;
#                                               needs nginx haproxy h2load strace)
#   BODIES_TARGETS=wharf BODIES_CASES=get WHARF_BIN=/path/wharf bash bench/bodies.sh
#   (cases: get, a 1 MiB response; post, a 1 MiB request body answered "ok")
# Everything listens on 127.0.0.1, on ports the OS picks; everything started is stopped.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${BENCH_SHARED:-$root/../shared/bench}
[[ -d $shared/lib ]] || { echo "bench/bodies.sh: needs ../shared/bench beside the repository (or BENCH_SHARED)" >&2; exit 1; }
for tool in nginx haproxy h2load strace taskset; do
  command -v $tool >/dev/null || { echo "bench/bodies.sh: needs $tool (bash ../shared/bench/install.sh; apt-get install strace)" >&2; exit 1; }
done
requests=${1:-2000} conns=${2:-8}
traced=$((requests < 500 ? requests : 500))
targets=${BODIES_TARGETS:-wharf,nginx,haproxy} cases=${BODIES_CASES:-get,post}
if [[ -z ${WHARF_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi
wharf=${WHARF_BIN:-$root/target/release/wharf}

# shellcheck source=/dev/null
source "$shared/lib/common.sh"
# shellcheck source=/dev/null
source "$shared/lib/backend.sh"
# shellcheck source=/dev/null
source "$shared/targets/nginx.sh"
# shellcheck source=/dev/null
source "$shared/targets/haproxy.sh"
BENCH_WORK=$(mktemp -d)
export BENCH_WORK BENCH_HOST=auth.localhost BENCH_BACKEND_ADDR=127.0.0.1 BENCH_PROXY_NCPU=1
export BENCH_CLIENT_CPUS=0 BENCH_BACKEND_CPUS=0 BENCH_PROXY_CPUS=1
trap 'bench_stop_all; rm -rf "$BENCH_WORK"' EXIT
BENCH_BACKEND_PORT=$(bench_free_port)
export BENCH_BACKEND_PORT
backend_start "$BENCH_BACKEND_PORT"
head -c 1048576 /dev/urandom >"$BENCH_WORK/up.bin"

target_wharf_start() {
  local dir=$BENCH_WORK/t-wharf
  mkdir -p "$dir"
  WHARF_STATE_DIR=$dir/state WHARF_RUNTIME_DIR=$dir/run \
    bench_spawn "$BENCH_GROUP" proxy "$wharf" proxy --listen "127.0.0.1:$1"
  bench_wait_port "$1" 30 "$BENCH_GROUP"
  WHARF_STATE_DIR=$dir/state WHARF_RUNTIME_DIR=$dir/run \
    "$wharf" alias auth "$BENCH_BACKEND_ADDR:$BENCH_BACKEND_PORT" >/dev/null
}

# The live PIDs of a group's sessions (nginx: master and worker).
group_pids() { local pid; while read -r pid; do bench_session_pids "$pid"; done <"$BENCH_WORK/pids/$1"; }
# Sum of utime+stime (clock ticks) and of voluntary context switches (all threads) over PIDs.
cpu_ticks() { local p t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
switches() { local p; for p in "$@"; do cat "/proc/$p"/task/*/status; done | awk '/^voluntary_ctxt_switches/ {t += $2} END {print t}'; }

# load PORT CASE N [FILE]: N requests of CASE on $conns keep-alive connections, checked; the
# client's user and system seconds and voluntary context switches into FILE.
load() {
  local args=(--h1 -n "$3" -c "$conns" -H ":authority: $BENCH_HOST")
  if [[ $2 == post ]]; then
    args+=(-d "$BENCH_WORK/up.bin" "http://127.0.0.1:$1/")
  else
    args+=("http://127.0.0.1:$1/1m")
  fi
  local out time=()
  [[ -n ${4:-} ]] && time=(/usr/bin/time -f '%U %S %w' -o "$4")
  out=$("${time[@]}" taskset -c "$BENCH_CLIENT_CPUS" h2load "${args[@]}" 2>&1)
  grep -q "status codes: $3 2xx" <<<"$out" || { echo "bench/bodies.sh: $2 through port $1 failed:" >&2; echo "$out" >&2; exit 1; }
}

hz=$(getconf CLK_TCK)
rows=() traces=()
IFS=, read -r -a target_list <<<"$targets"
IFS=, read -r -a case_list <<<"$cases"
for t in "${target_list[@]}"; do
  for c in "${case_list[@]}"; do
    BENCH_GROUP=$t port=$(bench_free_port)
    "target_${t}_start" "$port"
    bench_wait_port "$port" 30 "$BENCH_GROUP"
    load "$port" "$c" 100 # warm-up: connections, pools and buffers as in steady state
    mapfile -t proxy < <(group_pids "$t")
    mapfile -t backend < <(group_pids backend)
    p0=$(cpu_ticks "${proxy[@]}") s0=$(switches "${proxy[@]}")
    b0=$(cpu_ticks "${backend[@]}") bs0=$(switches "${backend[@]}")
    start=$(date +%s%N)
    load "$port" "$c" "$requests" "$BENCH_WORK/client"
    end=$(date +%s%N)
    ss -tmi "( sport = :$port )" >"$BENCH_WORK/ss-$t" 2>/dev/null || true
    p1=$(cpu_ticks "${proxy[@]}") s1=$(switches "${proxy[@]}")
    b1=$(cpu_ticks "${backend[@]}") bs1=$(switches "${backend[@]}")
    read -r cu cs cw <"$BENCH_WORK/client"
    rows+=("$(python3 -c '
import sys
t, c, n, hz, p, s, b, bs, cu, cs, cw, secs = sys.argv[1:]
n, hz = int(n), int(hz)
us = lambda ticks: int(ticks) * 1e6 / hz / n
print(f"| {t} | {c} | {us(p):.0f} | {int(s)/n:.1f} | {us(b):.0f} | {int(bs)/n:.1f} | {(float(cu)+float(cs))*1e6/n:.0f} | {int(cw)/n:.1f} | {n * 1e9 / int(secs):.0f} |")
' "$t" "$c" "$requests" "$hz" $((p1 - p0)) $((s1 - s0)) $((b1 - b0)) $((bs1 - bs0)) "$cu" "$cs" "$cw" $((end - start)))")
    # The same load again under strace (slower: its counts, not its time); BODIES_STRACE=0
    # skips it.
    if [[ ${BODIES_STRACE:-1} == 0 ]]; then bench_stop "$t"; continue; fi
    strace_args=()
    for p in "${proxy[@]}"; do strace_args+=(-p "$p"); done
    strace -f -qq -o "$BENCH_WORK/trace-$t-$c" "${strace_args[@]}" &
    tracer=$!
    sleep 1 # strace attaches before it prints anything: no signal to wait for
    load "$port" "$c" "$traced"
    kill -INT "$tracer"
    wait "$tracer" || true
    traces+=("$t $c $BENCH_WORK/trace-$t-$c")
    bench_stop "$t"
  done
done

echo "## Per 1 MiB body ($requests requests, $conns keep-alive connections; proxy on CPU $BENCH_PROXY_CPUS, client and backend on CPU $BENCH_CLIENT_CPUS)"
echo
echo "| proxy | case | proxy CPU µs | proxy wakeups | backend CPU µs | backend wakeups | client CPU µs | client wakeups | req/s (noisy) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "System calls per body, under strace ($traced requests; calls, and the mean size of those that moved bytes):"
echo
for tr in "${traces[@]}"; do
  read -r t c file <<<"$tr"
  python3 - "$t" "$c" "$traced" "$file" <<'PY'
import re, sys, collections
t, case, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
IO = {'read', 'recvfrom', 'readv', 'recvmsg', 'write', 'writev', 'sendto', 'sendmsg',
      'splice', 'sendfile'}
calls = collections.Counter(); moved = collections.Counter(); size = collections.Counter()
again = collections.Counter(); pipe_sizes = set(); pending = {}
for line in open(path, errors='replace'):
    pid, _, rest = line.rstrip('\n').partition(' ')
    rest = rest.lstrip()
    if rest.startswith('<...'):
        name = rest.split()[1]
        rest = pending.pop(pid, '') + rest
    elif rest.endswith('<unfinished ...>'):
        pending[pid] = rest
        continue
    else:
        name = rest.split('(', 1)[0]
    if not re.fullmatch(r'[a-z0-9_]+', name):
        continue
    calls[name] += 1
    m = re.search(r'\)\s+= (.*)$', rest)
    result = m.group(1) if m else ''
    if 'F_SETPIPE_SZ' in rest or 'F_GETPIPE_SZ' in rest:
        pipe_sizes.add(result.split()[0] if result else '?')
    value = result.split()[0] if result else ''
    if name in IO and value.isdigit() and int(value) > 0:
        moved[name] += 1
        size[name] += int(value)
    if 'EAGAIN' in result:
        again[name] += 1
total = sum(calls.values())
parts = []
for name, count in calls.most_common():
    if count / n < 0.05:
        continue
    part = f"{name} {count / n:.1f}"
    if moved[name]:
        part += f" ({size[name] / moved[name] / 1024:.1f} KiB)"
    if again[name]:
        part += f" [{again[name] / n:.1f} EAGAIN]"
    parts.append(part)
pipes = f"; pipe size set: {', '.join(sorted(pipe_sizes))}" if pipe_sizes else ""
print(f"- {t}, {case}: {total / n:.1f} calls: " + ", ".join(parts) + pipes)
PY
done
