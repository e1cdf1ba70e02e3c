//! `listen.authz` (SPEC §13), asked directly as each convention's edge would ask it: the
//! trust of callers, each convention's description of the request, its statuses, the identity
//! headers of an allowed answer, and signed bodies. `authz_edges.rs` puts real nginx and Caddy
//! in front.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, raw_request, Keyward, RawResponse, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /admin
    require: { min_security_level: ADMINISTRATIVE }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn start(extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: format!("external_authz:\n  trusted_callers: [127.0.0.1/32]\n{extra}"),
        authz_listener: true,
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    kw
}

fn authz(kw: &Keyward) -> SocketAddr {
    kw.authz.unwrap()
}

/// Asks `path` on `listen.authz` with `headers` (and `body`), as raw bytes.
fn ask(
    kw: &Keyward,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str("Host: app.example\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(authz(kw), &bytes)
}

/// nginx's question about `method uri`.
fn nginx(kw: &Keyward, method: &str, uri: &str, more: &[(&str, &str)]) -> RawResponse {
    let mut headers = vec![("X-Original-Method", method), ("X-Original-URI", uri)];
    headers.extend_from_slice(more);
    ask(kw, "GET", "/auth/nginx", &headers, b"")
}

/// Traefik's or Caddy's question about `method uri`.
fn forward(kw: &Keyward, method: &str, uri: &str, more: &[(&str, &str)]) -> RawResponse {
    let mut headers = vec![
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-Host", "app.example"),
        ("X-Forwarded-Proto", "http"),
    ];
    headers.extend_from_slice(more);
    ask(kw, "GET", "/auth/forward", &headers, b"")
}

fn reason(resp: &RawResponse) -> &str {
    resp.header("x-keyward-reason").unwrap_or("")
}

fn assert_allowed_as(resp: &RawResponse, user: &str, method: &str) {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-keyward-user"), Some(user), "{resp:?}");
    assert_eq!(resp.header("x-keyward-auth-method"), Some(method));
    assert_eq!(resp.header("x-keyward-security-level"), Some("DEFAULT"));
    assert!(resp.header("x-keyward-user-id").is_some());
    assert!(resp.header("x-keyward-credential").is_some());
    assert_eq!(resp.header("gateway-request-id").map(str::len), Some(16));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
}

fn key(kw: &Keyward, body: serde_json::Value) -> String {
    kw.create_api_key("john", body)
}

#[test]
fn nginx_convention_answers_200_401_403_only() {
    let kw = start("");
    let key = key(&kw, json!({"description": "ci"}));
    let slow = kw.create_api_key(
        "john",
        json!({"description": "slow", "rateLimit": {"requestsPerSecond": 0.001, "burst": 1}}),
    );

    let resp = nginx(&kw, "GET", "/x", &[]);
    assert_eq!(resp.status, 401);
    assert!(resp.header("www-authenticate").is_some());
    assert_eq!(reason(&resp), "credentials_required");
    assert_eq!(resp.header("cache-control"), Some("no-store"));

    // The client's own identity headers are never echoed.
    let resp = nginx(
        &kw,
        "GET",
        "/x",
        &[
            ("Argus-API-Key", &key),
            ("X-Keyward-User", "mallory"),
            ("X-Keyward-Customer", "7"),
        ],
    );
    assert_allowed_as(&resp, "john", "APIKEY");
    assert_ne!(resp.header("x-keyward-customer"), Some("7"));
    let resp = nginx(&kw, "GET", "/public/x", &[("X-Keyward-User", "mallory")]);
    assert_eq!(resp.status, 200);
    // Every identity header, empty, so that an edge copying them overwrites the client's.
    let identity: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-keyward-"))
        .collect();
    assert_eq!(identity.len(), 8, "{resp:?}");
    assert!(identity.iter().all(|(_, v)| v.is_empty()), "{resp:?}");

    // Basic.
    let resp = nginx(
        &kw,
        "GET",
        "/x",
        &[("Authorization", "Basic am9objpqb2huLXBhc3N3b3Jk")],
    );
    assert_allowed_as(&resp, "john", "PASSWORD");

    // A rate-limited key: 403 for nginx (it turns a 429 into 500).
    assert_eq!(
        nginx(&kw, "GET", "/x", &[("Argus-API-Key", &slow)]).status,
        200
    );
    let resp = nginx(&kw, "GET", "/x", &[("Argus-API-Key", &slow)]);
    assert_eq!(resp.status, 403);
    assert_eq!(reason(&resp), "rate_limited");

    // A description that cannot be read is refused, 403 too.
    for headers in [
        vec![("X-Original-URI", "/x")],
        vec![("X-Original-Method", "GET")],
        vec![
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/x"),
            ("X-Original-URL", "http://app.example/admin"),
        ],
        vec![
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/%2fadmin"),
        ],
    ] {
        let mut headers = headers;
        headers.push(("Argus-API-Key", &key));
        let resp = ask(&kw, "GET", "/auth/nginx", &headers, b"");
        assert_eq!(resp.status, 403, "{headers:?}: {resp:?}");
        assert!(!reason(&resp).is_empty());
    }

    // ingress-nginx names scheme and host in X-Original-URL.
    let resp = ask(
        &kw,
        "GET",
        "/auth/nginx",
        &[
            ("Host", "keyward.svc"),
            ("X-Original-Method", "GET"),
            ("X-Original-URL", "https://app.example/x"),
            ("Argus-API-Key", &key),
        ],
        b"",
    );
    assert_allowed_as(&resp, "john", "APIKEY");
}

#[test]
fn every_spelling_of_an_admin_only_path_is_refused_in_every_convention() {
    let kw = start("");
    let key = key(&kw, json!({"description": "ci"}));
    let spellings = [
        "/admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/x/%2e%2e/admin",
        "/admin;x",
        "/admin/",
        "http://app.example/admin",
    ];
    for uri in spellings {
        let resp = nginx(&kw, "GET", uri, &[("Argus-API-Key", &key)]);
        assert_eq!(resp.status, 403, "nginx {uri}: {resp:?}");
        // Path parameters are refused by the proxy itself (400), before any route.
        let refused = |resp: &RawResponse| {
            resp.status == 403 || (resp.status == 400 && reason(resp) == "path_parameter")
        };
        let resp = forward(&kw, "GET", uri, &[("Argus-API-Key", &key)]);
        assert!(refused(&resp), "forward {uri}: {resp:?}");
        if let Some(path) = uri.strip_prefix('/') {
            let resp = ask(
                &kw,
                "GET",
                &format!("/auth/envoy/{path}"),
                &[("Argus-API-Key", &key)],
                b"",
            );
            assert!(refused(&resp), "envoy {uri}: {resp:?}");
        }
    }
    // keyward's own paths are never decided for an upstream, whoever asks.
    for uri in [
        "/_admin/x",
        "/authentication/v1/user/john/apikey",
        "/%2ETOKEN/",
    ] {
        let resp = nginx(&kw, "GET", uri, &[("Argus-API-Key", &key)]);
        assert_eq!(resp.status, 403, "{uri}: {resp:?}");
        assert_eq!(reason(&resp), "reserved_path");
    }
    // Not an admin path: allowed.
    assert_eq!(
        nginx(&kw, "GET", "/administration", &[("Argus-API-Key", &key)]).status,
        200
    );
}

#[test]
fn forward_and_envoy_conventions_pass_the_proxys_status() {
    let kw = start("");
    let slow = kw.create_api_key(
        "john",
        json!({"description": "slow", "rateLimit": {"requestsPerSecond": 0.001, "burst": 1}}),
    );
    assert_eq!(
        forward(&kw, "GET", "/x", &[("Argus-API-Key", &slow)]).status,
        200
    );
    let resp = forward(&kw, "GET", "/x", &[("Argus-API-Key", &slow)]);
    assert_eq!(resp.status, 429, "{resp:?}");
    assert!(resp.header("retry-after").is_some());
    assert!(resp.header("ratelimit").is_some());
    assert_eq!(resp.json()["reason"], "rate_limited");
    let resp = ask(
        &kw,
        "GET",
        "/auth/envoy/x",
        &[("Argus-API-Key", &slow)],
        b"",
    );
    assert_eq!(resp.status, 429, "{resp:?}");

    let resp = forward(&kw, "GET", "/x", &[]);
    assert_eq!(resp.status, 401);
    assert!(resp.header("www-authenticate").is_some());
    let resp = ask(&kw, "GET", "/auth/envoy/x", &[], b"");
    assert_eq!(resp.status, 401);

    // The token cookie.
    let minted = client()
        .post(kw.url("/.TOKEN/"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(minted.status(), 201);
    let cookie = minted.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie.split(';').next().unwrap().to_owned();
    let resp = forward(&kw, "GET", "/x", &[("Cookie", &token)]);
    assert_allowed_as(&resp, "john", "TOKEN");
    let resp = ask(
        &kw,
        "PUT",
        "/auth/envoy/x",
        &[
            ("Cookie", &token),
            ("X-Keyward-User", "mallory"),
            ("X-Keyward-Role", "admin"),
            ("X_Keyward_Level", "ADMINISTRATIVE"),
        ],
        b"",
    );
    assert_allowed_as(&resp, "john", "TOKEN");
    // Envoy keeps the client's headers the answer does not overwrite: named for removal.
    assert_eq!(
        resp.header("x-envoy-auth-headers-to-remove"),
        Some("x-keyward-role,x_keyward_level"),
        "{resp:?}"
    );

    // A forward description without its host is refused, never guessed.
    let resp = ask(
        &kw,
        "GET",
        "/auth/forward",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/x"),
            ("Cookie", &token),
        ],
        b"",
    );
    assert_eq!(resp.status, 400);
    assert_eq!(reason(&resp), "original_request_missing");

    // Another path on the listener: nothing there.
    assert_eq!(
        ask(&kw, "GET", "/x", &[("Cookie", &token)], b"").status,
        404
    );
}

#[test]
fn a_revoked_key_is_refused_at_once() {
    let kw = start("");
    let key = key(&kw, json!({"description": "ci"}));
    assert_eq!(
        nginx(&kw, "GET", "/x", &[("Argus-API-Key", &key)]).status,
        200
    );
    let prefix = key.rsplit_once('/').unwrap().0;
    let revoked = client()
        .delete(kw.url(&format!("/authentication/v1/user/john/apikey/{prefix}")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        nginx(&kw, "GET", "/x", &[("Argus-API-Key", &key)]).status,
        401
    );
    assert_eq!(
        forward(&kw, "GET", "/x", &[("Argus-API-Key", &key)]).status,
        401
    );
}

#[test]
fn untrusted_callers_get_403_and_nothing_is_decided() {
    let kw = start("");
    let once = kw.create_api_key(
        "john",
        json!({"description": "once", "rateLimit": {"requestsPerSecond": 0.001, "burst": 1}}),
    );
    let untrusted = reqwest::blocking::Client::builder()
        .local_address(Some("127.0.0.3".parse().unwrap()))
        .no_proxy()
        .build()
        .unwrap();
    for path in [
        "/auth/nginx",
        "/auth/forward",
        "/auth/envoy/x",
        "/elsewhere",
    ] {
        let resp = untrusted
            .get(format!("http://{}{path}", authz(&kw)))
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", "/x")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", "/x")
            .header("X-Forwarded-Host", "app.example")
            .header("Argus-API-Key", &once)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(resp.headers()["x-keyward-reason"], "untrusted_caller");
        assert!(resp.headers().get("x-keyward-user").is_none());
    }
    // The key's one request was not spent by the untrusted questions.
    assert_eq!(
        nginx(&kw, "GET", "/x", &[("Argus-API-Key", &once)]).status,
        200
    );
    assert_eq!(
        nginx(&kw, "GET", "/x", &[("Argus-API-Key", &once)]).status,
        403
    );

    // Metrics name the questions' route kind.
    let metrics = kw.metrics();
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("keyward_request_duration_seconds_count")
                && l.contains(r#"route_kind="authz""#)
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: u64 = count.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 6, "{count}");
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Enrolls a signature key for john; returns it and its keyid.
pub fn enroll(kw: &Keyward) -> (SigningKey, String) {
    use base64::Engine as _;
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(json!({"publicKey": public, "description": "ci"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().unwrap();
    let id = body["data"]["keyID"].as_i64().unwrap();
    (key, format!("john/{id}"))
}

fn signed_headers(
    key: &SigningKey,
    keyid: &str,
    method: &str,
    url: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nonce = format!(
        "n{}-{}",
        now(),
        NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sign(
        key,
        keyid,
        method,
        &url.parse().unwrap(),
        Some(body),
        now(),
        &nonce,
    )
    .unwrap()
}

/// Traefik's description of `POST http://app.example/upload`.
const FORWARDED_UPLOAD: [(&str, &str); 3] = [
    ("X-Forwarded-Method", "POST"),
    ("X-Forwarded-Uri", "/upload"),
    ("X-Forwarded-Host", "app.example"),
];

#[test]
fn a_signed_body_is_accepted_only_when_forwarded_whole() {
    let kw = start("  forward_body_max: 64\n");
    let (key, keyid) = enroll(&kw);
    let body = br#"{"case": 42}"#;
    let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", body);
    let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();

    // Envoy with `with_request_body`: the body comes with the question.
    let resp = ask(&kw, "POST", "/auth/envoy/upload", &headers, body);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-keyward-auth-method"), Some("SIGNATURE"));

    // The same signature again: a replay.
    let resp = ask(&kw, "POST", "/auth/envoy/upload", &headers, body);
    assert_eq!(resp.status, 401, "{resp:?}");

    // Without the body: 403 body_not_forwarded, in every convention.
    for convention in ["envoy", "forward", "nginx"] {
        let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", body);
        let mut headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let path = match convention {
            "envoy" => "/auth/envoy/upload",
            "forward" => {
                headers.extend(FORWARDED_UPLOAD);
                "/auth/forward"
            }
            _ => {
                headers.extend([("X-Original-Method", "POST"), ("X-Original-URI", "/upload")]);
                "/auth/nginx"
            }
        };
        let method = if convention == "envoy" { "POST" } else { "GET" };
        let resp = ask(&kw, method, path, &headers, b"");
        assert_eq!(resp.status, 403, "{convention}: {resp:?}");
        assert_eq!(reason(&resp), "body_not_forwarded", "{convention}");
    }

    // Forwarded whole through Traefik's `forwardBody`: accepted as through Envoy.
    let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", body);
    let mut headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers.extend(FORWARDED_UPLOAD);
    let resp = ask(&kw, "POST", "/auth/forward", &headers, body);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-keyward-auth-method"), Some("SIGNATURE"));

    // A forwarded body that does not match: 403 digest_mismatch in every convention (SPEC
    // §13), not the proxy's 401 — the edge's request may not pass.
    for convention in ["envoy", "forward", "nginx"] {
        let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", body);
        let mut headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let path = match convention {
            "envoy" => "/auth/envoy/upload",
            "forward" => {
                headers.extend(FORWARDED_UPLOAD);
                "/auth/forward"
            }
            _ => {
                headers.extend([("X-Original-Method", "POST"), ("X-Original-URI", "/upload")]);
                "/auth/nginx"
            }
        };
        let resp = ask(&kw, "POST", path, &headers, br#"{"case": 43}"#);
        assert_eq!(resp.status, 403, "{convention}: {resp:?}");
        assert_eq!(reason(&resp), "digest_mismatch", "{convention}");
        assert!(resp.header("x-keyward-user").is_none(), "{convention}");
    }
    // A body Envoy cut (`allow_partial_message`) is not the whole body: not forwarded.
    let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", body);
    let mut headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers.push(("x-envoy-auth-partial-body", "true"));
    let resp = ask(&kw, "POST", "/auth/envoy/upload", &headers, &body[..5]);
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(reason(&resp), "body_not_forwarded");

    // The proxy itself still answers a client's mismatched body with its 401.
    let signed = signed_headers(&key, &keyid, "POST", &kw.url("/upload"), body);
    let mut upload = client()
        .post(kw.url("/upload"))
        .body(&br#"{"case": 43}"#[..]);
    for (name, value) in &signed {
        upload = upload.header(*name, value);
    }
    let resp = upload.send().unwrap();
    assert_eq!(resp.status(), 401);
    let refused: serde_json::Value = resp.json().unwrap();
    assert_eq!(refused["reason"], "digest_mismatch");

    // Over `external_authz.forward_body_max`: cannot be checked.
    let big = vec![b'x'; 65];
    let signed = signed_headers(&key, &keyid, "POST", "http://app.example/upload", &big);
    let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let resp = ask(&kw, "POST", "/auth/envoy/upload", &headers, &big);
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(reason(&resp), "body_not_forwarded");

    // A signed request without a body needs none.
    let signed = sign(
        &key,
        &keyid,
        "GET",
        &"http://app.example/x".parse().unwrap(),
        None,
        now(),
        "n-get",
    )
    .unwrap();
    let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let resp = ask(&kw, "GET", "/auth/envoy/x", &headers, b"");
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[test]
fn listen_authz_needs_trusted_callers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {{ proxy: 127.0.0.1:{}, ops: 127.0.0.1:{}, authz: 127.0.0.1:{} }}\n\
             upstream: {{ address: 127.0.0.1:9 }}\nstore: {{ url: \"sqlite://{}\" }}\n\
             routes:\n  - path: /\n    public: true\n",
            common::free_port(),
            common::free_port(),
            common::free_port(),
            dir.path().join("k.db").display()
        ),
    )
    .unwrap();
    let out = common::cli(&path, &["check-config"], None);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("external_authz.trusted_callers"), "{text}");
}

/// Asks the gRPC `Check` with the Python client; returns its summary of the CheckResponse.
fn grpc_check(kw: &Keyward, request: serde_json::Value) -> serde_json::Value {
    let file = kw.dir.path().join(format!("check-{}.json", now_nanos()));
    std::fs::write(&file, request.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/ext_authz_check.py"
        ))
        .arg(authz(kw).to_string())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the gRPC client failed (scripts/prereqs.sh installs grpcio and xds-protos): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn grpc_check_from_a_real_grpc_client() {
    let kw = start("  forward_body_max: 64\n");
    let key = key(&kw, json!({"description": "ci"}));

    // Allowed: the identity to set, overwriting; the client's forged headers to remove.
    let answer = grpc_check(
        &kw,
        json!({"method": "GET", "path": "/x?a=1", "headers": {
            "argus-api-key": key, "x-keyward-user": "mallory", "x-keyward-role": "admin"}}),
    );
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["headers"]["x-keyward-user"], "john");
    assert_eq!(answer["headers"]["x-keyward-auth-method"], "APIKEY");
    assert_eq!(
        answer["headers"]["gateway-request-id"]
            .as_str()
            .unwrap()
            .len(),
        16
    );
    assert_eq!(answer["actions"], json!([2]), "OVERWRITE_IF_EXISTS_OR_ADD");
    assert_eq!(answer["remove"], json!(["x-keyward-role"]), "{answer}");

    // Refused: no credential → 401 with the challenge and the proxy's JSON body.
    let answer = grpc_check(&kw, json!({"method": "GET", "path": "/x"}));
    assert_eq!(answer["code"], 16, "{answer}");
    assert_eq!(answer["status"], 401);
    assert!(answer["headers"]["www-authenticate"].is_string());
    let body: serde_json::Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["reason"], "credentials_required");

    // Policy-denied: a DEFAULT key on an admin-only path, in any spelling.
    for path in ["/admin", "//admin", "/%61dmin", "/./admin", "/x/../admin"] {
        let answer = grpc_check(
            &kw,
            json!({"method": "GET", "path": path, "headers": {"argus-api-key": key}}),
        );
        assert_eq!(answer["code"], 7, "{path}: {answer}");
        assert_eq!(answer["status"], 403, "{path}");
        assert_eq!(
            answer["headers"]["x-keyward-reason"], "security_level_too_low",
            "{path}: {answer}"
        );
    }

    // Basic and a signed body forwarded in the message (`with_request_body`).
    let answer = grpc_check(
        &kw,
        json!({"method": "GET", "path": "/x", "headers": {
            "authorization": "Basic am9objpqb2huLXBhc3N3b3Jk"}}),
    );
    assert_eq!(
        answer["headers"]["x-keyward-auth-method"], "PASSWORD",
        "{answer}"
    );
    let (signing, keyid) = enroll(&kw);
    let body = r#"{"case": 42}"#;
    // A fresh signature for each call (a used one is a replay), as the JSON the client takes.
    let signed_json = || -> serde_json::Map<String, serde_json::Value> {
        signed_headers(
            &signing,
            &keyid,
            "POST",
            "http://app.example/upload",
            body.as_bytes(),
        )
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect()
    };
    let headers = signed_json();
    let answer = grpc_check(
        &kw,
        json!({"method": "POST", "path": "/upload", "headers": headers.clone(), "body": body}),
    );
    assert_eq!(
        answer["headers"]["x-keyward-auth-method"], "SIGNATURE",
        "{answer}"
    );
    // Without the body: body_not_forwarded.
    let headers = signed_json();
    let answer = grpc_check(
        &kw,
        json!({"method": "POST", "path": "/upload", "headers": headers}),
    );
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(answer["headers"]["x-keyward-reason"], "body_not_forwarded");
    // With a body that is not the one signed: 403 digest_mismatch.
    let headers = signed_json();
    let answer = grpc_check(
        &kw,
        json!({"method": "POST", "path": "/upload", "headers": headers, "body": r#"{"case": 43}"#}),
    );
    assert_eq!(answer["code"], 7, "{answer}");
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(answer["headers"]["x-keyward-reason"], "digest_mismatch");
}

/// One gRPC call over raw h2c (HTTP/2 by prior knowledge, no gRPC library): `body` as the
/// DATA, `headers` added. Returns the HTTP status, the `grpc-status` (from the trailers, or from
/// the header of a trailers-only answer) and the response's DATA. A stream that hangs fails.
async fn h2c_call(
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>) {
    h2c_call_ending(to, from, headers, body, true).await
}

/// [`h2c_call`], whose stream the caller may leave open after `body` (`end` false).
async fn h2c_call_ending(
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    end: bool,
) -> (u16, Option<String>, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from, 0)).unwrap();
    }
    let tcp = socket.connect(to).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{to}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = sender
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    stream.send_data(body.into(), end).unwrap();
    let answer = async {
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let in_header = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        let in_trailers = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned());
        (status, in_trailers.or(in_header), data)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), answer)
        .await
        .expect("the gRPC stream hung")
}

/// A gRPC message frame: uncompressed, then its length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A `CheckRequest` asking about `GET /x` with `headers`, encoded by envoy-types.
fn check_request(headers: &[(&str, &str)]) -> Vec<u8> {
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
    use prost::Message;
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/x".into(),
        host: "app.example".into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .encode_to_vec()
}

fn check_response(data: &[u8]) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    use prost::Message;
    assert_eq!(data[0], 0, "uncompressed");
    let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
    assert_eq!(data.len(), 5 + length, "one message");
    envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(&data[5..]).unwrap()
}

/// A call's name, its extra headers, its DATA, and the `grpc-status` expected.
type FramingCase<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, &'a str);

/// gRPC framing that cannot be read is answered by tonic with a gRPC error status in the
/// trailers (HTTP 200, never a 500 or a stream left open), and nothing is decided; a good call
/// over the same raw h2c is answered with a `CheckResponse`.
#[test]
fn grpc_framing_errors_are_grpc_statuses() {
    let kw = start("  forward_body_max: 64\n");
    let key = key(&kw, json!({"description": "ci"}));
    let to = authz(&kw);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // gRPC codes: 8 RESOURCE_EXHAUSTED, 11 OUT_OF_RANGE, 12 UNIMPLEMENTED, 13 INTERNAL.
        let message = check_request(&[("argus-api-key", &key)]);
        let mut truncated = grpc_frame(&message);
        truncated.truncate(truncated.len() - 3);
        let mut compressed = grpc_frame(&message);
        compressed[0] = 1;
        let cases: Vec<FramingCase> = vec![
            ("truncated message", &[], truncated, "13"),
            ("only part of the prefix", &[], vec![0, 0, 0], "13"),
            ("no message", &[], Vec::new(), "13"),
            (
                "compressed flag, no grpc-encoding",
                &[],
                compressed.clone(),
                "13",
            ),
            (
                "an unknown flag",
                &[],
                [&[2u8][..], &grpc_frame(&message)[1..]].concat(),
                "13",
            ),
            ("not a CheckRequest", &[], grpc_frame(b"\xff\xff\xff"), "13"),
            (
                "gzip, which is not accepted",
                &[("grpc-encoding", "gzip")],
                compressed,
                "12",
            ),
            (
                "a length over the limit",
                &[],
                vec![0, 0xff, 0xff, 0xff, 0xff],
                "11",
            ),
            (
                "a body over the limit",
                &[],
                grpc_frame(&vec![0x0a; 256 * 1024]),
                "8",
            ),
        ];
        for (case, headers, body, expected) in cases {
            let (status, grpc_status, _) = h2c_call(to, None, headers, body).await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(grpc_status.as_deref(), Some(expected), "{case}");
        }

        // The same key, well framed: allowed; no credential: denied with the proxy's 401.
        let (status, grpc_status, data) = h2c_call(to, None, &[], grpc_frame(&message)).await;
        assert_eq!((status, grpc_status.as_deref()), (200, Some("0")));
        let answer = check_response(&data);
        assert_eq!(answer.status.unwrap().code, 0);
        let (_, grpc_status, data) = h2c_call(to, None, &[], grpc_frame(&check_request(&[]))).await;
        assert_eq!(grpc_status.as_deref(), Some("0"));
        let answer = check_response(&data);
        assert_eq!(answer.status.unwrap().code, 16, "UNAUTHENTICATED");

        // An untrusted caller: a CheckResponse denying (Envoy then refuses; a gRPC error
        // would be let through by `failure_mode_allow`), its message unread.
        let (_, grpc_status, data) = h2c_call(
            to,
            Some("127.0.0.3".parse().unwrap()),
            &[],
            grpc_frame(&message),
        )
        .await;
        assert_eq!(grpc_status.as_deref(), Some("0"));
        let answer = check_response(&data);
        assert_eq!(answer.status.unwrap().code, 7, "PERMISSION_DENIED");
        let Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
                denied,
            ),
        ) = answer.http_response
        else {
            panic!("not denied");
        };
        assert_eq!(denied.status.unwrap().code, 403);
        assert!(denied.body.contains("untrusted_caller"), "{}", denied.body);
    });
}

/// A call whose message never ends is answered at `limits.body_timeout` with
/// DEADLINE_EXCEEDED (4), not left open.
#[test]
fn a_grpc_call_that_never_ends_gets_deadline_exceeded() {
    let kw = start("limits: { body_timeout: 1s }\n");
    let to = authz(&kw);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let message = grpc_frame(&check_request(&[]));
        let (status, grpc_status, _) =
            h2c_call_ending(to, None, &[], message[..8].to_vec(), false).await;
        assert_eq!((status, grpc_status.as_deref()), (200, Some("4")));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    });
}

/// Raw bytes from a trusted caller (no client normalises names): a field of the description
/// in an underscore spelling (which HTTP/1.1 parsers accept as another name, and nginx
/// variables, CGI and WSGI read as the same), given twice, or in two cases is refused; it never
/// makes keyward decide another path than the edge's.
#[test]
fn respelled_or_repeated_descriptions_are_refused_from_raw_bytes() {
    let kw = start("");
    let key = key(&kw, json!({"description": "ci"}));
    let raw = |path: &str, lines: &[&str]| {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nArgus-API-Key: {key}\r\n"
        );
        for line in lines {
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        raw_request(authz(&kw), request.as_bytes())
    };
    // The edge means /admin (a DEFAULT key may not); the client's forgery names /public.
    let nginx_cases: [&[&str]; 8] = [
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "X_Original_URI: /public/x",
        ],
        &[
            "X-Original-Method: GET",
            "X_Original_URI: /public/x",
            "X-Original-URI: /admin",
        ],
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "x_original_uri: /public/x",
        ],
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "X_Original_URL: http://app.example/public/x",
        ],
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "x-original-uri: /public/x",
        ],
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "X-Original-URI: /public/x",
        ],
        &[
            "X-Original-Method: GET",
            "X_Original_Method: DELETE",
            "X-Original-URI: /admin",
        ],
        &[
            "X-Original-Method: GET",
            "X-Original-URI: /admin",
            "X-Forwarded-Proto: https",
            "X_Forwarded_Proto: http",
        ],
    ];
    for lines in nginx_cases {
        let resp = raw("/auth/nginx", lines);
        assert_eq!(resp.status, 403, "{lines:?}: {resp:?}");
        assert_eq!(reason(&resp), "ambiguous_original_request", "{lines:?}");
        assert!(resp.header("x-keyward-user").is_none(), "{lines:?}");
    }
    let forward_cases: [&[&str]; 5] = [
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri: /admin",
            "X_Forwarded_Uri: /public/x",
            "X-Forwarded-Host: app.example",
        ],
        &[
            "X-Forwarded-Method: GET",
            "X_Forwarded_Uri: /public/x",
            "X-Forwarded-Uri: /admin",
            "X-Forwarded-Host: app.example",
        ],
        &[
            "X-Forwarded-Method: DELETE",
            "X_Forwarded_Method: GET",
            "X-Forwarded-Uri: /admin",
            "X-Forwarded-Host: app.example",
        ],
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri: /admin",
            "X-Forwarded-Uri: /public/x",
            "X-Forwarded-Host: app.example",
        ],
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri: /admin",
            "X-Forwarded-Host: app.example",
            "X_Forwarded_Host: other.example",
        ],
    ];
    for lines in forward_cases {
        let resp = raw("/auth/forward", lines);
        assert_eq!(resp.status, 400, "{lines:?}: {resp:?}");
        assert_eq!(reason(&resp), "ambiguous_original_request", "{lines:?}");
    }
    // Only the underscore spelling: never read as the field.
    let resp = raw(
        "/auth/nginx",
        &["X_Original_Method: GET", "X_Original_URI: /public/x"],
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.header("x-keyward-user").is_none());
    // One value naming two targets, a folded line, a space before the colon: never /public.
    for lines in [
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri: /admin, /public/x",
            "X-Forwarded-Host: app.example",
        ][..],
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri: /admin",
            " /public/x",
            "X-Forwarded-Host: app.example",
        ],
        &[
            "X-Forwarded-Method: GET",
            "X-Forwarded-Uri : /public/x",
            "X-Forwarded-Uri: /admin",
            "X-Forwarded-Host: app.example",
        ],
    ] {
        let resp = raw("/auth/forward", lines);
        assert!(matches!(resp.status, 400 | 403), "{lines:?}: {resp:?}");
        assert!(resp.header("x-keyward-user").is_none(), "{lines:?}");
    }
    // The Envoy convention reads only X-Forwarded-Proto from headers.
    let resp = raw(
        "/auth/envoy/public/x",
        &["X-Forwarded-Proto: https", "X_Forwarded_Proto: http"],
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    // The same descriptions spelled once, as edges send them: decided on the edge's path.
    let resp = raw(
        "/auth/nginx",
        &["X-Original-Method: GET", "X-Original-URI: /admin"],
    );
    assert_eq!(resp.status, 403);
    assert_eq!(reason(&resp), "security_level_too_low");
    let resp = raw(
        "/auth/nginx",
        &["X-Original-Method: GET", "X-Original-URI: /public/x"],
    );
    assert_eq!(resp.status, 200);
}

/// Client-sent identity headers in underscore spellings are never believed and never come
/// back in an allowed answer (an edge's `$upstream_http_x_keyward_user` reads `_` as `-`).
#[test]
fn underscore_identity_headers_never_come_back() {
    let kw = start("");
    let key = key(&kw, json!({"description": "ci"}));
    let forged = [
        "X_Keyward_User: mallory",
        "X_Keyward_Functions: POWER-USER",
        "x_keyward_security_level: ADMINISTRATIVE",
        "X-Keyward_User_Id: 1",
        "Gateway_Request_Id: forged",
    ];
    for (path, description) in [
        (
            "/auth/nginx",
            &["X-Original-Method: GET", "X-Original-URI: /x"][..],
        ),
        (
            "/auth/forward",
            &[
                "X-Forwarded-Method: GET",
                "X-Forwarded-Uri: /x",
                "X-Forwarded-Host: app.example",
            ],
        ),
        ("/auth/envoy/x", &[]),
    ] {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nArgus-API-Key: {key}\r\n"
        );
        for line in description.iter().chain(&forged) {
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let resp = raw_request(authz(&kw), request.as_bytes());
        assert_allowed_as(&resp, "john", "APIKEY");
        assert_eq!(
            resp.header("x-keyward-functions"),
            Some(""),
            "{path}: {resp:?}"
        );
        assert!(
            resp.headers.iter().all(|(name, value)| !name.contains('_')
                && value != "mallory"
                && value != "forged"
                && value != "ADMINISTRATIVE"),
            "{path}: {resp:?}"
        );
        if path.starts_with("/auth/envoy") {
            // Named for Envoy to remove from the request it forwards.
            let remove = resp.header("x-envoy-auth-headers-to-remove").unwrap();
            for name in [
                "x_keyward_functions",
                "x_keyward_security_level",
                "x_keyward_user",
            ] {
                assert!(remove.split(',').any(|n| n == name), "{name}: {remove}");
            }
        }
        // A DEFAULT key claiming ADMINISTRATIVE in an underscore spelling is still DEFAULT.
        let admin = request
            .replace(": /x\r\n", ": /admin\r\n")
            .replace("/auth/envoy/x ", "/auth/envoy/admin ");
        let resp = raw_request(authz(&kw), admin.as_bytes());
        assert_eq!(resp.status, 403, "{path}: {resp:?}");
        assert_eq!(reason(&resp), "security_level_too_low", "{path}");
    }
}
