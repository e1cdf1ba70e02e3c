//! The network side of the second security review (issue 20, SPEC §15), driven with raw
//! sockets and h2 frames against the real binary: dual-stack listeners, keyward's own
//! namespaces and Windows path equivalences with `routes_case_insensitive`, body deadlines and
//! the per-client connection cap, HTTP/1.1 pipelining and client-triggered error logs, and
//! HTTP/2 stream bounds.

mod common;

use common::{
    client, echoed, echoed_header, raw_request, FrameworkUpstream, Keyward, RawResponse, Setup,
    ADMIN_PASSWORD,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn create_key(kw: &Keyward, user: &str, body: Value) -> String {
    let resp = client()
        .post(kw.url(&format!("/authentication/v1/user/{user}/apikey")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    body["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

fn reason(resp: &RawResponse) -> String {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Item 5: dual-stack listeners.

/// keyward on `[::]:PORT`, reached over 127.0.0.1: the kernel reports the peer as
/// `::ffff:127.0.0.1`, which must be 127.0.0.1 for `validSources`, trusted proxies and logs.
#[test]
fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4() {
    let kw = Keyward::start_with(Setup {
        dual_stack: true,
        extra: "trusted_proxies: [127.0.0.1/32]\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let local = create_key(
        &kw,
        "john",
        json!({"description": "local", "validSources": ["127.0.0.1/32"]}),
    );
    let behind = create_key(
        &kw,
        "john",
        json!({"description": "behind", "validSources": ["203.0.113.0/24"]}),
    );

    // validSources 127.0.0.1/32 takes a client at 127.0.0.1.
    let resp = client()
        .get(kw.url("/x"))
        .header("argus-api-key", &local)
        .send()
        .unwrap();
    let echo = echoed(resp);
    assert_eq!(echoed_header(&echo, "x-forwarded-for"), Some("127.0.0.1"));

    // The trusted proxy at 127.0.0.1 is trusted: the client it names is the client.
    let resp = client()
        .get(kw.url("/x"))
        .header("argus-api-key", &behind)
        .header("x-forwarded-for", "::ffff:203.0.113.5")
        .send()
        .unwrap();
    let echo = echoed(resp);
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        Some("203.0.113.5, 127.0.0.1")
    );
    // And a client it does not name is 127.0.0.1, outside 203.0.113.0/24.
    let resp = client()
        .get(kw.url("/x"))
        .header("argus-api-key", &behind)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The access log names 127.0.0.1, never the mapped form.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = kw.stderr();
        let access: Vec<&str> = log.lines().filter(|l| l.contains("path=\"/x\"")).collect();
        if access.len() >= 3 {
            assert!(!log.contains("::ffff:"), "{log}");
            assert!(access.iter().any(|l| l.contains("127.0.0.1")), "{access:?}");
            assert!(
                access.iter().any(|l| l.contains("203.0.113.5")),
                "{access:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no access lines:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Item 10: keyward's own namespaces and Windows equivalences with `routes_case_insensitive`.

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /api/admin
    require: { min_security_level: ADMINISTRATIVE, functions_any: [POWER-USER] }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

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

/// In front of an upstream that routes without regard to case, with `routes_case_insensitive`:
/// every case spelling of keyward's namespaces is answered by keyward, and every spelling that
/// IIS reads as `/api/admin` is refused; none reaches the app with john's DEFAULT key.
#[test]
fn case_insensitive_routes_reserve_keywards_paths_and_refuse_windows_aliases() {
    let app = FrameworkUpstream::start_with(&["--case-insensitive"]);
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: "routes_case_insensitive: true\n".into(),
        upstream_address: Some(app.addr.to_string()),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let key = create_key(&kw, "john", json!({"description": "t"}));
    let send = |target: &str| {
        raw_request(
            kw.proxy,
            &request("GET", target, &[format!("Argus-API-Key: {key}")]),
        )
    };
    // The test can fail: an ordinary path reaches the app, the admin path is refused.
    let ordinary = send("/Elsewhere");
    assert_eq!(ordinary.status, 200);
    assert_eq!(ordinary.json()["routed"], "/elsewhere");
    assert_eq!(send("/api/admin").status, 403);

    let token = "0123456789abcdef0123456789abcdef";
    for spelling in [
        "/AUTHENTICATION/v1/apikey".to_owned(),
        "/Authentication/v1/user/john/apikey".into(),
        "/Authentication".into(),
        "/.token/".into(),
        format!("/.token/{token}"),
        "/.Token".into(),
        "/_ADMIN/manage/tenants/t/tokens/".into(),
        "/_Admin".into(),
    ] {
        let resp = send(&spelling);
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        assert!(
            body.get("routed").is_none(),
            "{spelling} reached the app: {body}"
        );
        assert!(
            matches!(resp.status, 401 | 403 | 404),
            "{spelling}: {} {body}",
            resp.status
        );
    }
    for spelling in [
        "/api/admin.",
        "/api/admin%20",
        "/api/admin.%20.%20",
        "/API/Admin./x",
        "/api/admin::$DATA",
        "/api/ADMINI~1",
        "/api/adm%C4%B1n",
        "/_admin./manage",
    ] {
        let resp = send(spelling);
        assert_eq!(resp.status, 400, "{spelling}");
        assert_eq!(reason(&resp), "ambiguous_path_segment", "{spelling}");
    }
    // The token a lower-case token path carried never reaches the log.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!kw.stderr().contains(token), "{}", kw.stderr());
}
