#!/usr/bin/env python3
"""Self-test for tests/oidc/provider.mjs (the test OpenID provider).

Runs the provider for real and checks, without a browser (Python requests):
discovery, an authorization-code + PKCE S256 flow through the dev login form,
the token exchange with client_secret_basic, the ID token's claims, code replay
refusal, PKCE enforcement, POST /test/sign, key files (--new-key, OIDC_KEYS,
OIDC_KEYS_OUT) and clean exit on SIGTERM.  Then (unless --no-browser) it drives
the same flow in headless Chromium via Selenium with the system chromedriver,
against a tiny local http.server that receives the redirect.

Usage:  python3 tests/oidc/selftest.py [--no-browser]
Needs:  `npm ci` done in tests/oidc; pip requests (+ selenium for the browser
part); Debian chromium + chromium-driver for the browser part.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_ID = "keyward-test"
CLIENT_SECRET = "s3cret:with/odd+chars"  # exercises form-encoding in Basic auth
GROUPS = {"alice": ["admins", "devs"], "bob": []}
PROCS = []
FAILURES = []
PASSED = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    (PASSED if cond else FAILURES).append(what)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(token):
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def verify_rs256(token, jwks):
    """Verify an RS256 JWT against a public JWKS; None if cryptography is absent."""
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:
        return None
    header, _ = jwt_parts(token)
    key = next((k for k in jwks["keys"] if k["kid"] == header["kid"]), None)
    if key is None:
        return False
    n = int.from_bytes(b64url_decode(key["n"]), "big")
    e = int.from_bytes(b64url_decode(key["e"]), "big")
    pub = rsa.RSAPublicNumbers(e, n).public_key()
    signing_input, sig = token.rsplit(".", 1)
    try:
        pub.verify(b64url_decode(sig), signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- processes --
def start_provider(redirect_uri, extra_env=None):
    env = dict(os.environ)
    env.update({
        "OIDC_PORT": "0",
        "OIDC_CLIENTS": json.dumps([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
        }]),
        "OIDC_GROUPS": json.dumps(GROUPS),
    })
    env.update(extra_env or {})
    p = subprocess.Popen(["node", os.path.join(HERE, "provider.mjs")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    PROCS.append(p)
    line = p.stdout.readline()
    m = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:\d+)\n", line)
    if not m:
        p.kill()
        raise RuntimeError(f"provider did not start: {line!r} {p.stderr.read()}")
    # Keep draining stderr so the provider never blocks on a full pipe.
    threading.Thread(target=lambda: [sys.stderr.write("  [op] " + l) for l in p.stderr
                                     if "WARNING" not in l], daemon=True).start()
    return p, m.group(1)


def stop_provider(p):
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


class CallbackHandler(BaseHTTPRequestHandler):
    received = []

    def do_GET(self):
        u = urlparse(self.path)
        if u.path != "/callback":
            self.send_response(404)
            self.end_headers()
            return
        print(f"  [callback] {self.path}", flush=True)
        CallbackHandler.received.append(parse_qs(u.query))
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body><h1 id='done'>callback received</h1></body></html>")

    def log_message(self, *args):
        pass


# --------------------------------------------------------------- OIDC pieces --
def new_auth_request(disc, redirect_uri, scope="openid profile email", pkce=True):
    verifier = b64url(secrets.token_bytes(32))
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
    }
    if pkce:
        params["code_challenge"] = b64url(hashlib.sha256(verifier.encode()).digest())
        params["code_challenge_method"] = "S256"
    return disc["authorization_endpoint"] + "?" + urlencode(params), params, verifier


def form_of(html, base):
    m = re.search(r'<form[^>]*action="([^"]+)"[^>]*method="post"', html)
    assert m, "no form in page"
    return urljoin(base, unescape(m.group(1)))


def requests_login(sess, auth_url, redirect_uri, login):
    """Follow redirects by hand; fill the dev login form (and consent if shown).
    Returns (callback query dict, list of pages seen)."""
    seen = []
    url = auth_url
    for _ in range(20):
        if url.startswith(redirect_uri):
            return parse_qs(urlparse(url).query), seen
        r = sess.get(url, allow_redirects=False)
        if r.is_redirect:
            url = urljoin(url, r.headers["location"])
            continue
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
        html = r.text
        if 'name="prompt" value="login"' in html:
            seen.append("login")
            r = sess.post(form_of(html, url), data={"prompt": "login", "login": login, "password": "x"},
                          allow_redirects=False)
        elif 'name="prompt" value="consent"' in html:
            seen.append("consent")
            r = sess.post(form_of(html, url), data={"prompt": "consent"}, allow_redirects=False)
        elif "document.forms[0].submit()" in html:
            # oidc-provider's auto-submitting page (e.g. logging out the previous
            # account when another one signs in): post its hidden inputs, as JS would.
            seen.append("autosubmit")
            m = re.search(r'<form method="post" action="([^"]+)"', html)
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
            r = sess.post(urljoin(url, unescape(m.group(1))), data=fields, allow_redirects=False)
        else:
            raise AssertionError("unexpected page: " + html[:500])
        assert r.is_redirect, f"form post gave {r.status_code}: {r.text[:300]}"
        url = urljoin(url, r.headers["location"])
    raise AssertionError("too many redirects")


def token_exchange(disc, code, redirect_uri, verifier, secret=CLIENT_SECRET):
    # client_secret_basic: RFC 6749 2.3.1 form-encodes id and secret first.
    from urllib.parse import quote_plus
    basic = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(secret)}".encode()).decode()
    return requests.post(disc["token_endpoint"], data={
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }, headers={"authorization": "Basic " + basic})


# ----------------------------------------------------------------- scenarios --
def requests_part(redirect_uri, tmp):
    keys_out = os.path.join(tmp, "keys-a.json")
    p, issuer = start_provider(redirect_uri, {"OIDC_KEYS_OUT": keys_out})
    print(f"provider at {issuer}")
    disc = requests.get(issuer + "/.well-known/openid-configuration").json()
    check(disc["issuer"] == issuer, "discovery issuer == http://127.0.0.1:<port>")
    check(disc["code_challenge_methods_supported"] == ["S256"], "discovery: PKCE S256 only")
    check("client_secret_basic" in disc["token_endpoint_auth_methods_supported"], "discovery: client_secret_basic")
    jwks = requests.get(disc["jwks_uri"]).json()
    written = json.load(open(keys_out))
    check([k["kid"] for k in jwks["keys"]] == [k["kid"] for k in written["keys"]] and "d" in written["keys"][0]
          and all("d" not in k for k in jwks["keys"]), "OIDC_KEYS_OUT holds the private key the JWKS serves")

    # Full flow, scope "openid profile" -> preferred_username + groups in the ID token.
    for scope, login in [("openid profile", "alice"), ("openid groups", "alice"), ("openid profile email", "bob")]:
        sess = requests.Session()
        auth_url, params, verifier = new_auth_request(disc, redirect_uri, scope)
        q, pages = requests_login(sess, auth_url, redirect_uri, login)
        check(pages == ["login"], f"[{scope}] pages seen: {pages} (consent auto-granted)")
        check(q.get("state") == [params["state"]] and q.get("iss") == [issuer] and "code" in q,
              f"[{scope}] callback has code, state, iss")
        r = token_exchange(disc, q["code"][0], redirect_uri, verifier)
        check(r.status_code == 200, f"[{scope}] token exchange (client_secret_basic) -> {r.status_code}")
        tok = r.json()
        header, claims = jwt_parts(tok["id_token"])
        print(f"  id_token header={header}\n  id_token claims={json.dumps(claims, sort_keys=True)}")
        check(claims["aud"] == CLIENT_ID and claims["iss"] == issuer and claims["nonce"] == params["nonce"]
              and claims["sub"] == login, f"[{scope}] id_token aud/iss/nonce/sub")
        if "profile" in scope:
            check(claims.get("preferred_username") == login, f"[{scope}] id_token preferred_username={login}")
        if "profile" in scope or "groups" in scope:
            check(claims.get("groups") == GROUPS[login], f"[{scope}] id_token groups={GROUPS[login]}")
        if scope == "openid groups":
            check("preferred_username" not in claims, f"[{scope}] no preferred_username without profile")
        if "email" in scope:
            check(claims.get("email") == f"{login}@example.test", f"[{scope}] id_token email")
        check(verify_rs256(tok["id_token"], jwks) in (True, None), f"[{scope}] id_token signature verifies with JWKS")
        r2 = token_exchange(disc, q["code"][0], redirect_uri, verifier)
        check(r2.status_code == 400 and r2.json().get("error") == "invalid_grant",
              f"[{scope}] replayed code refused: {r2.status_code} {r2.text.strip()}")

    # Second authorization in the same browser session: no login page at all.
    auth_url, params, verifier = new_auth_request(disc, redirect_uri)
    q, pages = requests_login(sess, auth_url, redirect_uri, "ignored")
    check(pages == [] and "code" in q, "existing session: silent redirect with code (no pages)")
    auth_url, params, verifier = new_auth_request(disc, redirect_uri)
    q, pages = requests_login(sess, auth_url + "&prompt=login", redirect_uri, "carol")
    print(f"  prompt=login as another account, pages seen: {pages}")
    r = token_exchange(disc, q["code"][0], redirect_uri, verifier)
    check(r.status_code == 200 and jwt_parts(r.json()["id_token"])[1]["sub"] == "carol"
          and jwt_parts(r.json()["id_token"])[1]["groups"] == [], "prompt=login forces the login page; unknown login -> groups []")

    # PKCE enforcement.
    sess = requests.Session()
    auth_url, params, verifier = new_auth_request(disc, redirect_uri, pkce=False)
    r = sess.get(auth_url, allow_redirects=False)
    loc = parse_qs(urlparse(r.headers.get("location", "")).query)
    check(loc.get("error") == ["invalid_request"], f"authorize without PKCE refused: {loc.get('error_description')}")
    auth_url, params, verifier = new_auth_request(disc, redirect_uri)
    q, _ = requests_login(sess, auth_url, redirect_uri, "alice")
    r = token_exchange(disc, q["code"][0], redirect_uri, b64url(secrets.token_bytes(32)))
    check(r.status_code == 400 and r.json()["error"] == "invalid_grant", "wrong code_verifier -> invalid_grant")
    auth_url, params, verifier = new_auth_request(disc, redirect_uri)
    q, _ = requests_login(sess, auth_url, redirect_uri, "alice")
    r = token_exchange(disc, q["code"][0], redirect_uri, verifier, secret="wrong")
    check(r.status_code == 401 and r.json()["error"] == "invalid_client", "wrong client secret -> 401 invalid_client")

    # /test/sign
    now = int(time.time())
    forged = {"iss": "http://evil.test", "aud": "other", "sub": "alice", "iat": now - 7200, "exp": now - 3600, "nonce": "n"}
    r = requests.post(issuer + "/test/sign", json=forged)
    h, c = jwt_parts(r.text)
    check(r.status_code == 200 and c == forged and h["kid"] == jwks["keys"][0]["kid"] and h["alg"] == "RS256"
          and verify_rs256(r.text, jwks) in (True, None), "/test/sign signs claims verbatim with the JWKS key")
    r = requests.post(issuer + "/test/sign?kid=nope", json=forged)
    check(r.status_code == 404, "/test/sign?kid=unknown -> 404")
    rc = stop_provider(p)
    check(rc == 0, f"SIGTERM -> exit code {rc}")

    # Key rotation: old key + new key, served together; --new-key CLI.
    new_key = os.path.join(tmp, "key-b.json")
    out = subprocess.run(["node", os.path.join(HERE, "provider.mjs"), "--new-key", new_key],
                         capture_output=True, text=True, check=True)
    kb = json.load(open(new_key))
    check(kb["kid"] == out.stdout.strip() and kb["alg"] == "RS256" and "d" in kb, "--new-key writes a private RS256 JWK")
    ka = written["keys"][0]
    both = os.path.join(tmp, "keys-ba.json")
    json.dump({"keys": [kb, ka]}, open(both, "w"))
    p, issuer = start_provider(redirect_uri, {"OIDC_KEYS": both})
    disc = requests.get(issuer + "/.well-known/openid-configuration").json()
    jwks = requests.get(disc["jwks_uri"]).json()
    check([k["kid"] for k in jwks["keys"]] == [kb["kid"], ka["kid"]], "OIDC_KEYS: JWKS serves both keys")
    sess = requests.Session()
    auth_url, params, verifier = new_auth_request(disc, redirect_uri)
    q, _ = requests_login(sess, auth_url, redirect_uri, "alice")
    idt = token_exchange(disc, q["code"][0], redirect_uri, verifier).json()["id_token"]
    check(jwt_parts(idt)[0]["kid"] == kb["kid"], "ID tokens are signed with the FIRST key of OIDC_KEYS")
    r = requests.post(f"{issuer}/test/sign?kid={ka['kid']}", json={"x": 1})
    check(jwt_parts(r.text)[0]["kid"] == ka["kid"] and verify_rs256(r.text, jwks) in (True, None),
          "/test/sign?kid=<second key> signs with that key")
    check(stop_provider(p) == 0, "SIGTERM -> exit 0")


def browser_part(redirect_uri, consent_mode):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    p, issuer = start_provider(redirect_uri, {"OIDC_CONSENT": consent_mode})
    disc = requests.get(issuer + "/.well-known/openid-configuration").json()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        wait = WebDriverWait(driver, 15)
        CallbackHandler.received.clear()
        auth_url, params, verifier = new_auth_request(disc, redirect_uri, "openid profile email")
        driver.get(auth_url)
        # Login page (devInteractions): any login, any non-empty password.
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[name='login']")))
        print(f"  [browser] login page: h1={driver.find_element(By.TAG_NAME, 'h1').text!r} url={driver.current_url}")
        driver.find_element(By.CSS_SELECTOR, "input[name='login']").send_keys("alice")
        driver.find_element(By.CSS_SELECTOR, "input[name='password']").send_keys("anything")
        driver.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
        if consent_mode == "prompt":
            btn = wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@type='submit' and normalize-space()='Continue']")))
            print(f"  [browser] consent page: h1={driver.find_element(By.TAG_NAME, 'h1').text!r} url={driver.current_url}")
            btn.click()
        wait.until(EC.presence_of_element_located((By.ID, "done")))
        print(f"  [browser] landed on {driver.current_url}")
        q = CallbackHandler.received[-1]
        check(q.get("state") == [params["state"]] and "code" in q,
              f"[browser, OIDC_CONSENT={consent_mode}] callback got code + state")
        r = token_exchange(disc, q["code"][0], redirect_uri, verifier)
        claims = jwt_parts(r.json()["id_token"])[1]
        check(claims["preferred_username"] == "alice" and claims["groups"] == GROUPS["alice"]
              and claims["nonce"] == params["nonce"], f"[browser, OIDC_CONSENT={consent_mode}] id_token claims: "
              f"preferred_username={claims['preferred_username']} groups={claims['groups']}")
    finally:
        driver.quit()
        check(stop_provider(p) == 0, "SIGTERM -> exit 0")


def main():
    browser = "--no-browser" not in sys.argv
    cb = ThreadingHTTPServer(("127.0.0.1", 0), CallbackHandler)
    threading.Thread(target=cb.serve_forever, daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{cb.server_address[1]}/callback"
    tmp = tempfile.mkdtemp(prefix="oidc-selftest-")
    try:
        requests_part(redirect_uri, tmp)
        if browser:
            browser_part(redirect_uri, "auto")
            browser_part(redirect_uri, "prompt")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        cb.shutdown()
        cb.server_close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILURES)} failed")
    if FAILURES:
        print("failures:\n  " + "\n  ".join(FAILURES))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
