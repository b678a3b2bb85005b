"""A small HTTP server for wharf's tests.

It takes its sockets the way wharf passes them (LISTEN_FDS, else HOST/PORT), reports what it
inherited as one JSON line, and answers every request with JSON describing itself and the
request. Options make it misbehave the ways real dev servers do.
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--exit-after", type=int, default=0, help="exit after N requests")
parser.add_argument("--bind-elsewhere", action="store_true", help="ignore PORT, bind any port")
parser.add_argument("--notify-ready", action="store_true", help="send READY=1 to NOTIFY_SOCKET")
parser.add_argument("--exit-code", type=int, default=0, help="code for --exit-after exits")
parser.add_argument("--bind-delay", type=float, default=0, help="env mode: wait before binding")
parser.add_argument("--check-port", type=float, default=0,
                    help="env mode: first listen on [::]:PORT this long and close it, the way "
                         "Vite checks that a port is free before it binds HOST:PORT")
parser.add_argument("--rebind", type=float, default=0,
                    help="env mode: listen this long without accepting, then close the socket "
                         "and listen on the same address again, the way Django's reloader does")
parser.add_argument("--reload-gap", type=float, default=0,
                    help="GET /reload: answer, close the listening socket, say REOPENING, wait "
                         "this long and listen on the same address again, the way Django's "
                         "runserver reloads after a code change")
parser.add_argument("--start-delay", type=float, default=0,
                    help="take this long to start (before binding, serving and READY=1)")
parser.add_argument("--graceful", action="store_true",
                    help="on SIGTERM stop accepting, finish the requests in flight, then exit")
parser.add_argument("--linger", type=float, default=0,
                    help="after --exit-after closed the sockets, stay this long before exiting")
parser.add_argument("--quiet", action="store_true", help="no REQ line per request")
parser.add_argument("--version-file", help="report this file's text as the version; "
                    "text starting with 'fail' makes the server exit 3 at once, saying so")
parser.add_argument("--daemonize", action="store_true",
                    help="go to the background: fork, setsid, fork, the first two exit 0")
parser.add_argument("--sick-while", metavar="FILE",
                    help="GET /health answers 500 while FILE exists, else 200 ($VARS expanded: "
                         "sick-$WHARF_MEMBER is one file per member)")
args = parser.parse_args()

if args.daemonize:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)

# Before anything opens an fd: which fds did we inherit?
open_fds = []
for fd in range(0, 64):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass

def say(line):
    """One line to stdout in one write: members of a replicated name share wharf's stdout,
    and print() may write the line and its newline apart, merging lines of two servers."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


report = {
    "fds": open_fds,
    "pid": os.getpid(),
    "env": {k: v for k, v in os.environ.items()
            if k.startswith(("LISTEN_", "WHARF_", "PORT", "NOTIFY_", "WATCHDOG")) or k == "HOST"
            or k in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")},
}


version = ""
if args.version_file:
    with open(args.version_file) as f:
        version = f.read().strip()
    if version.startswith("fail"):
        print(f"cannot start: the version file says {version!r}", file=sys.stderr, flush=True)
        sys.exit(3)

servers = []
stopping = False
# Each open connection's state: "new" (accepted, no request read yet), "active" (a request
# is being answered) or "idle" (kept alive between requests).
connections = {}
connections_lock = threading.Lock()
# How long a graceful stop waits for accepted connections to send their request.
NEW_CONNECTION_GRACE = 2.0


def graceful_exit():
    """Stop accepting, answer every request already sent or on its way (a connection the
    listener accepted is one), close idle kept-alive connections, then exit: what a
    graceful production server does on SIGTERM."""
    global stopping
    stopping = True
    for server in servers:
        server.shutdown()
    waited = 0.0
    while True:
        with connections_lock:
            states = dict(connections)
        for handler, state in states.items():
            if state == "idle" or (state == "new" and waited >= NEW_CONNECTION_GRACE):
                try:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if not states:
            break
        threading.Event().wait(0.005)
        waited += 0.005
    say("finished the requests in flight; exiting")
    os._exit(0)


def on_signal(signum, frame):
    say(f"got {signal.Signals(signum).name}")
    if args.graceful and signum == signal.SIGTERM:
        threading.Thread(target=graceful_exit, daemon=True).start()
    elif signum != signal.SIGHUP:
        os._exit(0)


# Handlers first, so a test that signals us after REPORT finds them in place.
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, on_signal)

say("REPORT " + json.dumps(report))
if args.start_delay:
    threading.Event().wait(args.start_delay)

count = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle the body would wait for the proxy's
    # delayed ACK (40 ms) on every reused connection.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.mark("new")

    def finish(self):
        with connections_lock:
            connections.pop(self, None)
        super().finish()

    def mark(self, state):
        with connections_lock:
            connections[self] = state

    def parse_request(self):
        self.mark("active")
        return super().parse_request()

    def handle_one_request(self):
        super().handle_one_request()
        self.mark("idle")

    def end_headers(self):
        if stopping:
            # Stopping: this answer is the connection's last, and says so.
            self.send_header("Connection", "close")
            self.close_connection = True
        super().end_headers()

    def do_GET(self):
        self.get()

    def get(self):
        global count
        if not args.quiet:
            say(f"REQ {self.command} {self.path}")
        if self.path == "/hang":
            threading.Event().wait()
        if self.path.startswith("/big/"):
            return self.big(int(self.path.split("/")[2]))
        if self.path == "/page":
            return self.page()
        if self.path == "/health" and args.sick_while:
            return self.health()
        if self.path == "/reload" and args.reload_gap:
            return self.reload()
        if self.path == "/unasked-101":
            self.send_response(101)
            self.end_headers()
            return
        body = json.dumps({
            "pid": os.getpid(),
            "version": version,
            "socket": self.server.wharf_name,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if args.exit_after or stopping:
            # Stopping: what it answers now is its last on this connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        with lock:
            count += 1
            done = args.exit_after and count >= args.exit_after
        if done:
            self.close_connection = True
            # Exit like a well-behaved server: stop accepting, finish what was accepted.
            # Connections still queued wait for the next server. The loop is told before
            # the answer goes out: told after, it could take a connection the client made
            # on reading the answer (its select returns at once), and answer a request more.
            self.server._BaseServer__shutdown_request = True
        self.wfile.write(body)
        self.wfile.flush()
        if done:
            threading.Thread(target=self.server.shutdown).start()

    def reload(self):
        """The answer, then the listening socket closes (`serve` opens it again)."""
        body = b"reloading"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        reopening.set()
        self.wfile.write(body)
        self.wfile.flush()
        threading.Thread(target=self.server.shutdown).start()

    def page(self):
        """An HTML page for browsers: who served it, and its own script's word on the protocol
        that carried it (the browser's, not the server's: the proxy speaks HTTP/1.1 to us)."""
        name = os.environ.get("WHARF_NAME", "?")
        proto = self.headers.get("X-Forwarded-Proto", "none")
        body = f"""<!doctype html><title>wharf test page</title>
<p id="served">served by instance {name} over {proto}</p>
<script>
const nav = performance.getEntriesByType('navigation')[0];
document.body.insertAdjacentHTML('beforeend', `<p id="protocol">${{nav.nextHopProtocol}}</p>`);
</script>
""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def health(self):
        sick = os.path.exists(os.path.expandvars(args.sick_while))
        body = b"sick" if sick else b"ok"
        self.send_response(500 if sick else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def big(self, mib):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(mib << 20))
        self.end_headers()
        chunk = b"b" * (1 << 20)
        try:
            for _ in range(mib):
                self.wfile.write(chunk)
        except OSError:
            say("BIG aborted")

    def do_POST(self):
        say(f"REQ {self.command} {self.path}")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self.chunked_body()
        length = int(self.headers.get("Content-Length", "0"))
        received = 0
        while received < length:
            chunk = self.rfile.read1(min(65536, length - received))
            if not chunk:
                say(f"BODY ended early at {received}")
                return
            received += len(chunk)
        body = json.dumps({"received": received}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunked_body(self):
        received = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            received += len(self.rfile.read(size))
            self.rfile.readline()
            if size == 0:
                break
        body = json.dumps({"received": received}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        pass


reopening = threading.Event()


def serve(sock, name):
    while True:
        server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        server.daemon_threads = False  # server_close() waits for requests in flight
        server.socket = sock
        server.wharf_name = name
        servers.append(server)
        server.serve_forever()
        if not reopening.is_set():
            break
        # --reload-gap: the same address on a new socket, after a while without one.
        reopening.clear()
        servers.remove(server)
        addr = sock.getsockname()
        sock.close()
        say("REOPENING")
        threading.Event().wait(args.reload_gap)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        say(f"BOUND {addr[1]} again")
    server.server_close()
    if args.linger:
        # Down but not gone: what wharf cannot see yet.
        threading.Event().wait(args.linger)
    os._exit(args.exit_code)


sockets = []
n = int(os.environ.get("LISTEN_FDS", "0"))
if n:
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for i in range(n):
        sockets.append((socket.socket(fileno=3 + i), names[i] if i < len(names) else ""))
else:
    if args.bind_delay:
        import time
        time.sleep(args.bind_delay)
    port = 0 if args.bind_elsewhere else int(os.environ["PORT"])
    if args.check_port:
        import time
        check = socket.socket(socket.AF_INET6)
        check.bind(("::", port))
        check.listen(1)
        time.sleep(args.check_port)
        check.close()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((os.environ.get("HOST", "127.0.0.1"), port))
    sock.listen(128)
    say(f"BOUND {sock.getsockname()[1]}")
    if args.rebind:
        import time
        time.sleep(args.rebind)
        addr = sock.getsockname()
        sock.close()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        say(f"BOUND {sock.getsockname()[1]} again")
    sockets.append((sock, "http"))

if args.notify_ready and os.environ.get("NOTIFY_SOCKET"):
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1\nSTATUS=serving", os.environ["NOTIFY_SOCKET"])

for sock, name in sockets[1:]:
    threading.Thread(target=serve, args=(sock, name), daemon=True).start()
serve(*sockets[0])
