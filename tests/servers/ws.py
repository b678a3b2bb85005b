"""WebSocket peers for wharf's tests, using the `websockets` library.

server: echoes every message back, on PORT (env mode).
client PORT HOST MSG: connects to 127.0.0.1:PORT asking for HOST, sends MSG, prints the echo;
over TLS (wss://) when WS_CAFILE names the CA to trust.
"""
import os
import socket
import ssl
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve


def echo(ws):
    for message in ws:
        ws.send(message)


if sys.argv[1] == "server":
    with serve(echo, "127.0.0.1", int(os.environ["PORT"])) as server:
        print("WS ready", flush=True)
        server.serve_forever()
else:
    port, host, message = sys.argv[2], sys.argv[3], sys.argv[4]
    sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    tls = {}
    if os.environ.get("WS_CAFILE"):
        tls = {"ssl": ssl.create_default_context(cafile=os.environ["WS_CAFILE"]),
               "server_hostname": host.rsplit(":", 1)[0]}
    scheme = "wss" if tls else "ws"
    with connect(f"{scheme}://{host}/", sock=sock, open_timeout=10, close_timeout=5, **tls) as ws:
        ws.send(message)
        print("ECHO " + ws.recv(timeout=10), flush=True)
