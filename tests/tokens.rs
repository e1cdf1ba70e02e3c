//! Gateway tokens end to end (SPEC §4): minting, the cookie on proxied requests, listing,
//! deleting, the token administrator, tenants, expiry and locking.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, echoed, echoed_header, Keyward, ADMIN_PASSWORD};
use reqwest::blocking::Response;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn start() -> Keyward {
    let kw = Keyward::start();
    kw.add_user("john", "john-password", &[]);
    kw.add_user("mary", "mary-password", &[]);
    kw
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(
    kw: &Keyward,
    user: &str,
    password: &str,
    headers: &[(&str, &str)],
    query: &str,
) -> Response {
    let mut request = client()
        .post(kw.url(&format!("/.TOKEN/{query}")))
        .basic_auth(user, Some(password));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().unwrap()
}

/// Mints with Basic and returns the token from the Set-Cookie header.
fn mint_token(kw: &Keyward, user: &str, password: &str) -> String {
    let resp = mint(kw, user, password, &[], "");
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .strip_prefix("token=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 32);
    token
}

fn with_cookie(kw: &Keyward, method: &str, path: &str, token: &str) -> Response {
    client()
        .request(method.parse().unwrap(), kw.url(path))
        .header("Cookie", format!("theme=dark; token={token}"))
        .send()
        .unwrap()
}

fn listing(resp: Response) -> (usize, Vec<Value>) {
    assert_eq!(resp.status(), 200);
    let count: usize = resp.headers()["castor-object-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (count, resp.json().unwrap())
}

#[test]
fn mint_use_list_and_delete_with_itself() {
    let kw = start();
    let resp = mint(
        &kw,
        "john",
        "john-password",
        &[("X-Custom-Meta-Source", "laptop")],
        "",
    );
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    let token = cookie[6..38].to_owned();
    let body = resp.text().unwrap();
    assert!(
        body.starts_with(&format!("Token {token} expires 20")),
        "{body}"
    );

    // The cookie authenticates proxied requests, and is not forwarded (other cookies are).
    let echo = echoed(with_cookie(&kw, "GET", "/x", &token));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(echoed_header(&echo, "x-keyward-auth-method"), Some("TOKEN"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("DEFAULT")
    );
    assert_eq!(echoed_header(&echo, "cookie"), Some("theme=dark"));
    // Alone, as API clients send it, the token cookie leaves no Cookie header behind.
    let echo = echoed(
        client()
            .get(kw.url("/x"))
            .header("Cookie", format!("token={token}"))
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(echoed_header(&echo, "cookie"), None);

    mint_token(&kw, "john", "john-password");
    mint_token(&kw, "john", "john-password");
    let (count, tokens) = listing(with_cookie(&kw, "GET", "/.TOKEN/?format=json", &token));
    assert_eq!(count, 3);
    let first = &tokens[0];
    assert_eq!(first["x_owner_meta"], "john");
    assert_eq!(first["x_token_domain_meta"], "127.0.0.1");
    assert_eq!(first["x_custom_meta_source"], "laptop");
    let lifepoint = first["lifepoint"].as_str().unwrap();
    assert!(
        lifepoint.starts_with('[') && lifepoint.ends_with("GMT] reps=2,[] delete"),
        "{lifepoint}"
    );
    let name = first["name"].as_str().unwrap();
    assert_eq!(name.len(), 32);
    assert_ne!(name, token, "the listing shows a handle, never the token");
    assert!(!tokens.iter().any(|t| t.to_string().contains(&token)));

    // Deleting a token with itself clears the cookie.
    let resp = with_cookie(&kw, "DELETE", &format!("/.TOKEN/{token}"), &token);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "0");
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
    assert_eq!(
        with_cookie(&kw, "GET", "/x", &token).status(),
        401,
        "deletion is effective at once"
    );

    // Deleting by name with Basic does not touch cookies.
    let (_, tokens) = listing(
        client()
            .get(kw.url("/.TOKEN/?format=json"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap(),
    );
    assert_eq!(tokens.len(), 2);
    let resp = client()
        .delete(kw.url(&format!("/.TOKEN/{}", tokens[0]["name"].as_str().unwrap())))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none());
    // Someone else's token is not found for mary.
    let resp = client()
        .delete(kw.url(&format!("/.TOKEN/{}", tokens[1]["name"].as_str().unwrap())))
        .basic_auth("mary", Some("mary-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[test]
fn setcookie_false_and_expiry_forms() {
    let kw = start();
    let resp = mint(&kw, "john", "john-password", &[], "?setcookie=false");
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("set-cookie").is_none());
    let token = resp.headers()["gateway-token"].to_str().unwrap().to_owned();
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 200);

    let posix = (now() + 3600).to_string();
    for form in ["+1", "2099-01-01", "2099-06-01T12:00:00Z", posix.as_str()] {
        let resp = mint(
            &kw,
            "john",
            "john-password",
            &[("X-User-Token-Expires-Meta", form)],
            "",
        );
        // tokens.max_ttl defaults to 365 days: 2099 is beyond it.
        let expected = if form.starts_with("2099") { 400 } else { 201 };
        assert_eq!(resp.status(), expected, "{form}");
    }
    let next_year = (1970 + now() / 31_557_600 + 1).to_string();
    assert_eq!(
        mint(
            &kw,
            "john",
            "john-password",
            &[("X-User-Token-Expires-Meta", &next_year)],
            ""
        )
        .status(),
        201,
        "YYYY"
    );
    for bad in ["2001", "yesterday", "+x", "+400"] {
        let resp = mint(
            &kw,
            "john",
            "john-password",
            &[("X-User-Token-Expires-Meta", bad)],
            "",
        );
        assert_eq!(resp.status(), 400, "{bad}");
    }
}

#[test]
fn expired_or_unknown_tokens_are_anonymous_and_cleared() {
    let kw = start();
    let soon = (now() + 2).to_string();
    let resp = mint(
        &kw,
        "john",
        "john-password",
        &[("X-User-Token-Expires-Meta", &soon)],
        "",
    );
    assert_eq!(resp.status(), 201);
    let token = resp.headers()["set-cookie"].to_str().unwrap()[6..38].to_owned();
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 200);
    std::thread::sleep(Duration::from_millis(2600));
    let resp = with_cookie(&kw, "GET", "/x", &token);
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
    let resp = with_cookie(&kw, "GET", "/public", &token);
    assert_eq!(resp.status(), 200, "anonymous on a public route");
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
    let unknown = "0123456789abcdef0123456789abcdef";
    let resp = with_cookie(&kw, "GET", "/public", unknown);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
    // The expired token is no longer listed.
    let (count, _) = listing(
        client()
            .get(kw.url("/.TOKEN/?format=json"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap(),
    );
    assert_eq!(count, 0);
}

#[test]
fn malformed_cookies_are_anonymous_never_500() {
    let kw = start();
    let token = mint_token(&kw, "john", "john-password");
    for cookie in [
        format!("token={token}; token={token}"),
        "token=NOTHEX".to_owned(),
        format!("token={}", token.to_uppercase()),
        format!("token={token}00"),
        "token=".to_owned(),
        format!("a={}; token={token}", "x".repeat(9000)),
        "=; ;;token".to_owned(),
    ] {
        let resp = client()
            .get(kw.url("/x"))
            .header("Cookie", cookie.as_str())
            .send()
            .unwrap();
        assert!(
            [400, 401].contains(&resp.status().as_u16()),
            "{cookie:.40}: {}",
            resp.status()
        );
    }
}

#[test]
fn many_cookie_headers() {
    let kw = start();
    let token = mint_token(&kw, "john", "john-password");
    let many = |with: &[String]| {
        let mut request = client().get(kw.url("/x"));
        for i in 0..60 {
            request = request.header("Cookie", format!("c{i}=v{i}"));
        }
        for cookie in with {
            request = request.header("Cookie", cookie.as_str());
        }
        request.send().unwrap()
    };
    // The token in one of many Cookie headers authenticates; only it is held back.
    let echo = echoed(many(&[format!("theme=dark; token={token}")]));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    let cookies: Vec<&str> = echo["headers"]["cookie"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cookies.len(), 61, "{cookies:?}");
    assert_eq!(cookies[0], "c0=v0");
    assert_eq!(cookies[60], "theme=dark");
    assert!(!cookies.iter().any(|c| c.contains(&token)));
    // Two token cookies in different headers: malformed, anonymous, cleared.
    let resp = many(&[format!("token={token}"), format!("token={token}")]);
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
}

#[test]
fn the_token_administrator_acts_for_other_users() {
    let kw = start();
    mint_token(&kw, "john", "john-password");
    mint_token(&kw, "john", "john-password");
    // Only the administrator may mint for someone else, or list someone else's tokens.
    let resp = mint(
        &kw,
        "mary",
        "mary-password",
        &[("X-Owner-Meta", "john")],
        "",
    );
    assert_eq!(resp.status(), 403);
    let resp = client()
        .get(kw.url("/.TOKEN/?format=json&x-owner-meta=john"))
        .basic_auth("mary", Some("mary-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = mint(
        &kw,
        "admin",
        ADMIN_PASSWORD,
        &[("X-Owner-Meta", "john")],
        "",
    );
    assert_eq!(resp.status(), 201);

    let admin_list = || {
        listing(
            client()
                .get(kw.url("/.TOKEN/?format=json&x-owner-meta=john"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .unwrap(),
        )
    };
    let (count, tokens) = admin_list();
    assert_eq!(count, 3);
    for t in tokens {
        assert_eq!(t["x_owner_meta"], "john");
        let resp = client()
            .delete(kw.url(&format!("/.TOKEN/{}", t["name"].as_str().unwrap())))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(admin_list().0, 0);
}

#[test]
fn tenant_tokens() {
    let kw = start();
    let resp = client()
        .post(kw.url("/_admin/manage/tenants/tenant256/tokens/"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let minted: Value = resp.json().unwrap();
    assert_eq!(minted["scope"], "+tenant256");
    assert_eq!(minted["owner"], "admin");
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(minted["expiration"].as_str().unwrap().ends_with('Z'));

    let resp = client()
        .get(kw.url("/_admin/manage/tenants/tenant256/tokens/"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    let (count, tokens) = listing(resp);
    assert_eq!(count, 1);
    let resp = client()
        .get(kw.url("/_admin/manage/tenants/tenant256/tokens/"))
        .basic_auth("mary", Some("mary-password"))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "tenants need POWER-USER or the token administrator"
    );
    let resp = client()
        .delete(kw.url(&format!(
            "/_admin/manage/tenants/tenant256/tokens/{}",
            tokens[0]["name"].as_str().unwrap()
        )))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 401);
}

#[test]
fn totp_login_mints_an_administrative_token() {
    let kw = start();
    let totp = kw.enable_totp("john");
    let code = totp.generate(now());
    let resp = mint(&kw, "john", "john-password", &[("X-Totp-Code", &code)], "");
    assert_eq!(resp.status(), 201);
    let token = resp.headers()["set-cookie"].to_str().unwrap()[6..38].to_owned();
    let echo = echoed(with_cookie(&kw, "GET", "/x", &token));
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("ADMINISTRATIVE")
    );
    // The same code again is refused.
    let resp = mint(&kw, "john", "john-password", &[("X-Totp-Code", &code)], "");
    assert_eq!(resp.status(), 401);
}

#[test]
fn locking_cuts_api_key_token_and_signature_at_once() {
    let kw = start();
    let token = mint_token(&kw, "john", "john-password");
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(r#"{"description":"k"}"#)
        .send()
        .unwrap();
    let created: Value = resp.json().unwrap();
    let api_key = created["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().to_bytes());
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(format!(r#"{{"publicKey":"{public}","description":"s"}}"#))
        .send()
        .unwrap();
    let enrolled: Value = resp.json().unwrap();
    let keyid = format!("john/{}", enrolled["data"]["keyID"]);
    let signed_get = |nonce: &str| {
        let headers = keyward::auth::signature::sign(
            &signing,
            &keyid,
            "GET",
            &kw.url("/x").parse().unwrap(),
            None,
            now() as i64,
            nonce,
        )
        .unwrap();
        let mut request = client().get(kw.url("/x"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send().unwrap().status().as_u16()
    };
    let key_get = || {
        client()
            .get(kw.url("/x"))
            .header("Argus-API-Key", &api_key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 200);
    assert_eq!(key_get(), 200);
    assert_eq!(signed_get("a"), 200);

    let resp = client()
        .put(kw.url("/authentication/v1/user/john/lock"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 401);
    assert_eq!(key_get(), 401);
    assert_eq!(signed_get("b"), 401);
    // The lock deleted the tokens: unlocking does not bring them back.
    let resp = client()
        .delete(kw.url("/authentication/v1/user/john/lock"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(with_cookie(&kw, "GET", "/x", &token).status(), 401);
    assert_eq!(key_get(), 200);
}

#[test]
fn audit_names_the_token_owner_when_a_cookie_authenticates() {
    let kw = start();
    let token = mint_token(&kw, "john", "john-password");
    let resp = with_cookie(&kw, "DELETE", &format!("/.TOKEN/{token}"), &token);
    assert_eq!(resp.status(), 200);
    let stderr = kw.stderr();
    let audit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("keyward::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("operation=\"token.mint\"")
            && l.contains("actor=\"john\"")
            && l.contains("auth_method=\"PASSWORD\"")),
        "{stderr}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("operation=\"token.delete\"")
                && l.contains("actor=\"john\"")
                && l.contains("auth_method=\"TOKEN\"")),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "the token itself is never logged");
}
