//! The browser pages (SPEC §14): the redirect to the sign-in page, the sign-in form, sign-out
//! and the account page — over raw sockets and a plain HTTP client (CSRF, open redirects,
//! escaping, headers, cookies), then in a real browser (headless Chromium through Selenium,
//! tests/browser/pages.py), with passwords, TOTP and a real OpenID provider (npm's
//! oidc-provider, tests/oidc).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, echoed, echoed_header, free_port, raw_request, Keyward, Setup};
use reqwest::blocking::Client;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROME_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,\
                             image/avif,image/webp,*/*;q=0.8";
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

fn pages(extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: format!("browser:\n  sign_in: true\n  title: Example Corp\n{extra}"),
        ..Setup::default()
    });
    kw.add_user("alice", "alice-password", &[]);
    kw
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The CSRF token the sign-in page gives a new browser: (cookie value, form field).
fn csrf(kw: &Keyward) -> String {
    let resp = no_redirects()
        .get(kw.url("/.keyward/sign-in"))
        .header("accept", CHROME_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .strip_prefix("keyward_csrf=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = resp.text().unwrap();
    assert!(html.contains(&format!("name=\"csrf\" value=\"{token}\"")));
    token
}

fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A sign-in post as a browser sends it (with the CSRF cookie and field).
fn post_sign_in(kw: &Keyward, csrf: &str, fields: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut all = vec![("csrf", csrf)];
    all.extend_from_slice(fields);
    no_redirects()
        .post(kw.url("/.keyward/sign-in"))
        .header("cookie", format!("keyward_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", kw.url("").trim_end_matches('/'))
        .body(form(&all))
        .send()
        .unwrap()
}

fn token_of(resp: &reqwest::blocking::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("token="))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .filter(|t| !t.is_empty())
}

#[test]
fn browsers_on_protected_routes_go_to_the_sign_in_page_and_programs_keep_their_401() {
    let kw = pages("");
    let before = kw.upstream().requests(); // the harness's readiness probe went through
    let http = no_redirects();
    let resp = http
        .get(kw.url("/app/page?x=1&y=%2F"))
        .header("accept", CHROME_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        "/.keyward/sign-in?rd=%2Fapp%2Fpage%3Fx%3D1%26y%3D%252F"
    );
    assert_eq!(resp.headers()["vary"], "Accept");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    // Programs, other methods and other credentials keep the 401 (and its challenge).
    for (method, accept, extra) in [
        ("GET", "application/json", None),
        ("GET", "*/*", None),
        ("POST", CHROME_ACCEPT, None),
        (
            "GET",
            CHROME_ACCEPT,
            Some(("authorization", "Basic YWxpY2U6d3Jvbmc=")),
        ),
        ("GET", CHROME_ACCEPT, Some(("argus-api-key", "1/2/3"))),
    ] {
        let mut request = http
            .request(method.parse().unwrap(), kw.url("/app/page"))
            .header("accept", accept);
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        let resp = request.send().unwrap();
        assert_eq!(resp.status(), 401, "{method} {accept} {extra:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    // The same bytes over a raw socket: no client helps.
    let raw = raw_request(
        kw.proxy,
        b"GET /app/%2e%2e/x HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.status, 303);
    assert!(raw
        .header("location")
        .unwrap()
        .starts_with("/.keyward/sign-in?rd="));
    assert_eq!(
        kw.upstream().requests(),
        before,
        "nothing reached the upstream"
    );
}

#[test]
fn without_browser_sign_in_the_pages_do_not_exist_and_browsers_get_the_401() {
    let kw = Keyward::start();
    let before = kw.upstream().requests(); // the harness's readiness probe went through
    let http = no_redirects();
    let resp = http
        .get(kw.url("/app"))
        .header("accept", CHROME_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    for path in [
        "/.keyward/sign-in",
        "/.keyward/account",
        "/.KEYWARD/sign-in",
        "/.keyward",
        "/.Keyward/x",
    ] {
        let resp = http.get(kw.url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    // Other spellings of the namespace, as raw bytes: percent-encoded, with dot segments, with
    // slashes merged. None is forwarded, whatever status it gets.
    for target in [
        "/%2ekeyward/sign-in",
        "/%2Ekeyward/account",
        "/x/../.keyward/sign-in",
        "//.keyward/sign-in",
    ] {
        let raw = raw_request(
            kw.proxy,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(matches!(raw.status, 400 | 404), "{target}: {}", raw.status);
    }
    assert_eq!(
        kw.upstream().requests(),
        before,
        "keyward's namespace is never forwarded"
    );
}

#[test]
fn the_pages_send_strict_headers_and_no_script() {
    let kw = pages("");
    let resp = client().get(kw.url("/.keyward/sign-in")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-security-policy"], CSP);
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Path=/; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    let html = resp.text().unwrap();
    assert!(html.contains("<title>Sign in · Example Corp</title>"));
    assert!(!html.to_ascii_lowercase().contains("<script"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no third-party resource"
    );
    let css = client().get(kw.url("/.keyward/style.css")).send().unwrap();
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    // Other methods, other paths.
    assert_eq!(
        client()
            .put(kw.url("/.keyward/sign-in"))
            .send()
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        client()
            .get(kw.url("/.keyward/nope"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client()
            .get(kw.url("/.keyward/oidc/start"))
            .send()
            .unwrap()
            .status(),
        404,
        "no provider configured"
    );
}

#[test]
fn signing_in_mints_a_token_exactly_as_the_token_api_does() {
    let kw = pages("");
    let csrf = csrf(&kw);
    let resp = post_sign_in(
        &kw,
        &csrf,
        &[
            ("name", "alice"),
            ("password", "alice-password"),
            ("rd", "/app/x?y=1"),
        ],
    );
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/app/x?y=1");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    let token = token_of(&resp).unwrap();
    let echo = echoed(
        client()
            .get(kw.url("/app/x"))
            .header(
                "cookie",
                format!("token={token}; keyward_csrf={csrf}; app=1"),
            )
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("alice"));
    assert_eq!(echoed_header(&echo, "x-keyward-auth-method"), Some("TOKEN"));
    assert_eq!(
        echoed_header(&echo, "cookie"),
        Some("app=1"),
        "keyward's cookies stay keyward's"
    );
    // The token API lists it: it is a token like any other.
    let listed = client()
        .get(kw.url("/.TOKEN/"))
        .header("cookie", format!("token={token}"))
        .send()
        .unwrap();
    assert_eq!(listed.headers()["castor-object-count"], "1");
    // The audit trail has the mint, by alice with her password.
    let audit = kw.cli(&["audit", "tail", "-n", "20"], None);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("token.mint") && l.contains("alice")),
        "{audit}"
    );
}

#[test]
fn a_wrong_password_gets_the_form_again_with_one_message_and_no_cookie() {
    let kw = pages("");
    let csrf = csrf(&kw);
    let mut bodies = Vec::new();
    for (name, password) in [("alice", "wrong"), ("nobody", "wrong")] {
        let resp = post_sign_in(&kw, &csrf, &[("name", name), ("password", password)]);
        assert_eq!(resp.status(), 401);
        assert!(token_of(&resp).is_none());
        let html = resp.text().unwrap();
        assert!(html.contains("That name, password or code is not right."));
        bodies.push(html.replace(name, "NAME"));
    }
    assert_eq!(
        bodies[0], bodies[1],
        "an unknown name and a wrong password look alike"
    );
    let resp = post_sign_in(&kw, &csrf, &[("name", "alice"), ("password", "")]);
    assert_eq!(resp.status(), 400);
}

#[test]
fn a_post_without_the_matching_csrf_token_is_refused_and_signs_nobody_in() {
    let kw = pages("");
    let token = csrf(&kw);
    let creds = form(&[
        ("name", "alice"),
        ("password", "alice-password"),
        ("csrf", &token),
    ]);
    let no_field = form(&[("name", "alice"), ("password", "alice-password")]);
    let other = form(&[
        ("name", "alice"),
        ("password", "alice-password"),
        ("csrf", "A".repeat(43).as_str()),
    ]);
    let cases: [(&str, String, &str); 5] = [
        ("no cookie", creds.clone(), ""),
        ("no field", no_field, "keyward_csrf="),
        ("another token", other, "keyward_csrf="),
        (
            "two cookies",
            creds.clone(),
            "keyward_csrf=X; keyward_csrf=",
        ),
        ("text/plain", creds.clone(), "keyward_csrf="),
    ];
    for (what, body, cookie) in cases {
        let cookie = if cookie.is_empty() {
            String::new()
        } else {
            format!("Cookie: {cookie}{token}\r\n")
        };
        let content_type = if what == "text/plain" {
            "text/plain"
        } else {
            "application/x-www-form-urlencoded"
        };
        let request = format!(
            "POST /.keyward/sign-in HTTP/1.1\r\nHost: a\r\n{cookie}Content-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = raw_request(kw.proxy, request.as_bytes());
        assert_eq!(resp.status, 403, "{what}");
        assert!(
            !resp
                .headers
                .iter()
                .any(|(n, v)| n == "set-cookie" && v.starts_with("token=")),
            "{what}: no token"
        );
    }
}

#[test]
fn the_return_path_never_leaves_the_origin() {
    let kw = pages("");
    let csrf = csrf(&kw);
    for evil in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "/.keyward/sign-out",
        "/.//evil.example",
        "/a/..//evil.example",
    ] {
        let resp = post_sign_in(
            &kw,
            &csrf,
            &[
                ("name", "alice"),
                ("password", "alice-password"),
                ("rd", evil),
            ],
        );
        assert_eq!(resp.status(), 303, "{evil:?}");
        assert_eq!(resp.headers()["location"], "/", "{evil:?}");
        let page = client()
            .get(kw.url(&format!(
                "/.keyward/sign-in?rd={}",
                url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
            )))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(page.contains("name=\"rd\" value=\"/\""), "{evil:?}");
    }
}

#[test]
fn every_echoed_field_is_escaped() {
    let kw = pages("");
    let csrf = csrf(&kw);
    let xss = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    // The return path has no space (a path with one goes home, see the_return_path_…).
    let rd = "/a<script>alert(1)</script>\"'>";
    let resp = post_sign_in(&kw, &csrf, &[("name", xss), ("password", "x"), ("rd", rd)]);
    let html = resp.text().unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    // The name comes back escaped (askama writes numeric references) and whole.
    let name = html
        .split("name=\"name\"")
        .nth(1)
        .and_then(|rest| rest.split("value=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{html}"));
    assert!(!name.contains(['<', '>', '\'']), "{name}");
    assert_eq!(unescape_html(name), xss, "{html}");
    // The return path is the URL parser's serialization: percent-encoded, then escaped.
    assert!(
        html.contains("name=\"rd\" value=\"/a%3Cscript%3Ealert(1)%3C/script%3E%22"),
        "{html}"
    );
    let page = client()
        .get(kw.url("/.keyward/sign-in?rd=%2F%22%3E%3Cscript%3E"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!page.contains("\"><script>"));
}

/// The five references an HTML escaper writes, in either spelling, back to their characters.
fn unescape_html(text: &str) -> String {
    [
        ("&#60;", "<"),
        ("&lt;", "<"),
        ("&#62;", ">"),
        ("&gt;", ">"),
        ("&#34;", "\""),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&#x27;", "'"),
        ("&#38;", "&"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(text.to_owned(), |acc, (from, to)| acc.replace(from, to))
}

/// Signs alice in through the form; returns her token and the CSRF token.
fn signed_in(kw: &Keyward) -> (String, String) {
    let csrf = csrf(kw);
    let resp = post_sign_in(
        kw,
        &csrf,
        &[("name", "alice"), ("password", "alice-password")],
    );
    (token_of(&resp).unwrap(), csrf)
}

fn account_post(
    kw: &Keyward,
    path: &str,
    token: &str,
    csrf: &str,
    origin: &str,
    fields: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut all = vec![("csrf", csrf)];
    all.extend_from_slice(fields);
    no_redirects()
        .post(kw.url(path))
        .header("cookie", format!("token={token}; keyward_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", origin)
        .body(form(&all))
        .send()
        .unwrap()
}

#[test]
fn the_account_page_acts_through_the_admin_api_with_the_browsers_token() {
    let kw = pages("");
    let http = no_redirects();
    let resp = http.get(kw.url("/.keyward/account")).send().unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        "/.keyward/sign-in?rd=%2F.keyward%2Faccount"
    );
    let (token, csrf) = signed_in(&kw);
    let origin = kw.url("").trim_end_matches('/').to_owned();
    let page = http
        .get(kw.url("/.keyward/account"))
        .header("cookie", format!("token={token}; keyward_csrf={csrf}"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(html.contains("<span id=\"user\">alice</span>"));
    assert!(
        html.contains("this browser"),
        "the token is marked as this browser's"
    );

    let created = account_post(
        &kw,
        "/.keyward/account/keys",
        &token,
        &csrf,
        &origin,
        &[
            ("description", "ci"),
            ("read_only", "on"),
            ("sources", "127.0.0.1"),
        ],
    );
    assert_eq!(created.status(), 200);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let html = created.text().unwrap();
    let key = html
        .split("<code id=\"new-key\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let echo = echoed(
        client()
            .get(kw.url("/app/k"))
            .header("argus-api-key", &key)
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("alice"));
    let write = client()
        .post(kw.url("/app/k"))
        .header("argus-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(
        write.status(),
        403,
        "the page's read-only box made a read-only key"
    );
    let prefix = key.rsplit_once('/').unwrap().0.to_owned();

    // A cookie-authenticated change from another origin: the admin API's own guard refuses it,
    // even with the right CSRF token.
    let refused = account_post(
        &kw,
        "/.keyward/account/keys/revoke",
        &token,
        &csrf,
        "http://evil.example",
        &[("key", &prefix)],
    );
    assert_eq!(refused.status(), 403);
    assert!(refused.text().unwrap().contains("own origin"));
    assert_eq!(
        client()
            .get(kw.url("/app/k"))
            .header("argus-api-key", &key)
            .send()
            .unwrap()
            .status(),
        200
    );

    let rolled = account_post(
        &kw,
        "/.keyward/account/keys/roll",
        &token,
        &csrf,
        &origin,
        &[("key", &prefix), ("grace", "0")],
    );
    assert_eq!(rolled.status(), 200);
    let html = rolled.text().unwrap();
    let new_key = html
        .split("<code id=\"new-key\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(new_key, key);
    assert_eq!(
        client()
            .get(kw.url("/app/k"))
            .header("argus-api-key", &key)
            .send()
            .unwrap()
            .status(),
        401,
        "rolled without grace"
    );
    let new_prefix = new_key.rsplit_once('/').unwrap().0.to_owned();
    let revoked = account_post(
        &kw,
        "/.keyward/account/keys/revoke",
        &token,
        &csrf,
        &origin,
        &[("key", &new_prefix)],
    );
    assert_eq!(revoked.status(), 303);
    assert_eq!(
        revoked.headers()["location"],
        "/.keyward/account?done=revoked"
    );
    assert_eq!(
        client()
            .get(kw.url("/app/k"))
            .header("argus-api-key", &new_key)
            .send()
            .unwrap()
            .status(),
        401
    );

    // Deleting the browser's own token from the list signs it out.
    let name = client()
        .get(kw.url("/.TOKEN/"))
        .header("cookie", format!("token={token}"))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted = account_post(
        &kw,
        "/.keyward/account/tokens/delete",
        &token,
        &csrf,
        &origin,
        &[("name", &name)],
    );
    assert_eq!(deleted.status(), 303);
    assert_eq!(
        client()
            .get(kw.url("/app"))
            .header("cookie", format!("token={token}"))
            .send()
            .unwrap()
            .status(),
        401
    );
    // Every change is in the audit trail as the admin API's.
    let audit = kw.cli(&["audit", "tail", "-n", "50"], None);
    let audit = String::from_utf8_lossy(&audit.stdout);
    for operation in [
        "apikey.create",
        "apikey.roll",
        "apikey.revoke",
        "token.delete",
    ] {
        assert!(audit.contains(operation), "{operation}: {audit}");
    }
}

#[test]
fn signing_out_deletes_the_token_everywhere_and_clears_the_cookie() {
    let kw = pages("");
    let (token, csrf) = signed_in(&kw);
    let origin = kw.url("").trim_end_matches('/').to_owned();
    let resp = account_post(&kw, "/.keyward/sign-out", &token, &csrf, &origin, &[]);
    assert_eq!(resp.status(), 200);
    let cleared: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    // Expired, not only emptied: the browser keeps nothing of the session.
    assert!(
        cleared.iter().any(|c| c == "token=; path=/; Max-Age=0"),
        "{cleared:?}"
    );
    assert!(resp.text().unwrap().contains("You are signed out"));
    let after = client()
        .get(kw.url("/app"))
        .header("cookie", format!("token={token}"))
        .send()
        .unwrap();
    assert_eq!(after.status(), 401, "the token no longer works");
    // Without the CSRF token a sign-out is refused (no one signs a browser out from elsewhere).
    let (token, _) = signed_in(&kw);
    let resp = no_redirects()
        .post(kw.url("/.keyward/sign-out"))
        .header("cookie", format!("token={token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=x")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        client()
            .get(kw.url("/app"))
            .header("cookie", format!("token={token}"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

fn python(args: &[&str]) {
    let out = Command::new("python3").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
}

/// Where the browser tests put their screenshots: docs/src/images when
/// `KEYWARD_SCREENSHOTS=docs` (to refresh the book's), else a scratch directory.
fn screenshots(scratch: &Path) -> String {
    match std::env::var("KEYWARD_SCREENSHOTS").as_deref() {
        Ok("docs") => concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/images").to_owned(),
        _ => scratch.display().to_string(),
    }
}

#[test]
fn a_real_browser_signs_in_manages_a_key_and_signs_out() {
    let kw = pages("");
    kw.add_user("tina", "tina-password", &[]);
    let totp = kw.enable_totp("tina");
    let secret = totp.get_secret_base32();
    let shots = tempfile::tempdir().unwrap();
    python(&[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/pages.py"),
        "password",
        kw.url("").trim_end_matches('/'),
        "--user",
        "alice",
        "--password",
        "alice-password",
        "--totp-user",
        "tina",
        "--totp-password",
        "tina-password",
        "--totp-secret",
        &secret,
        "--screenshots",
        &screenshots(shots.path()),
    ]);
}

/// npm's oidc-provider on a free port, with keyward's client; stopped when dropped.
struct OpenIdProvider {
    child: Child,
    issuer: String,
}

impl OpenIdProvider {
    fn start(redirect_uri: &str, groups: &str, env: &[(&str, &str)]) -> OpenIdProvider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        let clients = format!(
            r#"[{{"client_id":"keyward","client_secret":"oidc-secret:/+x","redirect_uris":["{redirect_uri}"]}},
                {{"client_id":"other","client_secret":"other-secret","redirect_uris":["{redirect_uri}"]}}]"#
        );
        let mut child = Command::new("node")
            .arg(format!("{dir}/provider.mjs"))
            .env(
                "OIDC_PORT",
                env.iter()
                    .find(|(k, _)| *k == "OIDC_PORT")
                    .map_or("0", |(_, v)| v),
            )
            .env("OIDC_CLIENTS", clients)
            .env("OIDC_GROUPS", groups)
            .envs(env.iter().filter(|(k, _)| *k != "OIDC_PORT").copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (tests/oidc: npm ci)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The provider logs on: its pipe is drained for as long as it runs (a closed pipe
        // would end it at its next line, a full one would stop it).
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let issuer = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"))
            .to_owned();
        OpenIdProvider { child, issuer }
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_keyward(issuer: &str, proxy_port: u16) -> Keyward {
    oidc_keyward_with(issuer, proxy_port, "")
}

fn oidc_keyward_with(issuer: &str, proxy_port: u16, extra: &str) -> Keyward {
    Keyward::start_with(Setup {
        proxy_port: Some(proxy_port),
        env: vec![("KEYWARD_TEST_OIDC_SECRET".into(), "oidc-secret:/+x".into())],
        extra: format!(
            "browser:\n  sign_in: true\nidentity:\n  oidc:\n    issuer: {issuer}\n    client_id: keyward\n    \
             client_secret_env: KEYWARD_TEST_OIDC_SECRET\n    display_name: Test IdP\n    groups_claim: groups\n    \
             groups: {{ secops: [CASE-SECMON-RO], admins: [POWER-USER] }}\n{extra}"
        ),
        ..Setup::default()
    })
}

#[test]
fn a_real_browser_signs_in_at_an_openid_provider() {
    let port = free_port();
    let provider = OpenIdProvider::start(
        &format!("http://127.0.0.1:{port}/.keyward/oidc/callback"),
        r#"{"olga":["secops","staff"]}"#,
        &[],
    );
    let kw = oidc_keyward(&provider.issuer, port);
    let shots = tempfile::tempdir().unwrap();
    python(&[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/pages.py"),
        "oidc",
        kw.url("").trim_end_matches('/'),
        "--login",
        "olga",
        "--expect-function",
        "CASE-SECMON-RO",
        "--screenshots",
        &screenshots(shots.path()),
    ]);
    let users = kw.cli(&["user", "list"], None);
    let users = String::from_utf8_lossy(&users.stdout);
    let olga = users
        .lines()
        .find(|l| l.contains("olga"))
        .unwrap_or_else(|| panic!("{users}"));
    assert!(
        olga.contains("oidc") && olga.contains("CASE-SECMON-RO") && !olga.contains("POWER-USER"),
        "{olga}"
    );
}

/// The provider's answer for a flow keyward started, got without a browser: the flow cookie
/// and the callback URL the provider sends the browser to.
fn provider_answer(kw: &Keyward, login: &str) -> (String, String) {
    let http = no_redirects();
    let start = http
        .get(kw.url("/.keyward/oidc/start?rd=/app/sso"))
        .send()
        .unwrap();
    assert_eq!(start.status(), 303);
    let flow = start.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(flow.starts_with("keyward_oidc="));
    let mut url = start.headers()["location"].to_str().unwrap().to_owned();
    // The provider's own pages, with its cookies, until it sends the browser back to keyward.
    let provider = reqwest::blocking::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = kw.url("/.keyward/oidc/callback");
    for _ in 0..10 {
        if url.starts_with(&callback) {
            return (flow, url);
        }
        let resp = provider.get(&url).send().unwrap();
        let base = reqwest::Url::parse(&url).unwrap();
        if let Some(location) = resp.headers().get("location") {
            url = base.join(location.to_str().unwrap()).unwrap().to_string();
            continue;
        }
        // The login form: post the login (any password is accepted by the dev interactions).
        let html = resp.text().unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let login_url = base.join(action).unwrap();
        let resp = provider
            .post(login_url.clone())
            .form(&[("prompt", "login"), ("login", login), ("password", "any")])
            .send()
            .unwrap();
        let location = resp.headers()["location"].to_str().unwrap();
        url = login_url.join(location).unwrap().to_string();
    }
    panic!("the provider never sent the browser back: {url}");
}

#[test]
fn the_callback_refuses_a_tampered_state_a_replayed_code_and_another_browsers_flow() {
    let port = free_port();
    let provider = OpenIdProvider::start(
        &format!("http://127.0.0.1:{port}/.keyward/oidc/callback"),
        r#"{"olga":["admins"]}"#,
        &[],
    );
    let kw = oidc_keyward(&provider.issuer, port);
    let http = no_redirects();
    let (flow, callback) = provider_answer(&kw, "olga");
    let tampered = callback.replace("state=", "state=x");
    let resp = http.get(&tampered).header("cookie", &flow).send().unwrap();
    assert_eq!(resp.status(), 400, "a tampered state");
    assert!(token_of(&resp).is_none());
    let resp = http.get(&callback).send().unwrap();
    assert_eq!(
        resp.status(),
        400,
        "an answer without the browser's flow cookie (login CSRF)"
    );
    let (other_flow, _) = provider_answer(&kw, "olga");
    let resp = http
        .get(&callback)
        .header("cookie", &other_flow)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400, "another flow's cookie");

    let resp = http.get(&callback).header("cookie", &flow).send().unwrap();
    assert_eq!(resp.status(), 303, "the genuine answer signs in");
    assert_eq!(resp.headers()["location"], "/app/sso");
    let token = token_of(&resp).unwrap();
    let echo = echoed(
        client()
            .get(kw.url("/app/sso"))
            .header("cookie", format!("token={token}"))
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("olga"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some("POWER-USER")
    );
    // The same answer again, flow cookie and all: the provider refuses the used code.
    let resp = http.get(&callback).header("cookie", &flow).send().unwrap();
    assert_eq!(resp.status(), 400, "a replayed code");
    assert!(token_of(&resp).is_none());
    // The sign-in is audited as OIDC.
    let audit = kw.cli(&["audit", "tail", "-n", "20"], None);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("OIDC") && l.contains("olga")),
        "{audit}"
    );
}

#[test]
fn a_provider_that_cannot_be_reached_gets_a_503_page_and_keyward_still_starts() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let kw = oidc_keyward(&dead, free_port());
    let resp = no_redirects()
        .get(kw.url("/.keyward/oidc/start"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().unwrap().contains("cannot be reached"));
    // Password sign-in still works.
    kw.add_user("alice", "alice-password", &[]);
    let (token, _) = signed_in(&kw);
    assert!(!token.is_empty());
}

/// A provider's user named like the token administrator (who may mint tokens for anyone) is not
/// signed in, and no user of that name is made.
#[test]
fn a_provider_cannot_hand_out_the_token_administrators_name() {
    let port = free_port();
    let provider = OpenIdProvider::start(
        &format!("http://127.0.0.1:{port}/.keyward/oidc/callback"),
        r#"{"Admin":["admins"]}"#,
        &[],
    );
    // The harness names `admin` the token administrator (and the bootstrap administrator).
    let kw = oidc_keyward(&provider.issuer, port);
    let (flow, callback) = provider_answer(&kw, "Admin");
    let resp = no_redirects()
        .get(&callback)
        .header("cookie", &flow)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(token_of(&resp).is_none());
    let users = kw.cli(&["user", "list"], None);
    let users = String::from_utf8_lossy(&users.stdout).to_lowercase();
    assert!(!users.lines().any(|l| l.contains("oidc")), "{users}");
}

/// Behind a TLS proxy (`tokens.secure_cookie`) the browser's origin is https: the pages' cookies
/// are `__Host-` and `Secure` (no sibling site can plant them), and signing out — an admin call
/// with the browser's https `Origin` — really ends the token.
#[test]
fn behind_a_tls_proxy_the_cookies_are_host_only_and_signing_out_ends_the_token() {
    let kw = Keyward::start_with(Setup {
        extra: "browser:\n  sign_in: true\n".into(),
        secure_cookie: true,
        ..Setup::default()
    });
    kw.add_user("alice", "alice-password", &[]);
    let origin = format!("https://127.0.0.1:{}", kw.proxy.port());
    let page = no_redirects()
        .get(kw.url("/.keyward/sign-in"))
        .header("accept", CHROME_ACCEPT)
        .send()
        .unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Host-keyward_csrf=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    let csrf = cookie
        .strip_prefix("__Host-keyward_csrf=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // A cookie of the plain name (as a sibling site could set) is not the page's.
    let planted = no_redirects()
        .post(kw.url("/.keyward/sign-in"))
        .header("cookie", format!("keyward_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &origin)
        .body(form(&[
            ("csrf", &csrf),
            ("name", "alice"),
            ("password", "alice-password"),
        ]))
        .send()
        .unwrap();
    assert_eq!(planted.status(), 403);
    assert!(token_of(&planted).is_none());
    let signed_in = no_redirects()
        .post(kw.url("/.keyward/sign-in"))
        .header("cookie", format!("__Host-keyward_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &origin)
        .body(form(&[
            ("csrf", &csrf),
            ("name", "alice"),
            ("password", "alice-password"),
        ]))
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let token = token_of(&signed_in).unwrap();
    let out = no_redirects()
        .post(kw.url("/.keyward/sign-out"))
        .header(
            "cookie",
            format!("token={token}; __Host-keyward_csrf={csrf}"),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &origin)
        .body(form(&[("csrf", &csrf)]))
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    let after = client()
        .get(kw.url("/app"))
        .header("cookie", format!("token={token}"))
        .send()
        .unwrap();
    assert_eq!(after.status(), 401, "the token no longer works");
}

/// An authenticator code that is not six digits is a wrong code: the form again, nothing sent on.
#[test]
fn a_malformed_authenticator_code_is_a_wrong_code() {
    let kw = pages("");
    let csrf = csrf(&kw);
    for code in ["١٢٣٤٥٦", "12345\r\nX-Injected: 1", "1234567", "abcdef"] {
        let resp = post_sign_in(
            &kw,
            &csrf,
            &[
                ("name", "alice"),
                ("password", "alice-password"),
                ("totp", code),
            ],
        );
        assert_eq!(resp.status(), 401, "{code:?}");
        assert!(token_of(&resp).is_none());
        assert!(resp
            .text()
            .unwrap()
            .contains("That name, password or code is not right."));
    }
}
