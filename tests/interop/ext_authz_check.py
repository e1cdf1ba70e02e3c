"""Asks keyward's gRPC envoy.service.auth.v3.Authorization/Check as Envoy would, with grpcio
and the xds-protos package's generated classes (the protos' own definitions, not keyward's).

    python3 ext_authz_check.py HOST:PORT REQUEST.json

REQUEST.json: {"method", "path", "host", "scheme", "headers": {name: value}, "body" (optional,
sent as raw_body), "source" (optional)}. Prints the CheckResponse as JSON: {"grpc_code",
"code", "status", "headers": {name: value}, "remove": [...], "body"}.
"""

import json
import sys

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc


def main():
    address, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        described = json.load(f)
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = described["method"]
    http.path = described["path"]
    http.host = described.get("host", "app.example")
    http.scheme = described.get("scheme", "http")
    http.protocol = "HTTP/1.1"
    for name, value in described.get("headers", {}).items():
        http.headers[name] = value
    http.headers[":authority"] = http.host
    http.headers[":path"] = http.path
    http.headers[":method"] = http.method
    if "body" in described:
        http.raw_body = described["body"].encode()
        http.size = len(http.raw_body)
    if "source" in described:
        request.attributes.source.address.socket_address.address = described["source"]
        request.attributes.source.address.socket_address.port_value = 40000
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            response = stub.Check(request, timeout=10)
        except grpc.RpcError as error:
            print(json.dumps({"grpc_error": error.code().name, "details": error.details()}))
            return
    out = {"grpc_code": 0, "code": response.status.code}
    if response.HasField("ok_response"):
        ok = response.ok_response
        out["status"] = 200
        out["headers"] = {h.header.key: h.header.value for h in ok.headers}
        out["actions"] = sorted({h.append_action for h in ok.headers})
        out["remove"] = list(ok.headers_to_remove)
    elif response.HasField("denied_response"):
        denied = response.denied_response
        out["status"] = denied.status.code
        out["headers"] = {h.header.key: h.header.value for h in denied.headers}
        out["body"] = denied.body
    print(json.dumps(out))


if __name__ == "__main__":
    main()
