"""bench/peers.sh's measurements for one proxy: packets per connection, and the peers' CPU."""
import argparse
import collections
import os
import re
import resource
import signal
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--backend-port", type=int, required=True)
p.add_argument("--host", required=True)
p.add_argument("--packets", type=int, default=50)
p.add_argument("--seconds", type=int, default=5)
p.add_argument("--work", required=True)
p.add_argument("--proxy-pids", default="")
p.add_argument("--backend-pids", default="")
a = p.parse_args()
url = f"http://127.0.0.1:{a.port}/"
wrk_base = ["taskset", "-c", "0", "wrk", "-t1", "--timeout", "10s", "-H", f"Host: {a.host}",
            "-H", "Connection: close"]


def wrk(conns, secs):
    """Run wrk on CPU 0; (requests, its rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(wrk_base + [f"-c{conns}", f"-d{secs}s", url], check=True,
                         capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"bench/peers.py: wrk saw failures:\n{out}")
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return n, {
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "nvcsw": after.ru_nvcsw - before.ru_nvcsw,
    }


LINE = re.compile(r"IP6? (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\].*?length (\d+)")


def capture(conns, secs):
    """Per connection, the segments in order: (from proxy?, flags, length)."""
    pcap = os.path.join(a.work, "lo.pcap")
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-nn", "-U", "-w", pcap,
                             f"tcp and (port {a.port} or port {a.backend_port})"],
                            stderr=subprocess.PIPE, text=True)
    # tcpdump says "listening on lo" once it captures; bounded by its own failure.
    for line in dump.stderr:
        if "listening on" in line:
            break
    n = wrk(conns, secs)[0]
    time.sleep(0.3)  # the last FINs and ACKs of the run
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)
    text = subprocess.run(["tcpdump", "-r", pcap, "-nn", "-S"], capture_output=True, text=True,
                          check=True).stdout
    front, back = collections.OrderedDict(), collections.OrderedDict()
    for line in text.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        sport, dport, flags, length = int(m[2]), int(m[4]), m[5], int(m[6])
        if a.port in (sport, dport):
            add(front, dport if sport == a.port else sport, sport == a.port, flags, length)
        else:
            add(back, dport if sport == a.backend_port else sport, sport == a.backend_port, flags,
                length)
    return n, front, back


def add(conns, port, from_server, flags, length):
    """One segment; a SYN on a port seen before starts a new connection."""
    key = (port, conns.get(("gen", port), 0))
    if flags == "S" and key in conns:
        conns[("gen", port)] = key[1] + 1
        key = (port, key[1] + 1)
    conns.setdefault(key, []).append((from_server, flags, length))


def kind(flags, length):
    k = ""
    if "S" in flags:
        k = "SYN-ACK" if "." in flags else "SYN"
    elif "R" in flags:
        k = "RST"
    elif "F" in flags:
        k = f"FIN+data{length}" if length else "FIN"
    elif length:
        k = f"data{length}"
    else:
        k = "ACK"
    return k


def summarise(label, conns, server_name, client_name):
    """Segments per connection by who sent them, and the most common orders."""
    whole = [c for k, c in conns.items() if k[0] != "gen" and c and "S" in c[0][1] and "." not in c[0][1]]
    if not whole:
        print(f"  {label}: no whole connections captured")
        return
    counts = collections.Counter()
    first_fin = collections.Counter()
    orders = collections.Counter()
    for segs in whole:
        fin_seen = False
        order = []
        for from_server, flags, length in segs:
            who = server_name if from_server else client_name
            k = kind(flags, length)
            counts[(who, re.sub(r"\d+", "", k))] += 1
            order.append(f"{who[0]}:{k}")
            if "F" in flags and not fin_seen:
                first_fin[who] += 1
                fin_seen = True
        orders[" ".join(order)] += 1
    n = len(whole)
    total = sum(counts.values())
    print(f"  {label}: {n} connections, {total / n:.2f} segments each")
    for who in (client_name, server_name):
        parts = [f"{k} {counts[(who, k)] / n:.2f}" for k in
                 ("SYN", "SYN-ACK", "data", "ACK", "FIN", "FIN+data", "RST") if counts[(who, k)]]
        print(f"    from {who}: " + ", ".join(parts))
    print("    first FIN from: " + ", ".join(f"{w} {c / n:.0%}" for w, c in first_fin.items()))
    for order, c in orders.most_common(3):
        print(f"    {c / n:5.0%}  {order}")


def pids_of(text):
    return [int(x) for x in text.split(",") if x]


def cpu_of(pids):
    """(ns on CPU, voluntary context switches) of every thread of pids."""
    ns = vcs = 0
    for pid in pids:
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    ns += int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vcs += int(line.split()[1])
        except FileNotFoundError:
            pass
    return ns, vcs


def cpu_ticks():
    """Per CPU: (busy ticks, softirq ticks) from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m[2].split()]
                out[int(m[1])] = (sum(v) - v[3] - v[4], v[6])
    return out


def time_wait():
    out = subprocess.run(["ss", "-tanH", "state", "time-wait"], capture_output=True,
                         text=True).stdout
    proxy_holds = client_holds = backend_side = 0
    for line in out.splitlines():
        f = line.split()
        local, peer = f[-2], f[-1]
        if local.endswith(f":{a.port}"):
            proxy_holds += 1
        elif peer.endswith(f":{a.port}"):
            client_holds += 1
        elif a.backend_port and (local.endswith(f":{a.backend_port}") or peer.endswith(f":{a.backend_port}")):
            backend_side += 1
    return proxy_holds, client_holds, backend_side


# Warm up (the pool of upstream connections, the allocator, the caches).
wrk(32, 1)

n, front, back = capture(1, 1)
print(f"packets, wrk -c1 for 1 s ({n} requests):")
summarise("client side", front, "proxy", "client")
summarise("upstream side", back, "backend", "proxy")
print(f"    upstream connections opened per request: "
      f"{sum(1 for k, c in back.items() if k[0] != 'gen' and c[0][1] == 'S') / n:.3f}, "
      f"segments per request: {sum(len(c) for k, c in back.items() if k[0] != 'gen') / n:.2f}")
n, front, back = capture(32, 1)
print(f"packets, wrk -c32 for 1 s ({n} requests):")
summarise("client side", front, "proxy", "client")
print(f"    upstream connections opened per request: "
      f"{sum(1 for k, c in back.items() if k[0] != 'gen' and c[0][1] == 'S') / n:.3f}, "
      f"segments per request: {sum(len(c) for k, c in back.items() if k[0] != 'gen') / n:.2f}")

proxy, backend = pids_of(a.proxy_pids), pids_of(a.backend_pids)
tw0 = time_wait()
p0, b0, t0, w0 = cpu_of(proxy), cpu_of(backend), cpu_ticks(), time.monotonic()
n, client = wrk(32, a.seconds)
p1, b1, t1, w1 = cpu_of(proxy), cpu_of(backend), cpu_ticks(), time.monotonic()
tw1 = time_wait()
hz = os.sysconf("SC_CLK_TCK")
us = lambda secs: secs / n * 1e6
busy = {c: (t1[c][0] - t0[c][0]) / hz for c in t1}
soft = {c: (t1[c][1] - t0[c][1]) / hz for c in t1}
ours = client["cpu"] + (p1[0] - p0[0] + b1[0] - b0[0]) / 1e9
others = sum(busy.values()) - ours - sum(soft.values())
print(f"CPU, wrk -c32 for {a.seconds:g} s: {n} requests, {n / (w1 - w0):.0f}/s; "
      f"other processes {max(others, 0) / (w1 - w0):.2f} CPUs")
print(f"  per request: wrk {us(client['cpu']):.1f} us, backend {us((b1[0] - b0[0]) / 1e9):.1f} us, "
      f"softirq CPU 0 {us(soft[0]):.1f} us, CPU 1 {us(soft[1]):.1f} us, "
      f"CPU 0 busy {us(busy[0]):.1f} us; proxy {us((p1[0] - p0[0]) / 1e9):.1f} us")
print(f"  sleeps per request (voluntary context switches): wrk {client['nvcsw'] / n:.3f}, "
      f"backend {(b1[1] - b0[1]) / n:.3f}, proxy {(p1[1] - p0[1]) / n:.3f}")
print(f"  TIME_WAIT sockets after the run: held by the proxy {tw1[0]}, by the client {tw1[1]}, "
      f"upstream side {tw1[2]} (before: {tw0[0]} / {tw0[1]} / {tw0[2]})")
