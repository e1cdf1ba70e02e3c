//! Issue #9 hardening of the admin API, end to end against the real binary: tenant tokens
//! are not their minter (5), token mints never outgrow the token that asks (6), every admin
//! endpoint takes only its credentials and honours level and read-only (7), cookie writes
//! from another origin are refused (8), and the per-token and per-user limits (11).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, echoed, echoed_header, Keyward, Setup, ADMIN_PASSWORD};
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /default
    require: { min_security_level: DEFAULT }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn start_with_extra(extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: extra.into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &["--function", "CASE-WRITE"]);
    kw.add_user("mary", "mary-password", &[]);
    kw.add_user("ext", "ext-password", &["--external", "--customer", "9"]);
    kw
}

fn start() -> Keyward {
    start_with_extra("")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request(kw: &Keyward, method: &str, path: &str) -> RequestBuilder {
    client().request(method.parse().unwrap(), kw.url(path))
}

fn with_token(builder: RequestBuilder, token: &str) -> RequestBuilder {
    builder.header("Cookie", format!("token={token}"))
}

fn json_body(builder: RequestBuilder, body: &Value) -> RequestBuilder {
    builder
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// `POST /.TOKEN/?setcookie=false` with Basic; the response.
fn mint_basic(kw: &Keyward, user: &str, password: &str, headers: &[(&str, &str)]) -> Response {
    let mut builder =
        request(kw, "POST", "/.TOKEN/?setcookie=false").basic_auth(user, Some(password));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.send().unwrap()
}

/// `POST /.TOKEN/?setcookie=false` authenticated by `token`; the response.
fn mint_with_token(kw: &Keyward, token: &str, headers: &[(&str, &str)]) -> Response {
    let mut builder = with_token(request(kw, "POST", "/.TOKEN/?setcookie=false"), token);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.send().unwrap()
}

/// The token and its RFC 3339 expiry from a successful mint.
fn minted(resp: Response) -> (String, String) {
    assert_eq!(resp.status(), 201, "mint failed");
    let token = resp.headers()["gateway-token"].to_str().unwrap().to_owned();
    let body = resp.text().unwrap();
    let expires = body
        .trim()
        .strip_prefix(&format!("Token {token} expires "))
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    (token, expires)
}

fn token_count(kw: &Keyward, user: &str, password: &str) -> usize {
    let resp = request(kw, "GET", "/.TOKEN/?format=json")
        .basic_auth(user, Some(password))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["castor-object-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn admin_call(kw: &Keyward, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut builder = request(kw, method, path).basic_auth("admin", Some(ADMIN_PASSWORD));
    if let Some(body) = body {
        builder = json_body(builder, &body);
    }
    let resp = builder.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn create_key(kw: &Keyward, user: &str, body: Value) -> String {
    let (status, resp) = admin_call(
        kw,
        "POST",
        &format!("/authentication/v1/user/{user}/apikey"),
        Some(body),
    );
    assert_eq!(status, 201, "{resp}");
    resp["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

fn key_count(kw: &Keyward, user: &str) -> usize {
    let (status, body) = admin_call(
        kw,
        "GET",
        &format!("/authentication/v1/user/{user}/apikey"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().len()
}

fn public_key(seed: u8) -> (ed25519_dalek::SigningKey, String) {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().to_bytes());
    (signing, public)
}

fn tenant_token(kw: &Keyward, tenant: &str) -> String {
    let resp = request(
        kw,
        "POST",
        &format!("/_admin/manage/tenants/{tenant}/tokens/"),
    )
    .basic_auth("admin", Some(ADMIN_PASSWORD))
    .send()
    .unwrap();
    assert_eq!(resp.status(), 201);
    let minted: Value = resp.json().unwrap();
    minted["token"].as_str().unwrap().to_owned()
}

fn tenant_count(kw: &Keyward, tenant: &str) -> u64 {
    let resp = request(
        kw,
        "GET",
        &format!("/_admin/manage/tenants/{tenant}/tokens/"),
    )
    .basic_auth("admin", Some(ADMIN_PASSWORD))
    .send()
    .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().unwrap().as_array().unwrap().len() as u64
}

// ---- 5. tenant tokens ----------------------------------------------------------------

#[test]
fn a_tenant_token_reaches_the_upstream_as_the_tenant_at_external() {
    let kw = start();
    let token = tenant_token(&kw, "tenant256");
    let echo = echoed(
        with_token(request(&kw, "GET", "/x"), &token)
            // A client cannot name its own tenant.
            .header("X-Keyward-Tenant", "other")
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("admin"));
    assert_eq!(echoed_header(&echo, "x-keyward-tenant"), Some("tenant256"));
    assert_eq!(
        echo["headers"]["x-keyward-tenant"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("EXTERNAL")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some(""),
        "none of the minter's POWER-USER"
    );
    assert_eq!(echoed_header(&echo, "x-keyward-auth-method"), Some("TOKEN"));
    // A route that needs DEFAULT is closed to it; the administrator's own token opens it.
    let resp = with_token(request(&kw, "GET", "/default"), &token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    let (own, _) = minted(mint_basic(&kw, "admin", ADMIN_PASSWORD, &[]));
    let echo = echoed(
        with_token(request(&kw, "GET", "/default"), &own)
            .send()
            .unwrap(),
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("DEFAULT")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some("POWER-USER")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-tenant"),
        None,
        "an ordinary token names no tenant, and a client-sent one is dropped"
    );
}

#[test]
fn a_tenant_token_authorizes_no_admin_endpoint() {
    let kw = start();
    let token = tenant_token(&kw, "tenant256");
    let (_, public) = public_key(7);
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/authentication/v1/user/admin/apikey".into(),
            Some(json!({"description": "from a tenant"})),
        ),
        (
            "POST",
            "/authentication/v1/apikey".into(),
            Some(json!({"description": "from a tenant"})),
        ),
        ("GET", "/authentication/v1/apikey".into(), None),
        ("PUT", "/authentication/v1/user/john/lock".into(), None),
        (
            "POST",
            "/authentication/v1/user/admin/signature".into(),
            Some(json!({"publicKey": public, "description": "tenant"})),
        ),
        (
            "DELETE",
            "/authentication/v1/user/signature/session".into(),
            None,
        ),
        ("POST", "/.TOKEN/".into(), None),
        ("GET", "/.TOKEN/?format=json".into(), None),
        ("DELETE", format!("/.TOKEN/{token}"), None),
        (
            "GET",
            "/_admin/manage/tenants/tenant256/tokens/".into(),
            None,
        ),
        (
            "POST",
            "/_admin/manage/tenants/tenant256/tokens/".into(),
            None,
        ),
        (
            "DELETE",
            format!("/_admin/manage/tenants/tenant256/tokens/{token}"),
            None,
        ),
    ];
    for (method, path, body) in calls {
        let mut builder = with_token(request(&kw, method, &path), &token);
        if let Some(body) = &body {
            builder = json_body(builder, body);
        }
        let resp = builder.send().unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "{method} {path}"
        );
    }
    // Nothing changed: no key or signature key for the administrator, john not locked, no
    // token minted, and the tenant token is still there.
    assert_eq!(key_count(&kw, "admin"), 0);
    let (status, keys) = admin_call(&kw, "GET", "/authentication/v1/user/admin/signature", None);
    assert_eq!(status, 200);
    assert_eq!(keys["data"]["keys"], json!([]));
    let resp = request(&kw, "GET", "/x")
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "john is not locked");
    assert_eq!(token_count(&kw, "admin", ADMIN_PASSWORD), 0);
    assert_eq!(tenant_count(&kw, "tenant256"), 1);
    assert_eq!(
        with_token(request(&kw, "GET", "/x"), &token)
            .send()
            .unwrap()
            .status(),
        200
    );
}

// ---- 6. mints never outgrow the token that asks ----------------------------------------

#[test]
fn a_token_cannot_mint_a_token_that_outlives_it() {
    let kw = start();
    // A password may mint 20 days (within tokens.max_ttl): the 400s below are the cap.
    let resp = mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-User-Token-Expires-Meta", "+20")],
    );
    assert_eq!(resp.status(), 201);
    // A 24 h token (the default ttl) asks for 20 days, or for one more day: 400.
    let (day, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    for longer in ["+20", "+1"] {
        let resp = mint_with_token(&kw, &day, &[("X-User-Token-Expires-Meta", longer)]);
        assert_eq!(resp.status(), 400, "{longer}");
        assert!(resp.text().unwrap().contains("outlives"));
    }
    assert_eq!(
        token_count(&kw, "john", "john-password"),
        2,
        "nothing minted"
    );

    // A 2 h token: a 1 h child is fine; with no expiry header the default 24 h is capped to
    // the parent's expiry (capped, not refused).
    let two_hours = (now() + 7200).to_string();
    let (parent, parent_expires) = minted(mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-User-Token-Expires-Meta", &two_hours)],
    ));
    let one_hour = (now() + 3600).to_string();
    let resp = mint_with_token(&kw, &parent, &[("X-User-Token-Expires-Meta", &one_hour)]);
    assert_eq!(resp.status(), 201);
    let (child, child_expires) = minted(mint_with_token(&kw, &parent, &[]));
    assert_eq!(child_expires, parent_expires, "capped to the asking token");
    let echo = echoed(
        with_token(request(&kw, "GET", "/x"), &child)
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    // The capped child can mint too, and its children are capped the same way.
    let (_, grandchild_expires) = minted(mint_with_token(&kw, &child, &[]));
    assert_eq!(grandchild_expires, parent_expires);
}

#[test]
fn an_administrative_token_cannot_mint_a_year_long_one_and_a_default_one_cannot_rise() {
    let kw = start();
    let totp = kw.enable_totp("john");
    let code = totp.generate(now());
    let (admin_token, admin_expires) = minted(mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-Totp-Code", &code)],
    ));
    let level = |token: &str| {
        let echo = echoed(with_token(request(&kw, "GET", "/x"), token).send().unwrap());
        echoed_header(&echo, "x-keyward-security-level").map(str::to_owned)
    };
    assert_eq!(level(&admin_token).as_deref(), Some("ADMINISTRATIVE"));
    // tokens.max_ttl (365 days) allows a year with a password; not from a 24 h token.
    let resp = mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-User-Token-Expires-Meta", "+365")],
    );
    assert_eq!(resp.status(), 201);
    let resp = mint_with_token(&kw, &admin_token, &[("X-User-Token-Expires-Meta", "+365")]);
    assert_eq!(resp.status(), 400);
    // Without a header: ADMINISTRATIVE still (never more than the asking token), capped.
    let (child, child_expires) = minted(mint_with_token(&kw, &admin_token, &[]));
    assert_eq!(level(&child).as_deref(), Some("ADMINISTRATIVE"));
    assert_eq!(child_expires, admin_expires);
    // A DEFAULT token cannot mint an ADMINISTRATIVE one by adding a TOTP code.
    let (default_token, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    let (raised, _) = minted(mint_with_token(
        &kw,
        &default_token,
        &[("X-Totp-Code", &totp.generate(now()))],
    ));
    assert_eq!(level(&raised).as_deref(), Some("DEFAULT"));
}

// ---- 7. each admin endpoint takes its credentials, level and read-only rules -----------

#[test]
fn the_token_api_refuses_api_keys_and_signed_requests() {
    let kw = start();
    let read_only = create_key(
        &kw,
        "admin",
        json!({"description": "ro", "sessionConstraints": {"readOnly": true}}),
    );
    let full = create_key(&kw, "admin", json!({"description": "full"}));
    let external = create_key(&kw, "ext", json!({"description": "customer"}));
    let (john_token, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    let (admin_token, _) = minted(mint_basic(&kw, "admin", ADMIN_PASSWORD, &[]));
    let tenant = tenant_token(&kw, "t1");

    let with_key = |method: &str, path: &str, key: &str| {
        request(&kw, method, path)
            .header("Argus-API-Key", key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // The read-only key deleting a token (the token administrator's, so it may name any).
    assert_eq!(
        with_key("DELETE", &format!("/.TOKEN/{john_token}"), &read_only),
        403
    );
    assert_eq!(with_key("GET", "/.TOKEN/?format=json", &read_only), 403);
    assert_eq!(with_key("GET", "/.TOKEN/?format=json", &external), 403);
    assert_eq!(with_key("POST", "/.TOKEN/", &external), 403);
    assert_eq!(with_key("POST", "/.TOKEN/", &full), 403);
    assert_eq!(
        with_key("DELETE", &format!("/.TOKEN/{john_token}"), &full),
        403
    );
    for key in [&full, &read_only] {
        assert_eq!(
            with_key("GET", "/_admin/manage/tenants/t1/tokens/", key),
            403
        );
        assert_eq!(
            with_key("POST", "/_admin/manage/tenants/t1/tokens/", key),
            403
        );
        assert_eq!(
            with_key(
                "DELETE",
                &format!("/_admin/manage/tenants/t1/tokens/{tenant}"),
                key
            ),
            403
        );
    }
    // Tenant endpoints take a password only: not even the administrator's token.
    for (method, path) in [
        ("GET", "/_admin/manage/tenants/t1/tokens/".to_owned()),
        ("POST", "/_admin/manage/tenants/t1/tokens/".to_owned()),
        (
            "DELETE",
            format!("/_admin/manage/tenants/t1/tokens/{tenant}"),
        ),
    ] {
        let resp = with_token(request(&kw, method, &path), &admin_token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
    }

    // A signed request (john's enrolled key) is no credential for the token API either.
    let (signing, public) = public_key(9);
    let (status, body) = admin_call(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": public, "description": "laptop"})),
    );
    assert_eq!(status, 201, "{body}");
    let keyid = format!("john/{}", body["data"]["keyID"]);
    let signed = |method: &str, path: &str, nonce: &str| {
        let url = kw.url(path);
        let headers = keyward::auth::signature::sign(
            &signing,
            &keyid,
            method,
            &url.parse().unwrap(),
            None,
            now() as i64,
            nonce,
        )
        .unwrap();
        let mut builder = request(&kw, method, path);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder.send().unwrap().status().as_u16()
    };
    assert_eq!(
        signed("GET", "/x", "n0"),
        200,
        "the signature itself is good"
    );
    assert_eq!(signed("GET", "/.TOKEN/?format=json", "n1"), 403);
    assert_eq!(signed("POST", "/.TOKEN/", "n2"), 403);
    assert_eq!(
        signed("DELETE", &format!("/.TOKEN/{john_token}"), "n3"),
        403
    );

    // Nothing was deleted or minted: both tokens work, the tenant still has one.
    for token in [&john_token, &admin_token, &tenant] {
        assert_eq!(
            with_token(request(&kw, "GET", "/x"), token)
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(token_count(&kw, "john", "john-password"), 1);
    assert_eq!(token_count(&kw, "admin", ADMIN_PASSWORD), 1);
    assert_eq!(tenant_count(&kw, "t1"), 1);
}

#[test]
fn argus_endpoints_refuse_read_only_writes_and_external_keys() {
    let kw = start();
    let read_only = create_key(
        &kw,
        "admin",
        json!({"description": "ro", "sessionConstraints": {"readOnly": true}}),
    );
    let external = create_key(&kw, "ext", json!({"description": "customer"}));
    let john_key = create_key(&kw, "john", json!({"description": "john's"}));
    let john_prefix = john_key.rsplit_once('/').unwrap().0.to_owned();
    let (_, public) = public_key(3);
    let (status, body) = admin_call(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": public, "description": "laptop"})),
    );
    assert_eq!(status, 201);
    let john_sig = body["data"]["keyID"].as_i64().unwrap();
    let (_, public2) = public_key(4);
    let enroll = json!({"publicKey": public2, "description": "more"});
    let new_key = json!({"description": "more"});

    let call = |key: &str, method: &str, path: &str, body: Option<&Value>| {
        let mut builder = request(&kw, method, path).header("Argus-API-Key", key);
        if let Some(body) = body {
            builder = json_body(builder, body);
        }
        let resp = builder.send().unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap();
        assert_eq!(body["responseCode"], status, "{method} {path}: {body}");
        status
    };
    let writes: Vec<(&str, String, Option<&Value>)> = vec![
        (
            "POST",
            "/authentication/v1/user/john/apikey".into(),
            Some(&new_key),
        ),
        ("POST", "/authentication/v1/apikey".into(), Some(&new_key)),
        (
            "PUT",
            format!("/authentication/v1/user/john/apikey/{john_prefix}"),
            None,
        ),
        (
            "DELETE",
            format!("/authentication/v1/user/john/apikey/{john_prefix}"),
            None,
        ),
        (
            "POST",
            "/authentication/v1/user/john/signature".into(),
            Some(&enroll),
        ),
        (
            "DELETE",
            format!("/authentication/v1/user/john/signature/{john_sig}"),
            None,
        ),
        (
            "DELETE",
            "/authentication/v1/user/john/signature/session".into(),
            None,
        ),
        (
            "DELETE",
            "/authentication/v1/user/signature/session".into(),
            None,
        ),
        ("PUT", "/authentication/v1/user/john/lock".into(), None),
        ("DELETE", "/authentication/v1/user/john/lock".into(), None),
    ];
    for (method, path, body) in &writes {
        assert_eq!(
            call(&read_only, method, path, *body),
            403,
            "read-only {method} {path}"
        );
    }
    // Reads stay open to the read-only POWER-USER key.
    assert_eq!(
        call(
            &read_only,
            "GET",
            "/authentication/v1/user/john/apikey",
            None
        ),
        200
    );
    assert_eq!(
        call(
            &read_only,
            "GET",
            "/authentication/v1/user/john/signature",
            None
        ),
        200
    );

    // An external user's key (EXTERNAL) gets nothing, not even about itself.
    let own: Vec<(&str, String, Option<&Value>)> = vec![
        ("GET", "/authentication/v1/user/ext/apikey".into(), None),
        ("GET", "/authentication/v1/apikey".into(), None),
        ("POST", "/authentication/v1/apikey".into(), Some(&new_key)),
        ("GET", "/authentication/v1/user/ext/signature".into(), None),
        (
            "POST",
            "/authentication/v1/user/ext/signature".into(),
            Some(&enroll),
        ),
        (
            "DELETE",
            "/authentication/v1/user/ext/signature/session".into(),
            None,
        ),
        (
            "DELETE",
            "/authentication/v1/user/signature/session".into(),
            None,
        ),
        ("PUT", "/authentication/v1/user/ext/lock".into(), None),
    ];
    for (method, path, body) in &own {
        assert_eq!(
            call(&external, method, path, *body),
            403,
            "external {method} {path}"
        );
    }

    // Nothing changed: john's key works with its old expiry, his signature key is enrolled,
    // no new keys, nobody locked.
    assert_eq!(key_count(&kw, "john"), 1);
    assert_eq!(key_count(&kw, "admin"), 1);
    assert_eq!(key_count(&kw, "ext"), 1);
    let resp = request(&kw, "GET", "/x")
        .header("Argus-API-Key", &john_key)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, sigs) = admin_call(&kw, "GET", "/authentication/v1/user/john/signature", None);
    assert_eq!(sigs["data"]["keys"].as_array().unwrap().len(), 1);
    let (_, sigs) = admin_call(&kw, "GET", "/authentication/v1/user/ext/signature", None);
    assert_eq!(sigs["data"]["keys"], json!([]));
    let resp = request(&kw, "GET", "/x")
        .header("Argus-API-Key", &external)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "ext is not locked");
}

// ---- 8. cross-site cookie writes ---------------------------------------------------------

#[test]
fn cookie_writes_from_another_origin_are_refused() {
    let kw = start();
    let own_origin = format!("http://{}", kw.proxy);
    let (token, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    let post_mint = |headers: &[(&str, &str)]| {
        let mut builder = with_token(request(&kw, "POST", "/.TOKEN/?setcookie=false"), &token);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.send().unwrap().status().as_u16()
    };
    for foreign in [
        &[("Origin", "https://evil.example")][..],
        &[("Origin", "null")],
        &[("Origin", "https://127.0.0.1")],
        &[("Referer", "https://evil.example/page")],
        &[
            ("Origin", "https://evil.example"),
            ("Referer", &format!("{own_origin}/ui")),
        ],
    ] {
        assert_eq!(post_mint(foreign), 403, "{foreign:?}");
    }
    assert_eq!(
        token_count(&kw, "john", "john-password"),
        1,
        "nothing minted"
    );
    let resp = with_token(request(&kw, "DELETE", &format!("/.TOKEN/{token}")), &token)
        .header("Origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());
    let create = |origin: &str| {
        json_body(
            with_token(request(&kw, "POST", "/authentication/v1/apikey"), &token),
            &json!({"description": "csrf"}),
        )
        .header("Origin", origin)
        .send()
        .unwrap()
        .status()
        .as_u16()
    };
    assert_eq!(create("https://evil.example"), 403);
    assert_eq!(key_count(&kw, "john"), 0, "no key was created");
    assert_eq!(
        with_token(request(&kw, "GET", "/x"), &token)
            .send()
            .unwrap()
            .status(),
        200,
        "the token was not deleted"
    );

    // Same origin, by Origin or by Referer, and no Origin at all (a non-browser client).
    assert_eq!(post_mint(&[("Origin", &own_origin)]), 201);
    assert_eq!(
        post_mint(&[("Referer", &format!("{own_origin}/ui/tokens"))]),
        201
    );
    assert_eq!(post_mint(&[]), 201);
    assert_eq!(create(&own_origin), 201);
    assert_eq!(key_count(&kw, "john"), 1);
    // Reads are not writes; a password is not a cookie the browser adds by itself.
    let resp = with_token(request(&kw, "GET", "/.TOKEN/?format=json"), &token)
        .header("Origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = request(&kw, "POST", "/.TOKEN/?setcookie=false")
        .basic_auth("john", Some("john-password"))
        .header("Origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(token_count(&kw, "john", "john-password"), 5);
}

#[test]
fn cookie_writes_to_argus_endpoints_must_be_json() {
    let kw = start();
    let (token, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    let body = json!({"description": "form"}).to_string();
    let send = |content_type: Option<&str>| {
        let mut builder = with_token(request(&kw, "POST", "/authentication/v1/apikey"), &token)
            .body(body.clone());
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let resp = builder.send().unwrap();
        let status = resp.status().as_u16();
        let envelope: Value = resp.json().unwrap();
        assert_eq!(envelope["responseCode"], status);
        status
    };
    for simple in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        assert_eq!(send(simple), 403, "{simple:?}");
    }
    assert_eq!(key_count(&kw, "john"), 0);
    assert_eq!(send(Some("application/json; charset=utf-8")), 201);
    // The rule is for the cookie: a password client may leave the type out.
    let resp = request(&kw, "POST", "/authentication/v1/apikey")
        .basic_auth("john", Some("john-password"))
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(key_count(&kw, "john"), 2);
}

// ---- 11. token limits ----------------------------------------------------------------

#[test]
fn tokens_per_user_is_capped() {
    let kw = start_with_extra("limits: { tokens_per_user: 3 }\n");
    let soon = (now() + 2).to_string();
    let (short, _) = minted(mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-User-Token-Expires-Meta", &soon)],
    ));
    let (first, _) = minted(mint_basic(&kw, "john", "john-password", &[]));
    minted(mint_basic(&kw, "john", "john-password", &[]));
    let resp = mint_basic(&kw, "john", "john-password", &[]);
    assert_eq!(resp.status(), 400);
    let refusal: Value = resp.json().unwrap();
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("limits.tokens_per_user"),
        "{refusal}"
    );
    // With a token, or by the token administrator for john: the same count.
    assert_eq!(mint_with_token(&kw, &first, &[]).status(), 400);
    let resp = mint_basic(&kw, "admin", ADMIN_PASSWORD, &[("X-Owner-Meta", "john")]);
    assert_eq!(resp.status(), 400);
    assert_eq!(token_count(&kw, "john", "john-password"), 3);
    // The cap is per user: mary is not affected.
    minted(mint_basic(&kw, "mary", "mary-password", &[]));
    // An expired token no longer counts...
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(
        with_token(request(&kw, "GET", "/x"), &short)
            .send()
            .unwrap()
            .status(),
        401
    );
    minted(mint_basic(&kw, "john", "john-password", &[]));
    assert_eq!(mint_basic(&kw, "john", "john-password", &[]).status(), 400);
    // ...nor does a deleted one.
    let resp = with_token(request(&kw, "DELETE", &format!("/.TOKEN/{first}")), &first)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    minted(mint_basic(&kw, "john", "john-password", &[]));
    // Tenant tokens count for the administrator who mints them.
    for _ in 0..3 {
        tenant_token(&kw, "t1");
    }
    let resp = request(&kw, "POST", "/_admin/manage/tenants/t1/tokens/")
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn custom_metadata_is_capped() {
    // The default limits.token_metadata_bytes: 1024.
    let kw = start();
    let longest = "m".repeat(1024);
    let too_long = "m".repeat(1025);
    let resp = mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-Custom-Meta-Source", &too_long)],
    );
    assert_eq!(resp.status(), 400);
    let refusal: Value = resp.json().unwrap();
    assert!(refusal["message"]
        .as_str()
        .unwrap()
        .contains("limits.token_metadata_bytes"));
    assert_eq!(
        token_count(&kw, "john", "john-password"),
        0,
        "nothing stored"
    );
    let resp = request(&kw, "POST", "/_admin/manage/tenants/t1/tokens/")
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("X-Custom-Meta-Source", &too_long)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400, "tenant mints too");
    minted(mint_basic(
        &kw,
        "john",
        "john-password",
        &[("X-Custom-Meta-Source", &longest)],
    ));
    let listed: Value = request(&kw, "GET", "/.TOKEN/?format=json")
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed[0]["x_custom_meta_source"], longest.as_str());
}
