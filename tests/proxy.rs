//! The request path end to end: real keyward, real upstream, real client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, echoed, echoed_header, Keyward, Setup, ADMIN_PASSWORD};
use std::io::{Read, Write};
use std::time::Duration;

fn is_request_id(value: &str) -> bool {
    value.len() == 16
        && value
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
}

fn request_id(resp: &reqwest::blocking::Response) -> String {
    let id = resp
        .headers()
        .get("gateway-request-id")
        .expect("Gateway-Request-Id on every response")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_request_id(&id), "{id:?}");
    id
}

#[test]
fn public_route_reaches_upstream_without_credentials() {
    let kw = Keyward::start();
    let resp = client().get(kw.url("/public/page?q=1")).send().unwrap();
    let id = request_id(&resp);
    let echo = echoed(resp);
    assert_eq!(echo["path"], "/public/page");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(
        echoed_header(&echo, "gateway-request-id"),
        Some(id.as_str())
    );
    assert_eq!(echoed_header(&echo, "x-keyward-user"), None);
}

#[test]
fn protected_route_without_credentials_is_401_and_never_forwarded() {
    let kw = Keyward::start();
    let before = kw.upstream().requests();
    let resp = client().get(kw.url("/private")).send().unwrap();
    assert_eq!(resp.status(), 401);
    let id = request_id(&resp);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["reason"], "credentials_required");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(kw.upstream().requests(), before);
}

#[test]
fn basic_with_right_and_wrong_password() {
    let kw = Keyward::start();
    kw.add_user(
        "john",
        "john-password",
        &["--function", "CASE-SECMON-RO", "--customer", "7"],
    );
    let ok = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    let echo = echoed(ok);
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("7"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some("CASE-SECMON-RO")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("DEFAULT")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("PASSWORD")
    );
    assert_eq!(echoed_header(&echo, "x-keyward-credential"), Some("john"));

    let before = kw.upstream().requests();
    // One reason for every failed password login (SPEC §6); the metrics keep the cause.
    for (user, password, reason) in [
        ("john", "wrong-password", "bad_credentials"),
        ("nobody", "john-password", "bad_credentials"),
    ] {
        let resp = client()
            .get(kw.url("/x"))
            .basic_auth(user, Some(password))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(body["reason"], reason);
    }
    // A wrong password on a public route is still refused: a presented credential is checked.
    let resp = client()
        .get(kw.url("/public"))
        .basic_auth("john", Some("wrong-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(kw.upstream().requests(), before);
    let metrics = kw.metrics();
    assert!(
        metrics.contains(r#"keyward_auth_failures_total{method="basic",reason="bad_secret"} 2"#),
        "{metrics}"
    );
}

#[test]
fn malformed_basic_credentials_are_401_and_never_forwarded() {
    let kw = Keyward::start();
    let before = kw.upstream().requests();
    for value in [
        "Basic",
        "Basic !!!",
        "Basic bm9jb2xvbg==", // "nocolon"
        "Bearer abc",
        &format!("Basic {}", "A".repeat(5000)),
    ] {
        let resp = client()
            .get(kw.url("/public"))
            .header("authorization", value)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "{value}");
        request_id(&resp);
    }
    let resp = client()
        .get(kw.url("/x"))
        .header("authorization", "Basic YWRtaW46eA==")
        .header("authorization", "Basic YWRtaW46eQ==")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["reason"], "ambiguous_credentials");
    assert_eq!(kw.upstream().requests(), before);
}

#[test]
fn spoofed_identity_headers_are_stripped_and_credential_removed() {
    let kw = Keyward::start();
    let echo = echoed(
        client()
            .get(kw.url("/public"))
            .header("X-Keyward-User", "root")
            .header("x-keyward-functions", "POWER-USER")
            .header("X-Keyward-Anything-Else", "1")
            .header("Gateway-Request-Id", "AAAAAAAAAAAAAAAA")
            .send()
            .unwrap(),
    );
    let headers = echo["headers"].as_object().unwrap();
    assert!(
        headers.keys().all(|k| !k.starts_with("x-keyward-")),
        "{headers:?}"
    );
    assert_ne!(
        echoed_header(&echo, "gateway-request-id"),
        Some("AAAAAAAAAAAAAAAA")
    );

    let echo = echoed(
        client()
            .get(kw.url("/x"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("X-Keyward-User", "root")
            .send()
            .unwrap(),
    );
    assert_eq!(
        echo["headers"]["x-keyward-user"],
        serde_json::json!(["admin"])
    );
    assert_eq!(echoed_header(&echo, "authorization"), None);
}

#[test]
fn forwarded_requests_keep_the_clients_headers_values_and_order() {
    let kw = Keyward::start();
    let echo = echoed(
        client()
            .post(kw.url("/x/items?b=2&a=1"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("Accept", "text/plain")
            .header("Accept", "application/json")
            .header("X-Custom-Header", "Mixed Case Value")
            .header("Cookie", "theme=dark; lang=en")
            .body("hello")
            .send()
            .unwrap(),
    );
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/x/items");
    assert_eq!(echo["query"], "b=2&a=1");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(
        echo["headers"]["accept"],
        serde_json::json!(["text/plain", "application/json"])
    );
    assert_eq!(
        echoed_header(&echo, "x-custom-header"),
        Some("Mixed Case Value")
    );
    assert_eq!(echoed_header(&echo, "cookie"), Some("theme=dark; lang=en"));
    assert_eq!(echoed_header(&echo, "authorization"), None);
    // Each identity header and the request id exactly once.
    for name in [
        "x-keyward-user",
        "x-keyward-user-id",
        "x-keyward-functions",
        "x-keyward-security-level",
        "x-keyward-auth-method",
        "x-keyward-credential",
        "gateway-request-id",
    ] {
        assert_eq!(
            echo["headers"][name].as_array().map(Vec::len),
            Some(1),
            "{name}: {echo}"
        );
    }
}

#[test]
fn chunked_and_sized_bodies_reach_the_upstream_whole() {
    let kw = Keyward::start();
    let body = vec![b'x'; 300_000];
    // A reader of unknown length is sent with Transfer-Encoding: chunked.
    let echo = echoed(
        client()
            .put(kw.url("/x/upload"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(
                body.clone(),
            )))
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "transfer-encoding"), Some("chunked"));
    assert_eq!(echo["body_len"], 300_000);
    let echo = echoed(
        client()
            .put(kw.url("/x/upload"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .body(body)
            .send()
            .unwrap(),
    );
    assert_eq!(echoed_header(&echo, "content-length"), Some("300000"));
    assert_eq!(echo["body_len"], 300_000);
}

#[test]
fn forward_credentials_keeps_the_authorization_header() {
    let kw = Keyward::start_with(Setup {
        extra: "forward_credentials: true".into(),
        ..Setup::default()
    });
    let echo = echoed(
        client()
            .get(kw.url("/x"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap(),
    );
    assert!(echoed_header(&echo, "authorization").is_some_and(|v| v.starts_with("Basic ")));
}

#[test]
fn basic_logins_are_cached() {
    let kw = Keyward::start();
    for _ in 0..5 {
        let resp = client()
            .get(kw.url("/x"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let metrics = kw.metrics();
    assert!(
        metrics.contains(r#"keyward_cache_misses_total{cache="basic"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keyward_cache_hits_total{cache="basic"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keyward_cache_entries{cache="basic"} 1"#),
        "{metrics}"
    );
}

#[test]
fn no_matching_route_is_refused() {
    let kw = Keyward::start_with(Setup {
        routes: "\n  - path: /only\n    public: true\n".into(),
        ..Setup::default()
    });
    // The harness waits on /public, which no route matches here: it is refused, not forwarded.
    let before = kw.upstream().requests();
    let resp = client()
        .get(kw.url("/elsewhere"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["reason"], "no_route");
    assert_eq!(kw.upstream().requests(), before);
    assert_eq!(client().get(kw.url("/only")).send().unwrap().status(), 200);
}

#[test]
fn route_requirements_give_403() {
    let kw = Keyward::start_with(Setup {
        routes: r#"
  - path: /public
    public: true
  - path: /admin
    require: { min_security_level: ADMINISTRATIVE }
  - path: /secmon
    require: { functions_any: [CASE-SECMON-RO] }
  - path: /readonly
    require: { methods: [GET] }
  - path: /keys-only
    require: { min_security_level: EXTERNAL }
    allow: [apikey]
"#
        .into(),
        ..Setup::default()
    });
    let get = |path: &str| {
        client()
            .get(kw.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap()
    };
    assert_eq!(get("/admin").status(), 403);
    assert_eq!(get("/secmon").status(), 403);
    assert_eq!(get("/readonly").status(), 200);
    assert_eq!(get("/keys-only").status(), 401);
    let post = client()
        .post(kw.url("/readonly"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(post.status(), 403);
}

#[test]
fn upstream_down_is_502_json() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let kw = Keyward::start_with(Setup {
        upstream_address: Some(dead),
        ..Setup::default()
    });
    let resp = client().get(kw.url("/public")).send().unwrap();
    assert_eq!(resp.status(), 502);
    let id = request_id(&resp);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], id.as_str());
    let metrics = kw.metrics();
    assert!(
        metrics.contains(r#"keyward_requests_total{method="GET",outcome="error"}"#),
        "{metrics}"
    );
}

#[test]
fn slow_upstream_is_504_json() {
    let kw = Keyward::start();
    // The harness config has read_timeout: 3s.
    let resp = client()
        .get(kw.url("/slow/5000"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "gateway_timeout");
}

#[test]
fn reserved_admin_paths_are_never_forwarded() {
    let kw = Keyward::start();
    let before = kw.upstream().requests();
    for path in ["/authentication/v1/nothing", "/.TOKEN/a/b", "/_admin/x"] {
        let resp = client()
            .get(kw.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        request_id(&resp);
    }
    assert_eq!(kw.upstream().requests(), before);
}

#[test]
fn malformed_requests_get_400_not_a_hang() {
    let kw = Keyward::start();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /public HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /public/a%2fb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /public/a%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET public HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = std::net::TcpStream::connect(kw.proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(raw).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} got {text:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Only the harness's readiness probe of /public reached the upstream.
    assert_eq!(kw.upstream().requests(), 1);
}

#[test]
fn ops_endpoints() {
    let kw = Keyward::start();
    assert_eq!(
        client()
            .get(kw.ops_url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client().get(kw.ops_url("/readyz")).send().unwrap().status(),
        200
    );
    client().get(kw.url("/public")).send().unwrap();
    let metrics = kw.metrics();
    for family in [
        "keyward_requests_total",
        "keyward_auth_duration_seconds",
        "keyward_upstream_responses_total",
        "keyward_store_errors_total",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    assert!(metrics.contains(r#"keyward_upstream_responses_total{status_class="2xx"}"#));
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let kw = Keyward::start();
    let url = kw.url("/slow/1200");
    let in_flight = std::thread::spawn(move || {
        client()
            .get(url)
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid_file = kw.dir.path().join("keyward.pid");
    assert!(pid_file.exists(), "serve writes server.pid_file");
    kw.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(in_flight.join().unwrap().unwrap(), 200);
    // New connections are no longer accepted once draining starts.
    std::thread::sleep(Duration::from_millis(300));
    assert!(client().get(kw.url("/public")).send().is_err());
    let mut kw = kw;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = kw.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "keyward did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    // A clean exit removes the pid file and writes out the log lines still pending (the
    // drained request's access line among them).
    assert!(!pid_file.exists(), "the pid file is removed on exit");
    assert!(kw.stderr().contains("/slow/1200"), "{}", kw.stderr());
}

#[test]
fn edge_round_robin_skips_an_unhealthy_upstream() {
    let a = common::Upstream::start();
    let b = common::Upstream::start();
    let dead = format!("127.0.0.1:{}", common::free_port());
    let kw = Keyward::start_with(Setup {
        upstream_addresses: Some(vec![a.addr.to_string(), b.addr.to_string(), dead]),
        ..Setup::default()
    });
    // Health checks run every 200 ms in this config; give them time to mark the dead one down.
    std::thread::sleep(Duration::from_millis(800));
    let (a0, b0) = (a.requests(), b.requests());
    for _ in 0..20 {
        let resp = client().get(kw.url("/public")).send().unwrap();
        assert_eq!(resp.status(), 200);
    }
    let (da, db) = (a.requests() - a0, b.requests() - b0);
    assert_eq!(da + db, 20);
    assert!(da >= 5 && db >= 5, "round robin spread {da}/{db}");
}
