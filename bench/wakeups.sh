#!/usr/bin/env bash
# What a wake-up costs the one who wakes: a writer on the first CPU sends one byte every
# GAP µs over a Unix socket to a reader on the second CPU, which either sleeps in epoll_wait
# until the byte comes (as a proxy that sleeps between events) or polls with a zero timeout
# (a reader that is awake when the byte comes). Printed: the
# writer's own CPU time per write (thread CPU time around the send), the mean over the writes.
# The difference is what each sleep of a proxy costs its clients and instances, on their
# CPU; `bash bench/https.sh` counts the sleeps per request (proxy sleeps/req).
#
#   bash bench/wakeups.sh [WRITES] [GAP-µs...]   (defaults: 20000 writes; gaps 30 and 200)
set -euo pipefail
writes=${1:-20000}
shift || true
gaps=("${@:-30 200}")
read -ra gaps <<<"${gaps[*]}"
cpus=$(nproc)
((cpus > 1)) || { echo "bench/wakeups.sh: needs two CPUs" >&2; exit 1; }
for gap in "${gaps[@]}"; do
  for reader in sleeps polls; do
    python3 - "$writes" "$gap" "$reader" <<'PY'
import os, select, socket, statistics, sys, time
writes, gap, reader = int(sys.argv[1]), float(sys.argv[2]) / 1e6, sys.argv[3]
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    os.sched_setaffinity(0, {1})
    a.close()
    b.setblocking(False)
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN)
    timeout = -1 if reader == "sleeps" else 0
    while True:
        if ep.poll(timeout):
            if not b.recv(4096):
                os._exit(0)
os.sched_setaffinity(0, {0})
b.close()
time.sleep(0.2)
costs = []
for _ in range(writes):
    until = time.perf_counter() + gap
    while time.perf_counter() < until:
        pass
    t = time.thread_time_ns()
    a.send(b"x")
    costs.append(time.thread_time_ns() - t)
a.close()
os.waitpid(pid, 0)
print(f"gap {gap * 1e6:.0f} µs, reader {reader}: the writer's CPU per write {statistics.fmean(costs) / 1000:.1f} µs")
PY
  done
done
