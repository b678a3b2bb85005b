"""A gRPC server for the tests, without generated code (methods take and return bytes).

Run as `python grpc_echo.py PORT`; it binds 127.0.0.1:PORT (wharf's env mode) and serves:
  /test.Echo/Unary   the request, then " via " and the x-forwarded-host metadata
  /test.Echo/Count   the numbers 0..N-1 as N messages, for a request "N"
  /test.Echo/Fail    status NOT_FOUND with details "no such thing" (in the trailers)
"""

import sys
from concurrent import futures

import grpc


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    return request + b" via " + metadata.get("x-forwarded-host", "?").encode()


def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print("READY", flush=True)
server.wait_for_termination()
