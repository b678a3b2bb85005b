"""A gRPC client for the tests: `python grpc_call.py PORT AUTHORITY` calls grpc_echo.py's
methods through 127.0.0.1:PORT with that :authority and prints what came back as JSON; over
TLS when GRPC_CAFILE names the CA to trust (the name checked is AUTHORITY's host)."""

import json
import os
import sys

import grpc

port, authority = sys.argv[1], sys.argv[2]
options = [("grpc.default_authority", authority)]
if os.environ.get("GRPC_CAFILE"):
    with open(os.environ["GRPC_CAFILE"], "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options.append(("grpc.ssl_target_name_override", authority.rsplit(":", 1)[0]))
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
else:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


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
