#!/usr/bin/env bash
# Memory per idle keep-alive client connection (issue 19 item 3): wharf, nginx and HAProxy,
# each in turn, with one route to an nginx backend answering "ok" and the tuning of the
# side-by-side run (../shared/bench/targets/{nginx,haproxy}.sh, sourced as they are). A client
# opens N connections that each make one request and then stay open and idle; the proxy's RSS
# (summed over its processes: nginx's master and worker) is read before the first and while
# all N are idle, 1 s after the last answer (with the connections to the instance the proxy
# still holds: wharf keeps each client's for 4 s, `upstream_idle`). The client then checks
# that every connection is still open (wharf closes idle clients after 15 s, nginx and
# HAProxy at 75 s: on a busy machine, opening them all can take long enough to matter).
# Proxies run on one CPU (the last one allowed), client and backend on the others, as in
# bench/run.sh. Everything is on 127.0.0.1, on ports the OS picks, and stopped on exit.
#
#   bash bench/idle.sh                     (needs nginx, haproxy, python3, curl)
#   N=5000 TARGETS=wharf bash bench/idle.sh
#   WHARF_BIN=/path/to/other/wharf bash bench/idle.sh
#
# N defaults to 9000: each client connection takes a descriptor in the proxy, and wharf and
# HAProxy count one to the instance beside each (wharf admits at most half its open-file limit
# as clients; HAProxy's `maxconn 9000` of the side-by-side run), so with this machine's hard
# limit of 20 000 descriptors 10 000 idle clients do not fit in any of them alike.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
shared=$root/../shared/bench
for tool in nginx haproxy python3 curl taskset; do
  command -v $tool >/dev/null || { echo "bench/idle.sh: needs $tool (apt-get install nginx haproxy python3 curl util-linux)" >&2; exit 1; }
done
[[ -r $shared/targets/nginx.sh ]] || { echo "bench/idle.sh: needs ../shared/bench beside the repository" >&2; exit 1; }
if [[ -z ${WHARF_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi
wharf=${WHARF_BIN:-$root/target/release/wharf}
n=${N:-9000}
targets=${TARGETS:-wharf,nginx,haproxy}
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > n + 200)) || { echo "bench/idle.sh: N=$n needs an open-file limit above $((n + 200)) (it is $(ulimit -n))" >&2; exit 1; }

scratch
cpus=($(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))'))
proxy_cpu=${cpus[-1]}
others=$(IFS=,; echo "${cpus[*]:0:${#cpus[@]}-1}")
others=${others:-$proxy_cpu}

# What the side-by-side target files expect from ../shared/bench/run.sh.
export BENCH_WORK=$work BENCH_GROUP=idle BENCH_HOST=auth.localhost BENCH_BACKEND_ADDR=127.0.0.1
export BENCH_PROXY_NCPU=1
mkdir -p "$work/logs"
BENCH_BACKEND_PORT=$(free_port)
export BENCH_BACKEND_PORT
# bench_spawn GROUP ROLE CMD...: in a session of its own (nginx's workers stay in it), on the
# proxy's CPU; its PID is the proxy's, and the EXIT trap stops its process group.
bench_spawn() {
  shift 2
  setsid taskset -c "$proxy_cpu" "$@" >>"$work/logs/proxy.log" 2>&1 </dev/null &
  proxy=$!
  pids+=("$proxy")
}
# The trap of `scratch`, plus the proxies' process groups.
trap 'for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; nginx_stop_all "$work"; rm -rf "$work"' EXIT
# shellcheck source=/dev/null
source "$shared/targets/nginx.sh"
# shellcheck source=/dev/null
source "$shared/targets/haproxy.sh"

backend_conf "$work/backend" "$BENCH_BACKEND_PORT"
taskset -c "$others" nginx -p "$work/backend" -c "$work/backend/nginx.conf"

target_wharf_start() {
  mkdir -p "$work/t-wharf"
  export WHARF_STATE_DIR=$work/t-wharf/state WHARF_RUNTIME_DIR=$work/t-wharf/run
  bench_spawn idle proxy "$wharf" proxy --listen "127.0.0.1:$1"
}
target_wharf_setup() { "$wharf" alias auth "127.0.0.1:$BENCH_BACKEND_PORT" >/dev/null; }

# rss PID: kB of resident memory of PID and its descendants.
rss() {
  local all=("$1") i=0 kb=0 p
  while ((i < ${#all[@]})); do
    mapfile -t -O "${#all[@]}" all < <(ps -o pid= --ppid "${all[i]}" | tr -d ' ')
    i=$((i + 1))
  done
  for p in "${all[@]}"; do
    kb=$((kb + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$kb"
}

# The client: N connections, at most 256 connecting at once, each one GET with one answer;
# then "ready" and, on each line read from stdin, "open K": how many are still open.
client='
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: auth.localhost\r\n\r\n"
async def one(gate, conns):
    async with gate:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        length = [int(l.split(b":")[1]) for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
        await asyncio.wait_for(r.readexactly(length[0]), 30)
        conns.append((r, w))
async def main():
    gate, conns = asyncio.Semaphore(256), []
    await asyncio.gather(*(one(gate, conns) for _ in range(n)))
    print("ready", len(conns), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        await asyncio.sleep(0.2)
        print("open", sum(not r.at_eof() and not w.is_closing() for r, w in conns), flush=True)
asyncio.run(main())
'

printf '| proxy | idle connections | RSS before | RSS with them idle | KiB per idle connection |\n|---|---:|---:|---:|---:|\n'
for t in ${targets//,/ }; do
  port=$(free_port)
  "target_${t}_start" "$port"
  for _ in $(seq 150); do curl -s -o /dev/null -H "Host: $BENCH_HOST" "127.0.0.1:$port/" && break; sleep 0.1; done
  [[ $(type -t "target_${t}_setup") == function ]] && "target_${t}_setup"
  [[ $(curl -s -H "Host: $BENCH_HOST" "127.0.0.1:$port/") == ok ]] || { echo "bench/idle.sh: $t does not route $BENCH_HOST (see $work/logs)" >&2; exit 1; }
  sleep 1
  before=$(rss "$proxy")
  coproc CLIENT { taskset -c "$others" python3 -c "$client" "$port" "$n"; }
  read -r -t 120 -u "${CLIENT[0]}" word count || { echo "bench/idle.sh: $t: the client did not finish in 120 s" >&2; exit 1; }
  [[ $word == ready && $count == "$n" ]] || { echo "bench/idle.sh: $t: client said $word $count" >&2; exit 1; }
  sleep 1
  idle=$(rss "$proxy")
  echo >&"${CLIENT[1]}"
  read -r -t 30 -u "${CLIENT[0]}" word open || true
  exec {CLIENT[1]}>&-
  wait "$CLIENT_PID" 2>/dev/null || true
  [[ ${open:-0} == "$n" ]] || { echo "bench/idle.sh: $t: only ${open:-?} of $n connections were still open" >&2; exit 1; }
  awk -v t="$t" -v n="$n" -v b="$before" -v i="$idle" 'BEGIN {
    printf "| %s | %d | %.1f MiB | %.1f MiB | %.2f |\n", t, n, b/1024, i/1024, (i-b)/n }'
  kill -- "-$proxy" 2>/dev/null || true
  wait "$proxy" 2>/dev/null || true
done
