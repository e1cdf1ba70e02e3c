#!/usr/bin/env python3
"""keyward's browser pages in a real browser: headless Debian Chromium driven by Selenium
through the system chromedriver. Started by tests/browser.rs against a keyward it started;
exits non-zero (with the failing check on stderr) when the pages do not behave.

  pages.py password BASE --user NAME --password PW --totp-user NAME --totp-password PW
           --totp-secret BASE32 [--screenshots DIR]
  pages.py oidc BASE --login NAME [--screenshots DIR]

No request leaves loopback: the browser starts with no network features (no component
updates, no safe browsing, no sync) and every address the test uses is 127.0.0.1/localhost.
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,900",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver, by, value, timeout=15):
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((by, value)))


def path_of(driver):
    parsed = urllib.parse.urlparse(driver.current_url)
    return parsed.path + (("?" + parsed.query) if parsed.query else "")


def echoed(driver):
    """The upstream's JSON echo, as Chromium shows a JSON answer."""
    text = driver.find_element(By.TAG_NAME, "body").text
    return json.loads(text)


def header(echo, name):
    values = echo["headers"].get(name)
    return values[0] if values else None


def totp(secret_base32, at=None):
    key = base64.b32decode(secret_base32.upper() + "=" * (-len(secret_base32) % 8))
    counter = int((at if at is not None else time.time()) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def sign_in(driver, name, password, code=None):
    wait_for(driver, By.ID, "name")
    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    if code is not None:
        driver.find_element(By.ID, "totp").send_keys(code)
    driver.find_element(By.ID, "sign-in").click()


def shot(driver, directory, name):
    if directory:
        os.makedirs(directory, exist_ok=True)
        driver.save_screenshot(os.path.join(directory, name))
        print(f"screenshot: {name}", flush=True)


class AttackerSite:
    """Another origin (localhost, not 127.0.0.1: another site to the browser) serving pages
    that try to use keyward's: a cross-site form post and a frame."""

    def __init__(self, base):
        target = base.replace("127.0.0.1", "127.0.0.1")
        pages = {
            "/post.html": f"""<!doctype html><form id=f method=post action="{target}/.keyward/account/keys">
<input name=csrf value=guessed><input name=description value=stolen>
<button id=go type=submit>go</button></form>""",
            "/frame.html": f"""<!doctype html><iframe id=victim src="{target}/.keyward/sign-in" width=600 height=400></iframe>""",
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def curl_status(url, key):
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Argus-API-Key: {key}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


def password_flows(args):
    base = args.base.rstrip("/")
    driver = browser()
    attacker = AttackerSite(base)
    try:
        # A protected page: the sign-in form instead of a 401.
        driver.get(f"{base}/app/page?x=1")
        wait_for(driver, By.ID, "name")
        check(path_of(driver).startswith("/.keyward/sign-in?rd="), "a protected page sends the browser to the sign-in page")
        check(
            driver.find_element(By.NAME, "csrf").get_attribute("value") != "",
            "the form carries a CSRF token",
        )
        shot(driver, args.screenshots, "sign-in.png")

        # Wrong password: the form again, one generic message, no token.
        sign_in(driver, args.user, "not-the-password")
        error = wait_for(driver, By.ID, "error").text
        check(error == "That name, password or code is not right.", f"a wrong password gets the generic message ({error!r})")
        check(driver.get_cookie("token") is None, "a wrong password sets no token cookie")
        check(driver.find_element(By.ID, "name").get_attribute("value") == args.user, "the name is kept")

        # The right one: back on the page, as that user, with an HttpOnly cookie.
        driver.find_element(By.ID, "password").send_keys(args.password)
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, 15).until(lambda d: path_of(d) == "/app/page?x=1")
        echo = echoed(driver)
        check(header(echo, "x-keyward-user") == args.user, "the upstream sees the signed-in user")
        check(echo["path"] == "/app/page" and echo["query"] == "x=1", "back on the page that was asked for")
        cookie = driver.get_cookie("token")
        check(cookie is not None and cookie["httpOnly"], "the token cookie is HttpOnly")
        check(cookie.get("sameSite") == "Lax", "the token cookie is SameSite=Lax")
        check(
            header(echo, "cookie") is None or "keyward_csrf" not in header(echo, "cookie"),
            "the pages' CSRF cookie never reaches the upstream",
        )
        check(driver.execute_script("return document.cookie").find("token=") < 0, "scripts cannot read the token")

        # The account page: create a key (shown once, works with curl), then revoke it.
        driver.get(f"{base}/.keyward/account")
        wait_for(driver, By.ID, "user")
        check(driver.find_element(By.ID, "user").text == args.user, "the account page names the user")
        driver.find_element(By.ID, "description").send_keys("made in the browser <b>")
        driver.find_element(By.ID, "create").click()
        key = wait_for(driver, By.ID, "new-key").text.strip()
        check(key.count("/") == 2, "the new key is shown")
        shot(driver, args.screenshots, "account.png")
        check(curl_status(f"{base}/app/with-key", key) == "200", "the key works with curl")
        prefix = key.rsplit("/", 1)[0]
        driver.get(f"{base}/.keyward/account")
        wait_for(driver, By.ID, "keys")
        check(key not in driver.page_source, "the key is not shown again")
        check("made in the browser &lt;b&gt;" in driver.page_source, "the description is escaped")
        row = driver.find_element(By.CSS_SELECTOR, f"tr[data-prefix='{prefix}']")
        row.find_element(By.CSS_SELECTOR, "form[action='/.keyward/account/keys/revoke'] button").click()
        note = wait_for(driver, By.ID, "note").text
        check(note == "Key revoked.", "the key is revoked")
        check(curl_status(f"{base}/app/with-key", key) == "401", "a revoked key is refused")

        # A form post without the CSRF token: 403, nothing created.
        driver.execute_script(
            "document.querySelector('#create-key input[name=csrf]').remove();"
            "document.getElementById('description').value = 'no csrf';"
        )
        driver.find_element(By.ID, "create").click()
        wait_for(driver, By.ID, "message")
        check("expired" in driver.title.lower() or "expired" in driver.page_source.lower(), "a post without the CSRF token is refused")
        driver.get(f"{base}/.keyward/account")
        wait_for(driver, By.ID, "user")
        check("no csrf" not in driver.page_source, "nothing was created without the token")

        # Another site's form post (it cannot know the token, and the cookie is SameSite=Strict).
        driver.get(f"{attacker.origin}/post.html")
        driver.find_element(By.ID, "go").click()
        wait_for(driver, By.ID, "message")
        check(urllib.parse.urlparse(driver.current_url).path == "/.keyward/account/keys", "the cross-site post reached keyward")
        check("expired" in driver.page_source.lower(), "a cross-site post is refused")
        driver.get(f"{base}/.keyward/account")
        wait_for(driver, By.ID, "user")
        check("stolen" not in driver.page_source, "nothing was created by another site")

        # Clickjacking: no other page may frame the pages.
        driver.get(f"{attacker.origin}/frame.html")
        time.sleep(1)
        driver.switch_to.frame("victim")
        framed = driver.find_elements(By.ID, "name")
        driver.switch_to.default_content()
        check(framed == [], "another site cannot frame the sign-in page")

        # Sign out: the token is gone, the page asks again.
        driver.get(f"{base}/.keyward/account")
        wait_for(driver, By.ID, "sign-out").click()
        wait_for(driver, By.ID, "signed-out")
        shot(driver, args.screenshots, "signed-out.png")
        check(driver.get_cookie("token") is None, "signing out clears the cookie")
        driver.get(f"{base}/app/page")
        wait_for(driver, By.ID, "name")
        check(path_of(driver).startswith("/.keyward/sign-in"), "after signing out the page asks again")

        # rd never leaves the origin.
        for evil in ("https://evil.example/", "//evil.example", "/\\evil.example"):
            driver.get(f"{base}/.keyward/sign-in?rd=" + urllib.parse.quote(evil, safe=""))
            sign_in(driver, args.user, args.password)
            WebDriverWait(driver, 15).until(lambda d: not path_of(d).startswith("/.keyward/sign-in"))
            landed = urllib.parse.urlparse(driver.current_url)
            check(
                f"{landed.scheme}://{landed.netloc}" == base and landed.path == "/",
                f"rd={evil!r} stays on keyward's origin ({driver.current_url})",
            )

        # A TOTP user: the code field; a wrong code is refused, the right one signs in.
        driver.delete_all_cookies()
        driver.get(f"{base}/app/admin-page")
        sign_in(driver, args.totp_user, args.totp_password, "000000" if totp(args.totp_secret) != "000000" else "111111")
        error = wait_for(driver, By.ID, "error").text
        check(error == "That name, password or code is not right.", "a wrong TOTP code is refused")
        check(driver.get_cookie("token") is None, "a wrong code sets no cookie")
        driver.find_element(By.ID, "password").send_keys(args.totp_password)
        driver.find_element(By.ID, "totp").send_keys(totp(args.totp_secret))
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, 15).until(lambda d: path_of(d) == "/app/admin-page")
        echo = echoed(driver)
        check(header(echo, "x-keyward-user") == args.totp_user, "the TOTP user is signed in")
        check(header(echo, "x-keyward-security-level") == "ADMINISTRATIVE", "with the code, the token is ADMINISTRATIVE")
    finally:
        attacker.close()
        driver.quit()


def oidc_flow(args):
    base = args.base.rstrip("/")
    driver = browser()
    try:
        driver.get(f"{base}/app/sso?y=2")
        wait_for(driver, By.ID, "oidc")
        shot(driver, args.screenshots, "sign-in-oidc.png")
        driver.find_element(By.ID, "oidc").click()
        # The provider's own login page (oidc-provider's development interactions).
        wait_for(driver, By.CSS_SELECTOR, "input[name='login']")
        check(not urllib.parse.urlparse(driver.current_url).netloc.endswith(urllib.parse.urlparse(base).netloc), "the browser is at the provider")
        driver.find_element(By.CSS_SELECTOR, "input[name='login']").send_keys(args.login)
        driver.find_element(By.CSS_SELECTOR, "input[name='password']").send_keys("any")
        driver.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
        WebDriverWait(driver, 20).until(lambda d: path_of(d) == "/app/sso?y=2")
        echo = echoed(driver)
        check(header(echo, "x-keyward-user") == args.login, "the upstream sees the OIDC user")
        functions = header(echo, "x-keyward-functions") or ""
        check(args.expect_function in functions.split(","), f"functions come from the groups claim ({functions!r})")
        cookie = driver.get_cookie("token")
        check(cookie is not None and cookie["httpOnly"], "the OIDC sign-in ends with an HttpOnly token cookie")
        check(driver.get_cookie("keyward_oidc") is None, "the flow cookie is gone")
    finally:
        driver.quit()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("flow", choices=["password", "oidc"])
    parser.add_argument("base")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--totp-user")
    parser.add_argument("--totp-password")
    parser.add_argument("--totp-secret")
    parser.add_argument("--login")
    parser.add_argument("--expect-function")
    parser.add_argument("--screenshots")
    args = parser.parse_args()
    if args.flow == "password":
        password_flows(args)
    else:
        oidc_flow(args)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
