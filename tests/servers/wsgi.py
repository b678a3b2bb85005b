"""A WSGI app for gunicorn: says which process answered and the Host it saw."""
import json
import os


def app(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(),
        "host": environ.get("HTTP_HOST"),
        "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
        "forwarded_proto": environ.get("HTTP_X_FORWARDED_PROTO"),
        "forwarded_host": environ.get("HTTP_X_FORWARDED_HOST"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
