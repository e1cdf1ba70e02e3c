"""A WSGI upstream that reads requests the way Python web frameworks do, for keyward's
hardening tests: Python's own wsgiref server (percent-decodes PATH_INFO, folds header names
so that `X_Keyward_User` and `X-Keyward-User` are both HTTP_X_KEYWARD_USER), plus the
routing normalisation of Werkzeug/Flask (a target without a leading slash gets one, an
absolute-form target is reduced to its path, slashes are merged, dot segments resolved).

It answers every request with JSON: the method, the method a framework would serve
(method-override headers, `_method`), the raw and the routed path, and the headers as the
application sees them. Usage: python3 wsgi_echo.py PORT_FILE [--case-insensitive] (writes
the port it bound); with --case-insensitive it routes as Express (by default), ASP.NET and IIS
do: the routed path is lower-cased.
"""

import json
import posixpath
import re
import sys
import urllib.parse
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


CASE_INSENSITIVE = "--case-insensitive" in sys.argv[2:]


def routed_path(path_info):
    path = path_info
    if "://" in path:
        path = urllib.parse.urlsplit(path).path or "/"
    if not path.startswith("/"):
        path = "/" + path.split(":", 1)[-1].lstrip("/")
    path = re.sub("/+", "/", path)
    trailing = path.endswith("/")
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = path[1:]
    if trailing and path != "/":
        path += "/"
    if CASE_INSENSITIVE:
        path = path.lower()
    return path


def app(environ, start_response):
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    method = environ["REQUEST_METHOD"]
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    effective = (
        headers.get("x-http-method-override")
        or headers.get("x-http-method")
        or headers.get("x-method-override")
        or (query.get("_method") or [None])[0]
        or method
    ).upper()
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    answer = json.dumps(
        {
            "method": method,
            "effective_method": effective,
            "path_info": environ.get("PATH_INFO", ""),
            "routed": routed_path(environ.get("PATH_INFO", "")),
            "query": environ.get("QUERY_STRING", ""),
            "headers": headers,
            "body": body.decode("latin-1"),
        }
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
    )
    return [answer]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


if __name__ == "__main__":
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_port))
    import os

    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()
