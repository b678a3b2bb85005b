#!/usr/bin/env bash
# A keep-alive server with Nagle's algorithm on that writes its head and body in two writes
# (what werkzeug, wsgiref and http.server do): each response waits for the reader's delayed
# ACK, 40 ms. This measures it directly and through wharf (which acknowledges at once when a
# response does not arrive in one read), with wrk on one connection and one-shot curls.
# Everything listens on 127.0.0.1, on ports the OS picks; everything started is stopped.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
command -v wrk >/dev/null || { echo "bench/nagle.sh: needs wrk (bash ../shared/bench/install.sh)" >&2; exit 1; }
scratch
export WHARF_STATE_DIR=$work/state WHARF_RUNTIME_DIR=$work/run

cat >"$work/nagle.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello from a nagle server\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()          # one write for the head...
        self.wfile.write(body)      # ...and one for the body
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
backend=$(free_port); proxy=$(free_port)
python3 "$work/nagle.py" "$backend" & pids+=($!)
"$root/target/release/wharf" proxy --listen "127.0.0.1:$proxy" >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$proxy" && curl -s -o /dev/null "127.0.0.1:$backend" && break; sleep 0.1; done
"$root/target/release/wharf" alias nagle "127.0.0.1:$backend" >/dev/null 2>&1

echo "wrk, 1 connection, 3 s:"
printf '  direct: '; wrk -t1 -c1 -d3 "http://127.0.0.1:$backend/" | awk '/Requests\/sec/ {print $2 " req/s"}'
printf '  wharf:  '; wrk -t1 -c1 -d3 -H 'Host: nagle.localhost' "http://127.0.0.1:$proxy/" | awk '/Requests\/sec/ {print $2 " req/s"}'
echo "one-shot curl through wharf (the proxy reuses its upstream connection), seconds:"
for _ in $(seq 8); do curl -s -o /dev/null -w '  %{time_total}\n' -H 'Host: nagle.localhost' "127.0.0.1:$proxy/"; done
