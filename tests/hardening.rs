//! Hostile input against the promise that nothing reaches the upstream with more rights than
//! the policy gives (the book's *Security model* chapter). Requests are written byte for byte on raw
//! sockets, and the upstream is Python's wsgiref with Werkzeug-style routing
//! (tests/upstreams/wsgi_echo.py): it percent-decodes, merges slashes, resolves dot segments
//! and folds `_` into `-` in header names, as real frameworks do. Each test checks a class of
//! input by what the *application* saw, not by one exact string.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, raw_request, FrameworkUpstream, Keyward, RawResponse, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /api/admin
    require: { min_security_level: ADMINISTRATIVE, functions_any: [POWER-USER] }
  - path: /reports
    require: { methods: [GET] }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

struct Rig {
    kw: Keyward,
    _app: FrameworkUpstream,
    /// john's key: DEFAULT, no functions.
    key: String,
}

fn start(extra: &str) -> Rig {
    start_in_front_of(FrameworkUpstream::start(), extra)
}

fn start_in_front_of(app: FrameworkUpstream, extra: &str) -> Rig {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: extra.into(),
        upstream_address: Some(app.addr.to_string()),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let key = kw.create_api_key("john", json!({"description": "t"}));
    Rig { kw, _app: app, key }
}

/// `METHOD target HTTP/1.1` with a Host, the extra header lines, `Connection: close`.
fn request(method: &str, target: &str, headers: &[String]) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

fn send(rig: &Rig, method: &str, target: &str, headers: &[String]) -> RawResponse {
    raw_request(rig.kw.proxy, &request(method, target, headers))
}

fn with_key(rig: &Rig, target: &str, headers: &[&str]) -> RawResponse {
    let mut all = vec![format!("Argus-API-Key: {}", rig.key)];
    all.extend(headers.iter().map(|h| h.to_string()));
    send(rig, "GET", target, &all)
}

fn reason(resp: &RawResponse) -> String {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn no_spelling_of_a_protected_path_reaches_it_with_less_rights() {
    let rig = start("");
    // The test can fail: the plain path is refused, an ordinary one reaches the app.
    assert_eq!(with_key(&rig, "/api/admin", &[]).status, 403);
    let ordinary = with_key(&rig, "/elsewhere", &[]);
    assert_eq!(ordinary.status, 200);
    assert_eq!(ordinary.json()["routed"], "/elsewhere");

    let spellings = [
        "/%61pi/admin",
        "/api/admi%6e",
        "/api/admi%6E",
        "/%61%70%69/%61%64%6d%69%6e",
        "//api/admin",
        "/api//admin",
        "///api/admin/",
        "/api/admin/",
        "/api/admin/x",
        "/x/../api/admin",
        "/%2e%2e/api/admin",
        "/%2E/api/admin",
        "/api/./admin",
        "/api/%2e/admin",
        "/api/x/%2e%2e/admin",
        "/public/../api/admin",
        "/public/%2e%2e/api/admin",
        "/public//../api/admin",
        "/api%2fadmin",
        "/api%2Fadmin",
        "/api%5cadmin",
        "/api/admin%00",
        "/api/admin%0a",
        "/api%c0%afadmin",
        "/api/admin%c2%85",
        "/api/%ef%bc%8fadmin",
        "/api;x/admin",
        "/api/admin;x",
        "/api/admin%3bx",
        "/api%3Bx/admin",
        "/api/%2561dmin",
        "/api/admin?x=/../",
        "api/admin",
        "x:/api/admin",
        "mailto:api/admin",
        "http://app.test/api/admin",
        "http://app.test//api/%61dmin",
        "HTTP://app.test/api/admin",
        "ftp://app.test/api/admin",
        "*",
    ];
    for spelling in spellings {
        let resp = with_key(&rig, spelling, &[]);
        match resp.status {
            200 => {
                let seen = resp.json();
                let routed = seen["routed"].as_str().unwrap();
                assert!(
                    !routed.starts_with("/api/admin"),
                    "{spelling} reached {routed} with a DEFAULT key"
                );
            }
            400 | 403 => {}
            other => panic!("{spelling}: unexpected {other}"),
        }
    }
    // Normalized, not refused: the app routes exactly what the policy decided on.
    let merged = with_key(&rig, "//a//b/./%63", &[]);
    assert_eq!(merged.json()["path_info"], "/a/b/c");
}

/// In front of an upstream that routes without regard to case (Express by default), every
/// case spelling of a protected path is held to that path's route with
/// `routes_case_insensitive`; without it the case-sensitive match lets `/API/admin` through
/// with a DEFAULT key, which is why the setting exists.
#[test]
fn case_spellings_of_a_protected_path_follow_its_route_when_the_upstream_folds_case() {
    let spellings = [
        "/API/admin",
        "/api/ADMIN",
        "/Api/Admin/x",
        "/%41PI/admin",
        "//aPi//aDmIn/",
    ];
    let exact = start_in_front_of(FrameworkUpstream::start_with(&["--case-insensitive"]), "");
    let through = with_key(&exact, "/API/admin", &[]);
    assert_eq!(through.status, 200, "the class this test is about");
    assert_eq!(through.json()["routed"], "/api/admin");

    let folded = start_in_front_of(
        FrameworkUpstream::start_with(&["--case-insensitive"]),
        "routes_case_insensitive: true\n",
    );
    for spelling in spellings {
        let resp = with_key(&folded, spelling, &[]);
        assert_eq!(resp.status, 403, "{spelling}");
        assert_eq!(reason(&resp), "security_level_too_low", "{spelling}");
    }
    // Other paths still reach the app, and the public route is public in every spelling.
    let ordinary = with_key(&folded, "/Elsewhere", &[]);
    assert_eq!(ordinary.status, 200);
    assert_eq!(ordinary.json()["routed"], "/elsewhere");
    assert_eq!(send(&folded, "GET", "/PUBLIC/x", &[]).status, 200);
    assert_eq!(send(&folded, "GET", "/Elsewhere", &[]).status, 401);
}

#[test]
fn only_origin_absolute_and_asterisk_forms_are_accepted() {
    let rig = start("");
    for target in [
        "api/admin",
        "x:/api/admin",
        "mailto:api/admin",
        "*",
        "ftp://h/x",
    ] {
        let resp = with_key(&rig, target, &[]);
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        assert_eq!(resp.status, 400, "{target}: {body}");
        // pingora refuses targets it cannot parse at all with a bare 400 of its own.
        assert!(
            body.is_empty() || reason(&resp) == "invalid_request_target",
            "{target}: {body}"
        );
    }
    // pingora itself refuses an absolute-form authority that disagrees with Host.
    assert_eq!(
        send(&rig, "GET", "http://other.test/public/x", &[]).status,
        400
    );
    let absolute = send(&rig, "GET", "http://app.test//public/%78?q=1", &[]);
    assert_eq!(
        absolute.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&absolute.body)
    );
    let seen = absolute.json();
    assert_eq!(seen["path_info"], "/public/x");
    assert_eq!(seen["query"], "q=1");
    // The absolute-form authority is the host (RFC 9112 §3.2.2).
    assert_eq!(seen["headers"]["host"], "app.test");
    let star = with_key(&rig, "*", &["X-Probe: 1"]);
    assert_eq!(star.status, 400, "GET * is not OPTIONS *");
    let options = send(
        &rig,
        "OPTIONS",
        "*",
        &[format!("Argus-API-Key: {}", rig.key)],
    );
    assert_eq!(
        options.status, 200,
        "OPTIONS * is decided by the route of /"
    );
}

#[test]
fn underscored_identity_headers_never_reach_the_app() {
    let rig = start("");
    let spoofs = [
        "X_Keyward_User: admin",
        "X-Keyward_User: admin",
        "x_keyward_functions: POWER-USER",
        "X_KEYWARD_SECURITY_LEVEL: ADMINISTRATIVE",
        "X-Keyward-Tenant: t1",
        "Gateway_Request_Id: FFFFFFFFFFFFFFFF",
        "X_Forwarded_For: 6.6.6.6",
    ];
    let resp = with_key(&rig, "/x", &spoofs);
    assert_eq!(resp.status, 200);
    let seen = resp.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-keyward-user"], "john");
    assert_eq!(headers["x-keyward-functions"], "");
    assert_eq!(headers["x-keyward-security-level"], "DEFAULT");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("x-keyward-tenant").is_none());
    assert_eq!(
        headers["gateway-request-id"].as_str(),
        resp.header("gateway-request-id")
    );

    let anonymous = send(
        &rig,
        "GET",
        "/public/x",
        &spoofs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let seen = anonymous.json();
    for (name, _) in seen["headers"].as_object().unwrap() {
        assert!(!name.starts_with("x-keyward-"), "{name} reached the app");
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn enroll(rig: &Rig, key: &SigningKey) -> String {
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let resp = client()
        .post(rig.kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(json!({"publicKey": public, "description": "t"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    format!("john/{}", body["data"]["keyID"])
}

/// The signature headers for a request to `target` with `body`, as `keyward sign` makes them.
fn signature_headers(
    key: &SigningKey,
    keyid: &str,
    target: &str,
    body: &[u8],
    nonce: &str,
) -> Vec<String> {
    let url: http::Uri = format!("http://app.test{target}").parse().unwrap();
    let body = (!body.is_empty()).then_some(body);
    keyward::auth::signature::sign(key, keyid, "POST", &url, body, now(), nonce)
        .unwrap()
        .into_iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

fn signed_post(rig: &Rig, headers: &[String], framing: &[&str], body: &[u8]) -> RawResponse {
    let mut text = String::from("POST /transfer HTTP/1.1\r\nHost: app.test\r\n");
    for header in headers
        .iter()
        .map(String::as_str)
        .chain(framing.iter().copied())
    {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(rig.kw.proxy, &bytes)
}

#[test]
fn every_body_framing_is_checked_against_the_signed_digest() {
    let rig = start("");
    let key = SigningKey::from_bytes(&[7; 32]);
    let keyid = enroll(&rig, &key);
    let signed_body = br#"{"amount":1}"#;
    let forged = br#"{"amount":1000000}"#;
    let chunked_forged = b"12\r\n{\"amount\":1000000}\r\n0\r\n\r\n";
    let forgeries: [(&[&str], &[u8]); 4] = [
        (&["Content-Length: 18, 18"], forged),
        (&["Content-Length: 18", "Content-Length: 18"], forged),
        (&["Content-Length: 18,18"], forged),
        (&["Transfer-Encoding: chunked"], chunked_forged),
    ];
    for (i, (framing, body)) in forgeries.iter().enumerate() {
        let headers = signature_headers(&key, &keyid, "/transfer", signed_body, &format!("f{i}"));
        let resp = signed_post(&rig, &headers, framing, body);
        assert_eq!(resp.status, 401, "{framing:?} got through");
        assert_eq!(reason(&resp), "digest_mismatch", "{framing:?}");
    }
    // The honest request in the list form is forwarded with one Content-Length, body intact,
    // and without the signature (a still-valid credential in the app's logs).
    let headers = signature_headers(&key, &keyid, "/transfer", signed_body, "honest");
    let resp = signed_post(&rig, &headers, &["Content-Length: 12, 12"], signed_body);
    assert_eq!(resp.status, 200);
    let seen = resp.json();
    assert_eq!(seen["body"], r#"{"amount":1}"#);
    assert_eq!(seen["headers"]["content-length"], "12");
    assert_eq!(seen["headers"]["x-keyward-auth-method"], "SIGNATURE");
    assert!(seen["headers"].get("signature").is_none());
    assert!(seen["headers"].get("signature-input").is_none());
    // Differing lengths never reach anyone.
    let headers = signature_headers(&key, &keyid, "/transfer", signed_body, "differ");
    let resp = signed_post(&rig, &headers, &["Content-Length: 12, 18"], signed_body);
    assert_eq!(resp.status, 400);
}

#[test]
fn forwarding_headers_are_keywards_own() {
    let rig = start("");
    let resp = with_key(
        &rig,
        "/x",
        &[
            "X-Forwarded-For: 6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "Forwarded: for=6.6.6.6;proto=https",
            "X-Forwarded-Host: evil.test",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Prefix: /admin",
        ],
    );
    let seen = resp.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "app.test");
    for gone in ["x-real-ip", "forwarded", "x-forwarded-prefix"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the app");
    }
}

#[test]
fn a_trusted_proxy_chain_is_read_from_one_configured_header() {
    for (choice, chain_header) in [
        ("x-forwarded-for", "X-Forwarded-For: 6.6.6.6, 203.0.113.5"),
        ("forwarded", "Forwarded: for=6.6.6.6, for=203.0.113.5"),
    ] {
        let rig = start(&format!(
            "trusted_proxies: [127.0.0.1/32]\ntrusted_proxies_header: {choice}"
        ));
        let scoped = rig.kw.create_api_key(
            "john",
            json!({"description": "net", "validSources": ["203.0.113.0/24"]}),
        );
        let other = match choice {
            "x-forwarded-for" => "Forwarded: for=198.51.100.1",
            _ => "X-Forwarded-For: 198.51.100.1",
        };
        let headers = [
            format!("Argus-API-Key: {scoped}"),
            chain_header.to_owned(),
            other.to_owned(),
        ];
        let resp = send(&rig, "GET", "/x", &headers);
        assert_eq!(
            resp.status,
            200,
            "{choice}: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
        let seen = resp.json();
        // Only the believed part of the chain, then keyward's peer.
        assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.5, 127.0.0.1");
        assert!(seen["headers"].get("forwarded").is_none());
        // The header the trusted proxy did not write cannot place the client.
        let headers = [
            format!("Argus-API-Key: {scoped}"),
            other.replace("198.51.100.1", "203.0.113.5"),
        ];
        let resp = send(&rig, "GET", "/x", &headers);
        assert_eq!(resp.status, 401, "{choice}: the other header won");
        assert_eq!(reason(&resp), "source_not_allowed");
    }
}

#[test]
fn read_only_keys_and_method_overrides() {
    let rig = start("");
    let reader = rig.kw.create_api_key(
        "john",
        json!({"description": "ro", "sessionConstraints": {"readOnly": true}}),
    );
    let as_reader = |method: &str, target: &str, extra: &[&str]| {
        let mut headers = vec![format!("Argus-API-Key: {reader}")];
        headers.extend(extra.iter().map(|h| h.to_string()));
        send(&rig, method, target, &headers)
    };
    assert_eq!(as_reader("GET", "/public/x", &[]).status, 200);
    for (method, target, extra) in [
        ("POST", "/public/x", vec!["Content-Length: 0"]),
        ("DELETE", "/public/x", vec![]),
        ("GET", "/x", vec!["X-HTTP-Method-Override: DELETE"]),
        ("GET", "/x", vec!["X-HTTP-Method: delete"]),
        ("GET", "/public/x", vec!["X-Method-Override: PUT"]),
        ("GET", "/x?_method=DELETE", vec![]),
    ] {
        let resp = as_reader(method, target, &extra);
        assert_eq!(resp.status, 403, "{method} {target} {extra:?}");
        assert_eq!(reason(&resp), "read_only");
    }
    // The underscore spelling is dropped before the app could read it.
    let resp = as_reader("GET", "/x", &["X_HTTP_Method_Override: DELETE"]);
    assert_eq!(resp.json()["effective_method"], "GET");

    // A route limited to GET cannot be made to serve DELETE by an override.
    assert_eq!(with_key(&rig, "/reports", &[]).status, 200);
    let resp = with_key(&rig, "/reports", &["X-HTTP-Method-Override: DELETE"]);
    assert_eq!(resp.status, 403);
    assert_eq!(reason(&resp), "method_not_allowed");
    let resp = with_key(&rig, "/reports?_method=delete", &[]);
    assert_eq!(resp.status, 403);
    let resp = with_key(&rig, "/x", &["X-HTTP-Method-Override: NOT A METHOD"]);
    assert_eq!(resp.status, 400);
    // Frameworks upper-case the method: `delete` would be served as DELETE.
    for method in ["delete", "Delete", "get"] {
        let resp = send(
            &rig,
            method,
            "/reports",
            &[format!("Argus-API-Key: {}", rig.key)],
        );
        assert_eq!(resp.status, 400, "{method}");
        assert_eq!(reason(&resp), "invalid_method");
    }
}

#[test]
fn request_headers_are_bounded() {
    let rig = start("limits: { max_request_header_bytes: 16384 }");
    let fits = format!("X-Fill: {}", "a".repeat(8000));
    assert_eq!(with_key(&rig, "/x", &[&fits]).status, 200);
    let big = format!("X-Fill: {}", "a".repeat(20_000));
    let resp = with_key(&rig, "/x", &[&big]);
    assert_eq!(resp.status, 431);
    assert_eq!(reason(&resp), "request_header_too_large");
    let many: Vec<String> = (0..200)
        .map(|i| format!("X-F{i}: {}", "b".repeat(100)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(with_key(&rig, "/x", &many).status, 431);
}

#[test]
fn connection_listed_headers_cannot_remove_what_keyward_sets() {
    // Proxies drop the hop-by-hop names a client lists in `Connection`; listing keyward's own
    // headers there must not make the app miss them: refused, or forwarded intact.
    let rig = start("");
    for name in [
        "X-Keyward-User",
        "X-Forwarded-For",
        "Gateway-Request-Id",
        "X-Keyward-Credential",
    ] {
        // One Connection header, so that pingora reads its `close` too.
        let raw = format!(
            "GET /x HTTP/1.1\r\nHost: app.test\r\nArgus-API-Key: {}\r\n\
             Connection: close, {name}\r\n\r\n",
            rig.key
        );
        let resp = raw_request(rig.kw.proxy, raw.as_bytes());
        match resp.status {
            400 => {}
            200 => {
                let seen = resp.json();
                let lower = name.to_ascii_lowercase();
                assert!(seen["headers"][&lower].is_string(), "{name} was removed");
            }
            other => panic!("{name}: {other}"),
        }
    }
}
