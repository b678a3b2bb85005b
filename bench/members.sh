#!/usr/bin/env bash
# The cost of balancing (issue 18): req/s through one name with one member and through one
# with three, on the same proxy in the same run, in alternating rounds. The members are one
# nginx answering "ok" (the backend of ../shared/bench) on three ports; wrk keep-alive with 50
# connections, and with one. Members are registered as their `wharf run`s would, each on its own control
# connection, held open by a small Python script. Everything listens on 127.0.0.1 on ports the
# OS picks; everything started is stopped.
# Usage: bash bench/members.sh [ROUNDS] [SECONDS]   (default 3 rounds of 5 s per case)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=${1:-3} seconds=${2:-5}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
command -v wrk >/dev/null && command -v nginx >/dev/null ||
  { echo "bench/members.sh: needs wrk and nginx (bash ../shared/bench/install.sh)" >&2; exit 1; }
scratch
export WHARF_STATE_DIR=$work/state WHARF_RUNTIME_DIR=$work/run

# One nginx listening on three ports: the members differ in their socket only, so what the
# rows differ by is wharf's balancing (three nginx processes would add their own wake-ups).
backends=("$(free_port)" "$(free_port)" "$(free_port)")
listen=$(printf 'listen 127.0.0.1:%s backlog=4096; ' "${backends[@]}")
nginx_conf "$work/backend" "server { $listen location / { default_type text/plain; return 200 ok; } }"
nginx -p "$work/backend" -c "$work/backend/nginx.conf"
proxy=$(free_port)
"$root/target/release/wharf" proxy --listen "127.0.0.1:$proxy" >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [[ -S $WHARF_RUNTIME_DIR/control.sock ]] && break; sleep 0.1; done

cat >"$work/members.py" <<'PY'
"""Register `one` (a single server) and `three` (three members) and hold the connections open."""
import json, os, socket, sys, time
control, ports = sys.argv[1], sys.argv[2:]
held = []
def register(name, member, port):
    s = socket.socket(socket.AF_UNIX)
    s.connect(control)
    instance = {"name": name, "pid": os.getpid(), "mode": "env", "state": "ready",
                "sockets": {"http": f"127.0.0.1:{port}"}}
    if member:
        instance["member"] = member
    s.sendall((json.dumps({"op": "register", "instance": instance}) + "\n").encode())
    answer = s.makefile().readline()
    assert json.loads(answer)["ok"], answer
    held.append(s)
register("one", None, ports[0])  # a plain registration, as today
for k, port in enumerate(ports, 1):
    register("three", k, port)
print("registered", flush=True)
while True:
    time.sleep(3600)
PY
python3 "$work/members.py" "$WHARF_RUNTIME_DIR/control.sock" "${backends[@]}" >"$work/members.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do grep -q registered "$work/members.log" 2>/dev/null && break; sleep 0.1; done
grep -q registered "$work/members.log" || { cat "$work/members.log" "$work/proxy.log" >&2; exit 1; }

rps() { wrk -t1 -c"$1" -d"$seconds" -H "Host: $2.localhost" "http://127.0.0.1:$proxy/" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A results
for c in 50 1; do
  for _ in $(seq "$rounds"); do
    for name in one three; do results[$name,$c]+="$(rps "$c" "$name") "; done
  done
done
echo "req/s through wharf, median of $rounds rounds of ${seconds}s (wrk, keep-alive):"
printf '  %-14s %12s %12s %8s\n' connections "1 member" "3 members" ratio
for c in 50 1; do
  one=$(tr ' ' '\n' <<<"${results[one,$c]}" | grep . | median)
  three=$(tr ' ' '\n' <<<"${results[three,$c]}" | grep . | median)
  printf '  %-14s %12.0f %12.0f %8.3f\n' "$c" "$one" "$three" "$(awk "BEGIN {print $three / $one}")"
done
