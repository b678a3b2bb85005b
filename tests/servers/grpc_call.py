"""A gRPC client for the tests: `python grpc_call.py PORT AUTHORITY` calls grpc_echo.py's
methods through 127.0.0.1:PORT with that :authority and prints what came back as JSON."""

import json
import sys

import grpc

port, authority = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(
    f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)]
)


def call(kind, method, request):
    try:
        result = getattr(channel, kind)(f"/test.Echo/{method}")(request, timeout=20)
        if kind == "unary_stream":
            return [m.decode() for m in result]
        return result.decode()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


print(json.dumps({
    "unary": call("unary_unary", "Unary", b"hello"),
    "count": call("unary_stream", "Count", b"5"),
    "fail": call("unary_unary", "Fail", b""),
}))
