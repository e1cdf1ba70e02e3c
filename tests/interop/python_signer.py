"""Sends one request signed by an independent RFC 9421 implementation (the
`http-message-signatures` package), and prints the status code and the body.

usage: python_signer.py URL METHOD PRIVATE_KEY_PEM KEYID [BODY]
"""
import sys
import secrets

import requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

url, method, key_path, keyid = sys.argv[1:5]
body = sys.argv[5].encode() if len(sys.argv) > 5 else None

with open(key_path, "rb") as f:
    private_key = load_pem_private_key(f.read(), password=None)


class Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id):
        return private_key

    def resolve_public_key(self, key_id):
        return private_key.public_key()


request = requests.Request(method, url, data=body).prepare()
components = ["@method", "@authority", "@path", "@query"]
HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).sign(
    request,
    key_id=keyid,
    nonce=secrets.token_urlsafe(16),
    covered_component_ids=components,
    body=body,  # adds Content-Digest and covers it
)
response = requests.Session().send(request)
print(response.status_code)
print(response.text)
