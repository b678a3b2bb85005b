#!/usr/bin/env bash
# The proxy's share of a first request (issue 19 item 4): what a client waits for a request
# that has to start its server, minus what the server itself takes to start. Three cases:
#   on-demand     `wharf run --on-demand`: the first request to an idle instance starts it
#   restart fd    `wharf run --restart --fd`: the server exits, a request arrives while wharf
#                 starts it again on the socket it holds
#   restart env   the same with --env: the server binds PORT itself each time, and sends no
#                 READY=1 (wharf notices it listening)
# The backend (bench/demand-backend.c) writes when its main ran, when it was ready, when it had
# the request and when it had answered; the client notes when it sent and when the answer was
# in. The proxy's share is the total minus the server's own time: its start-up (main → ready,
# plus the fork+exec every launcher pays, measured on its own after a pause as the starts here
# come), its answer (request → response) and, on a restart, the old server still exiting
# after the client sent.
# Usage: bench/demand.sh [ROUNDS]   (default 30 on demand, 15 per restart case; a round takes
# 2-3 s: an idle stop comes after a second or two, and a restart comes at once only after the
# server ran 2 s).
# STARTUP_MS (default 20) is how long the backend takes to start; WHARF_BIN measures another
# wharf binary (a copy of an earlier build) instead of building this tree.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=${1:-30}
restart_rounds=${1:-15}
if [[ -n ${WHARF_BIN:-} ]]; then
  wharf=$WHARF_BIN   # another build to compare with (the last release build is copied aside)
else
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  wharf=$root/target/release/wharf
fi
scratch
export WHARF_STATE_DIR=$work/state WHARF_RUNTIME_DIR=$work/run STARTUP_MS=${STARTUP_MS:-20}
mkdir -m 700 "$WHARF_STATE_DIR" "$WHARF_RUNTIME_DIR"
cc -O2 -o "$work/backend" "$root/bench/demand-backend.c"
proxy=$(free_port)
export WHARF_LISTEN=127.0.0.1:$proxy
"$wharf" proxy --listen "$WHARF_LISTEN" >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$proxy" && break; sleep 0.1; done

cat >"$work/measure.py" <<'PY'
import os, socket, statistics, sys, time

case, port, host, log, out, rounds, exec_ns = sys.argv[1:8]
port, rounds, exec_ns = int(port), int(rounds), int(exec_ns)
now = time.monotonic_ns

def wait_for(path, text, count, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            with open(path, errors="replace") as f:
                if f.read().count(text) >= count:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    sys.exit(f"demand.sh: {path} did not say {text!r} {count} times within {limit} s")

def get(path):
    """One request through the proxy: (sent, answered) on the monotonic clock."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    t0 = now()
    s.sendall(req)
    data = b""
    while True:
        chunk = s.recv(65536)
        t1 = now()
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                           if l.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    return t0, t1

def lines(kind, at_least):
    """The log's lines of `kind`, once it has `at_least` (the server writes after answering)."""
    end = time.time() + 10
    while True:
        with open(log) as f:
            found = [l.split() for l in f if l.startswith(kind + " ")]
        if len(found) >= at_least or time.time() > end:
            return found
        time.sleep(0.001)

rows = []
refused = 0
wait_for(out, host, 1)
for i in range(rounds):
    if case == "on-demand":
        # Idle again: the last server was stopped for being idle (--idle-timeout 1).
        wait_for(out, "starting again on the next connection", i)
        time.sleep(0.1)
        t0, t1 = get("/") or sys.exit(f"demand.sh: {case}: no 200 OK")
        _, pid, main, ready, req, resp = lines("req", i + 1)[i]
        old_exit = None
    else:
        # A restart comes at once only after the server ran 2 s (fast exits back off).
        wait_for(out, "on the same socket", i)
        time.sleep(2.1)
        get("/exit") or sys.exit(f"demand.sh: {case}: no 200 OK")
        if case == "restart env":
            # wharf cannot hold a socket the server binds itself: a request that comes before
            # the supervisor has seen the exit waits in the proxy for the route to move (it
            # used to be refused, counted below). Sent after that line, as it always was, the
            # request waits for the new server to listen.
            wait_for(out, "on the same socket", i + 1)
            time.sleep(0.002)
        answered = get("/")
        old_exit = int(lines("exit", i + 1)[i][2])
        if answered is None:
            # Refused while the server was down; the next request starts it again.
            refused += 1
            for _ in range(100):
                if get("/"):
                    break
                time.sleep(0.05)
        if len(lines("req", 2 * i + 2)) < 2 * i + 2:
            sys.exit(f"demand.sh: {case}: the server did not come back")
        if answered is None:
            continue
        t0, t1 = answered
        _, pid, main, ready, req, resp = lines("req", 2 * i + 2)[2 * i + 1]
    main, ready, req, resp = map(int, (main, ready, req, resp))
    total = t1 - t0
    # The server's own, as far as the client waited for it: the exec every launcher pays and
    # main -> ready, its answer, and on a restart the old server still exiting.
    start = max(0, min(ready, t1) - max(main - exec_ns, t0))
    answer = resp - req
    exiting = max(0, old_exit - t0) if old_exit else 0
    share = total - start - answer - exiting
    begin = max(t0, old_exit) if old_exit else t0
    rows.append(dict(total=total, server=start + answer + exiting, share=share,
                     to_exec=main - exec_ns - begin, ready_to_req=req - ready,
                     resp_to_client=t1 - resp))

def ms(v):
    return f"{v / 1e6:7.3f}"

print(f"{case}: {rounds} rounds, ms (median / p90)")
if refused:
    print(f"  REFUSED (not 200 OK) while the server restarted: {refused} of {rounds}")
if not rows:
    sys.exit(0)
for key, what in [("total", "client sent -> answer in"),
                  ("server", "the server's own (exec, start-up, answer)"),
                  ("share", "PROXY SHARE = total - the server's own"),
                  ("to_exec", "  request sent (or old server gone) -> exec of the server"),
                  ("ready_to_req", "  server ready -> request in its hands"),
                  ("resp_to_client", "  answer written -> answer at the client")]:
    v = sorted(r[key] for r in rows)
    p90 = v[min(len(v) - 1, int(len(v) * 0.9))]
    print(f"  {what:<58} {ms(statistics.median(v))} / {ms(p90)}")
PY

# A start after a pause, as every start here comes (the client waits 0.1 s before its request,
# the restarts 2 s): back to back, with caches warm and no CPU halted, fork+exec takes about
# 0.5 ms less, which would count as wharf's.
hot_ns=$("$work/backend" --exec 200)
exec_ns=$("$work/backend" --exec 50 100)
ms() { awk "BEGIN{printf \"%.3f\", $1/1e6}"; }
echo "fork+exec of the backend (paid by any launcher, counted as the server's): $(ms "$exec_ns") ms" \
  "after 0.1 s of nothing, as a start here comes (median of 50; back to back: $(ms "$hot_ns") ms)"
# What the machine charges for each hand-off between processes after a pause; counted in the
# proxy's share, which holds at least two: the proxy woken by the request (and, on demand, the
# supervisor by the proxy), and the proxy woken by the answer.
read -r wake_same wake_other < <("$work/backend" --wake 50 100)
other="$(ms "$wake_other") ms on the other"
((wake_other >= 0)) || other="no other CPU"
echo "a process asleep in read(2), woken after 0.1 s of nothing: $(ms "$wake_same") ms on the" \
  "writer's CPU, $other (median of 50)"

run_case() { # CASE NAME ROUNDS WHARF-RUN-OPTIONS...
  local case=$1 name=$2 n=$3; shift 3
  # In env mode wharf finds the server by the port it listens on, unless it sends READY=1:
  # measured without, as most dev servers do not.
  [[ $case == "restart env" ]] && export NO_READY=1
  "$wharf" run --name "$name" "$@" -- "$work/backend" "$work/$name.log" >"$work/$name.out" 2>&1 & pids+=($!)
  python3 "$work/measure.py" "$case" "$proxy" "$name.localhost" "$work/$name.log" "$work/$name.out" "$n" "$exec_ns" \
    || { cat "$work/$name.out" >&2; exit 1; }
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}
run_case on-demand od "$rounds" --on-demand --idle-timeout 1
run_case "restart fd" rfd "$restart_rounds" --restart --fd
run_case "restart env" renv "$restart_rounds" --restart --env
