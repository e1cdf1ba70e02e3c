//! TLS and HTTP/2 on the proxy listener, end to end: a real keyward with `listen.tls` (on a
//! certificate this test makes with rcgen) in front of the echoing upstream, driven by reqwest
//! over rustls and by curl. Every credential, policy, admin and forwarding case runs twice, over
//! HTTP/1.1 and over HTTP/2 (ALPN `h2`), and checks the protocol the response came back on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::tls::{Protocol, TestPki};
use common::{echoed_header, Keyward, Setup, ADMIN_PASSWORD, BIN};
use ed25519_dalek::SigningKey;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /slow
    public: true
  - path: /reports
    require: { functions_any: [CASE-SECMON-RO] }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

/// keyward over TLS, with john (CASE-SECMON-RO) and mary (no function).
struct Edge {
    kw: Keyward,
    pki: TestPki,
    john_key: String,
    mary_key: String,
    signing_key: SigningKey,
    keyid: String,
}

fn start_tls(extra: &str) -> (Keyward, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let files = pki.server(dir.path(), "tls", 4242);
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: extra.into(),
        tls: Some(files.pair()),
        dir: Some(dir),
        ..Setup::default()
    });
    (kw, pki)
}

impl Edge {
    fn start() -> Edge {
        let (kw, pki) = start_tls("");
        kw.add_user("john", "john-password", &["--function", "CASE-SECMON-RO"]);
        kw.add_user("mary", "mary-password", &[]);
        let admin = pki.client(Protocol::Http1);
        let create_key = |user: &str| -> String {
            let resp = admin
                .post(kw.url(&format!("/authentication/v1/user/{user}/apikey")))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .json(&json!({"description": "tls test"}))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 201);
            let body: Value = resp.json().unwrap();
            body["data"]["apiKeyString"].as_str().unwrap().to_owned()
        };
        let (john_key, mary_key) = (create_key("john"), create_key("mary"));
        let signing_key = SigningKey::from_bytes(&[42; 32]);
        let resp = admin
            .post(kw.url("/authentication/v1/user/john/signature"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({
                "publicKey": base64::engine::general_purpose::STANDARD
                    .encode(signing_key.verifying_key().to_bytes()),
                "description": "tls test",
            }))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().unwrap();
        let keyid = format!("john/{}", body["data"]["keyID"]);
        Edge {
            kw,
            pki,
            john_key,
            mary_key,
            signing_key,
            keyid,
        }
    }

    /// `host:port` as clients name keyward (and the certificate covers).
    fn authority(&self) -> String {
        self.kw.proxy.to_string()
    }

    fn upstream_requests(&self) -> u64 {
        self.kw.upstream().requests()
    }
}

/// One request's answer, checked to have come back on `protocol`.
fn send(request: reqwest::blocking::RequestBuilder, protocol: Protocol) -> Response {
    let resp = request.send().unwrap();
    assert_eq!(resp.version(), protocol.version(), "{:?}", resp.url());
    resp
}

/// A counter's value on the metrics page.
fn metric(kw: &Keyward, name: &str) -> u64 {
    let page = kw.metrics();
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

const EXPIRY: &str = "keyward_tls_certificate_expiry_timestamp_seconds";
const HANDSHAKE_FAILURES: &str = "keyward_tls_handshake_failures_total";

fn echo_of(resp: Response) -> Value {
    assert_eq!(resp.status(), 200, "expected the upstream's answer");
    resp.json().unwrap()
}

// === the cases, each run over both protocols ===

fn api_key_reaches_a_protected_route(edge: &Edge, client: &Client, protocol: Protocol) {
    let before = edge.upstream_requests();
    let resp = send(
        client
            .get(edge.kw.url("/app/x?q=1"))
            .header("Argus-API-Key", &edge.john_key),
        protocol,
    );
    assert!(resp.headers().contains_key("gateway-request-id"));
    let echo = echo_of(resp);
    assert_eq!(echo["path"], "/app/x");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("https"));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("APIKEY")
    );
    assert_eq!(echoed_header(&echo, "argus-api-key"), None);
    // The upstream gets `Host` over both protocols (HTTP/2 names it in `:authority`).
    let authority = edge.authority();
    assert_eq!(echoed_header(&echo, "host"), Some(authority.as_str()));
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(authority.as_str())
    );
    assert_eq!(edge.upstream_requests(), before + 1);
}

fn basic_reaches_a_protected_route(edge: &Edge, client: &Client, protocol: Protocol) {
    let resp = send(
        client
            .post(edge.kw.url("/app/form"))
            .basic_auth("john", Some("john-password"))
            .body("a=1&b=2"),
        protocol,
    );
    let echo = echo_of(resp);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 7);
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("https"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("PASSWORD")
    );
    assert_eq!(echoed_header(&echo, "authorization"), None);
}

fn refusals_never_reach_the_upstream(edge: &Edge, client: &Client, protocol: Protocol) {
    let before = edge.upstream_requests();
    let resp = send(client.get(edge.kw.url("/app/x")), protocol);
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let wrong = format!("{}x", edge.john_key);
    let resp = send(
        client
            .get(edge.kw.url("/app/x"))
            .header("Argus-API-Key", wrong),
        protocol,
    );
    assert_eq!(resp.status(), 401);
    let resp = send(
        client
            .get(edge.kw.url("/app/x"))
            .basic_auth("john", Some("wrong-password")),
        protocol,
    );
    assert_eq!(resp.status(), 401);
    // Policy: /reports needs CASE-SECMON-RO, which mary lacks.
    let resp = send(
        client
            .get(edge.kw.url("/reports/q"))
            .header("Argus-API-Key", &edge.mary_key),
        protocol,
    );
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().unwrap();
    assert!(body["reason"].is_string(), "{body}");
    // Unsafe paths: 400 before any credential is looked at.
    let resp = send(
        client
            .get(edge.kw.url("/app/a%2fb"))
            .header("Argus-API-Key", &edge.john_key),
        protocol,
    );
    assert_eq!(resp.status(), 400);
    if protocol == Protocol::Http2 {
        // A `Host` that names another host than `:authority`: malformed (RFC 9113 §8.3.1).
        let resp = send(
            client
                .get(edge.kw.url("/app/x"))
                .header("Argus-API-Key", &edge.john_key)
                .header("Host", "evil.example"),
            protocol,
        );
        assert_eq!(resp.status(), 400);
    }
    assert_eq!(edge.upstream_requests(), before, "nothing was forwarded");
    let resp = send(
        client
            .get(edge.kw.url("/reports/q"))
            .header("Argus-API-Key", &edge.john_key),
        protocol,
    );
    assert_eq!(resp.status(), 200);
    // A public route needs nothing.
    assert_eq!(
        send(client.get(edge.kw.url("/public/x")), protocol).status(),
        200
    );
}

fn forwarding_headers_are_keywards(edge: &Edge, client: &Client, protocol: Protocol) {
    let resp = send(
        client
            .get(edge.kw.url("/app//a/./b/../%63"))
            .header("Argus-API-Key", &edge.john_key)
            .header("X-Forwarded-Proto", "http")
            .header("X-Forwarded-For", "6.6.6.6")
            .header("X-Forwarded-Host", "evil.example")
            .header("X-Keyward-User", "root")
            .header("Forwarded", "for=6.6.6.6;proto=http"),
        protocol,
    );
    let echo = echo_of(resp);
    assert_eq!(
        echo["path"], "/app/a/c",
        "normalized once, forwarded as matched"
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("https"));
    assert_eq!(echoed_header(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    let authority = edge.authority();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(authority.as_str())
    );
    assert_eq!(echo["headers"]["x-keyward-user"], json!(["john"]));
    assert_eq!(echoed_header(&echo, "forwarded"), None);
}

fn token_cookie_is_secure_over_tls(edge: &Edge, client: &Client, protocol: Protocol) {
    let resp = send(
        client
            .post(edge.kw.url("/.TOKEN/"))
            .basic_auth("john", Some("john-password")),
        protocol,
    );
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    let token = cookie
        .strip_prefix("token=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let resp = send(
        client
            .get(edge.kw.url("/app/with-cookie"))
            .header("Cookie", format!("theme=dark; token={token}")),
        protocol,
    );
    let echo = echo_of(resp);
    assert_eq!(echoed_header(&echo, "x-keyward-auth-method"), Some("TOKEN"));
    assert_eq!(echoed_header(&echo, "cookie"), Some("theme=dark"));
    // Tokens are scoped to the host the client named (`:authority` over HTTP/2).
    let resp = send(
        client
            .get(edge.kw.url("/.TOKEN/?format=json"))
            .header("Cookie", format!("token={token}")),
        protocol,
    );
    assert_eq!(resp.status(), 200);
    let listed: Vec<Value> = resp.json().unwrap();
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|t| t["x_token_domain_meta"] == "127.0.0.1"),
        "{listed:?}"
    );

    // A cookie-authenticated change must come from keyward's own origin, which is https here.
    let own = format!("https://{}", edge.authority());
    let plain = format!("http://{}", edge.authority());
    let delete = |origin: &str| {
        send(
            client
                .delete(edge.kw.url(&format!("/.TOKEN/{token}")))
                .header("Cookie", format!("token={token}"))
                .header("Origin", origin),
            protocol,
        )
    };
    assert_eq!(delete(&plain).status(), 403);
    assert_eq!(delete("https://evil.example").status(), 403);
    let resp = delete(&own);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["set-cookie"], "token=; path=/");
}

fn admin_api_is_answered_not_forwarded(edge: &Edge, client: &Client, protocol: Protocol) {
    let before = edge.upstream_requests();
    let resp = send(
        client
            .get(edge.kw.url("/authentication/v1/apikey"))
            .header("Argus-API-Key", &edge.john_key),
        protocol,
    );
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["responseCode"], 200);
    assert_eq!(body["count"], 1);
    // mary may not list john's keys.
    let resp = send(
        client
            .get(edge.kw.url("/authentication/v1/user/john/apikey"))
            .header("Argus-API-Key", &edge.mary_key),
        protocol,
    );
    assert_eq!(resp.status(), 403);
    let resp = send(
        client
            .get(edge.kw.url("/authentication/v1/user/john/apikey"))
            .basic_auth("admin", Some(ADMIN_PASSWORD)),
        protocol,
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(edge.upstream_requests(), before);
}

fn signed(
    edge: &Edge,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Vec<(&'static str, String)> {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nonce = format!("n{}", rand::random::<u64>());
    keyward::auth::signature::sign(
        &edge.signing_key,
        &edge.keyid,
        method,
        &url.parse().unwrap(),
        body,
        created,
        &nonce,
    )
    .unwrap()
}

fn signed_requests_verify(edge: &Edge, client: &Client, protocol: Protocol) {
    let url = edge.kw.url("/app/signed?x=1&y=2");
    let mut request = client.get(&url);
    for (name, value) in signed(edge, "GET", &url, None) {
        request = request.header(name, value);
    }
    let echo = echo_of(send(request, protocol));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("SIGNATURE")
    );
    assert_eq!(echoed_header(&echo, "signature"), None);

    // With a body, covered by Content-Digest.
    let url = edge.kw.url("/app/upload");
    let body = br#"{"report": 7}"#;
    let mut request = client.put(&url).body(body.to_vec());
    for (name, value) in signed(edge, "PUT", &url, Some(body)) {
        request = request.header(name, value);
    }
    let echo = echo_of(send(request, protocol));
    assert_eq!(echo["body_len"], body.len());

    // An upload larger than the in-memory share of a signed body (spooled, then replayed).
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut request = client.put(&url).body(body.clone());
    for (name, value) in signed(edge, "PUT", &url, Some(&body)) {
        request = request.header(name, value);
    }
    let echo = echo_of(send(request, protocol));
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));

    // A body of unknown length (chunked over HTTP/1.1, bare DATA frames over h2, no
    // Content-Length either way) under a signature that covers no content-digest: refused,
    // nothing forwarded.
    let before = edge.upstream_requests();
    let unsized_body = reqwest::blocking::Body::new(std::io::Cursor::new(b"smuggled".to_vec()));
    let mut request = client.put(&url).body(unsized_body);
    for (name, value) in signed(edge, "PUT", &url, None) {
        request = request.header(name, value);
    }
    assert_eq!(send(request, protocol).status(), 401);
    assert_eq!(edge.upstream_requests(), before);

    // Signed for another path, sent to this one: refused.
    let other = edge.kw.url("/app/other");
    let mut request = client.get(edge.kw.url("/app/signed"));
    for (name, value) in signed(edge, "GET", &other, None) {
        request = request.header(name, value);
    }
    assert_eq!(send(request, protocol).status(), 401);
    // Signed for another authority.
    let elsewhere = format!("https://localhost:{}/app/signed", edge.kw.proxy.port());
    let mut request = client.get(edge.kw.url("/app/signed"));
    for (name, value) in signed(edge, "GET", &elsewhere, None) {
        request = request.header(name, value);
    }
    assert_eq!(send(request, protocol).status(), 401);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `Signature-Input` and `Signature` for a GET of `path` covering `@scheme` and `@target-uri`
/// too, as a client sees the request: over TLS (`https`) or not.
fn signed_with_scheme(edge: &Edge, path: &str, tls: bool) -> [(&'static str, String); 2] {
    use ed25519_dalek::Signer;
    use keyward::auth::signature::{signature_base, RequestView};
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let components: Vec<String> = [
        "@method",
        "@authority",
        "@path",
        "@query",
        "@scheme",
        "@target-uri",
    ]
    .map(String::from)
    .to_vec();
    let quoted: Vec<String> = components.iter().map(|c| format!("\"{c}\"")).collect();
    let params = format!(
        "({});created={created};nonce=\"n{}\";alg=\"ed25519\";keyid=\"{}\"",
        quoted.join(" "),
        rand::random::<u64>(),
        edge.keyid
    );
    let mut header = pingora::http::RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    header.insert_header("host", edge.authority()).unwrap();
    let view = RequestView {
        header: &header,
        body: None,
        tls,
    };
    let base = signature_base(&view, &components, &params).unwrap();
    let signature = edge.signing_key.sign(base.as_bytes());
    [
        ("Signature-Input", format!("sig1={params}")),
        (
            "Signature",
            format!(
                "sig1=:{}:",
                base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
            ),
        ),
    ]
}

/// keyward derives `@scheme` from the connection: `https` over TLS, whatever the protocol.
fn signed_scheme_is_https(edge: &Edge, client: &Client, protocol: Protocol) {
    let path = "/app/scheme?z=9";
    let mut request = client.get(edge.kw.url(path));
    for (name, value) in signed_with_scheme(edge, path, true) {
        request = request.header(name, value);
    }
    let echo = echo_of(send(request, protocol));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("SIGNATURE")
    );
    let mut request = client.get(edge.kw.url(path));
    for (name, value) in signed_with_scheme(edge, path, false) {
        request = request.header(name, value);
    }
    assert_eq!(send(request, protocol).status(), 401, "signed as http://");
}

#[test]
fn credential_policy_admin_and_forwarding_cases_over_http1_and_h2() {
    let edge = Edge::start();
    let failures = metric(&edge.kw, HANDSHAKE_FAILURES);
    type Case = fn(&Edge, &Client, Protocol);
    let cases: [(&str, Case); 8] = [
        ("api key", api_key_reaches_a_protected_route),
        ("basic", basic_reaches_a_protected_route),
        ("refusals", refusals_never_reach_the_upstream),
        ("forwarding", forwarding_headers_are_keywards),
        ("token cookie", token_cookie_is_secure_over_tls),
        ("admin", admin_api_is_answered_not_forwarded),
        ("signatures", signed_requests_verify),
        ("signed scheme", signed_scheme_is_https),
    ];
    for protocol in Protocol::BOTH {
        let client = edge.pki.client(protocol);
        for (name, case) in cases {
            eprintln!("case {name} over {protocol:?}");
            case(&edge, &client, protocol);
        }
    }
    assert_eq!(metric(&edge.kw, HANDSHAKE_FAILURES), failures);
}

#[test]
fn curl_over_tls_with_http2_and_http1() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let (kw, pki) = start_tls("");
    kw.add_user("john", "john-password", &[]);
    let ca = pki.write_ca(kw.dir.path());
    let curl = |flags: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .args(["-u", "john:john-password", "-D", "-"])
            .args(flags)
            .arg(kw.url("/app/curl"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let h2 = curl(&["--http2"]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    // curl sends no `Host` over h2, only `:authority`: the upstream gets it as `Host`.
    let body: Value = serde_json::from_str(h2.rsplit("\r\n\r\n").next().unwrap()).unwrap();
    assert_eq!(echoed_header(&body, "x-forwarded-proto"), Some("https"));
    let authority = kw.proxy.to_string();
    assert_eq!(echoed_header(&body, "host"), Some(authority.as_str()));
    let h1 = curl(&["--http1.1"]);
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    // Trusting another CA, curl refuses keyward's certificate: it is really checked.
    let other = tempfile::tempdir().unwrap();
    let other_ca = TestPki::new().write_ca(other.path());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&other_ca)
        .arg(kw.url("/public"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

/// A ClientHello offering only `version` (no `supported_versions` extension, as TLS 1.0/1.1
/// clients send it), with ECDHE suites and the extensions a TLS 1.2 server needs.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend(version);
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 5] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f];
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        hello.extend(suite.to_be_bytes());
    }
    hello.extend([1, 0]); // compression: null
    let mut extensions = Vec::new();
    // supported_groups: x25519, secp256r1
    extensions.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extensions.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);
    hello.extend((extensions.len() as u16).to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The first TLS record keyward answers `hello` with: (content type, first body byte, second).
fn first_record(kw: &Keyward, hello: &[u8]) -> (u8, u8, u8) {
    let mut stream = TcpStream::connect(kw.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(hello).unwrap();
    let mut head = [0u8; 7];
    stream.read_exact(&mut head).unwrap();
    (head[0], head[5], head[6])
}

#[test]
fn tls_1_0_and_1_1_are_refused() {
    let (kw, _pki) = start_tls("");
    let failures = metric(&kw, HANDSHAKE_FAILURES);
    // TLS 1.2 with the same hello: a ServerHello (handshake record, type 2).
    assert_eq!(first_record(&kw, &client_hello([0x03, 0x03])).0, 0x16);
    assert_eq!(first_record(&kw, &client_hello([0x03, 0x03])).1, 0x02);
    for version in [[0x03, 0x01], [0x03, 0x02]] {
        // A fatal alert (level 2): protocol_version (70).
        assert_eq!(
            first_record(&kw, &client_hello(version)),
            (0x15, 2, 70),
            "{version:?}"
        );
    }
    // The two refused (the TLS 1.2 hellos were left unfinished: two more).
    assert_eq!(metric(&kw, HANDSHAKE_FAILURES), failures + 4);
}

#[test]
fn handshakes_count_against_the_limits() {
    let (kw, pki) = start_tls("limits: { header_read_timeout: 1s, max_connections: 2 }");
    let client = pki.client(Protocol::Http1);
    // The harness's readiness probes are TCP connections that never start a handshake: each
    // is counted when keyward sees it closed, which under load can be after this point. The
    // baseline is taken once the count stops moving (the suite once saw 5 where 4 were due).
    let settled = Instant::now() + Duration::from_secs(5);
    let mut failures = metric(&kw, HANDSHAKE_FAILURES);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric(&kw, HANDSHAKE_FAILURES);
        if now == failures || Instant::now() > settled {
            break;
        }
        failures = now;
    }
    // A connection that never starts its handshake is closed at the header deadline.
    let mut silent = TcpStream::connect(kw.proxy).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut second = TcpStream::connect(kw.proxy).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    // Both permits are held by handshakes in progress: a third connection is closed at once.
    let refused = client.get(kw.url("/public")).send();
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(metric(&kw, "keyward_connections_refused_total"), 1);
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed by keyward");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(second.read(&mut buf).unwrap(), 0);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(kw.proxy).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // The permits are free again.
    assert_eq!(client.get(kw.url("/public")).send().unwrap().status(), 200);
    assert_eq!(metric(&kw, HANDSHAKE_FAILURES), failures + 3);
}

/// A raw TLS connection to keyward offering `alpn`, handshake done.
fn raw_tls(
    kw: &Keyward,
    pki: &TestPki,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    pki.raw_tls(kw.proxy, alpn)
}

#[test]
fn a_client_gone_mid_request_is_not_logged_as_an_error() {
    let (kw, pki) = start_tls("");
    let mut tls = raw_tls(&kw, &pki, b"http/1.1");
    tls.write_all(b"GET /slow/400 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Gone without close_notify, while the upstream is still answering.
    drop(tls);
    std::thread::sleep(Duration::from_millis(800));
    let stderr = kw.stderr();
    assert!(
        stderr.contains(r#"path="/slow/400""#),
        "the access log has it: {stderr}"
    );
    assert!(!stderr.contains("Fail to proxy"), "{stderr}");
}

#[test]
fn an_h2_connection_must_send_its_preface_in_time() {
    let (kw, pki) = start_tls("limits: { header_read_timeout: 1s }");
    // The handshake is done; then the client says nothing.
    let mut tls = raw_tls(&kw, &pki, b"h2");
    let opened = Instant::now();
    // keyward's SETTINGS frame may come first; then the connection closes.
    let mut received = Vec::new();
    let _ = tls.read_to_end(&mut received);
    let waited = opened.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        metric(&kw, "keyward_header_timeouts_total"),
        1,
        "the preface deadline closed it"
    );
}

#[test]
fn check_config_names_a_bad_certificate_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let one = pki.server(dir.path(), "one", 1);
    let two = pki.server(dir.path(), "two", 2);
    let check = |cert: &std::path::Path, key: &std::path::Path| {
        let config = dir.path().join("k.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {{ proxy: 127.0.0.1:18443, ops: 127.0.0.1:19090, tls: {{ cert: {}, key: {} }} }}\n\
                 upstream: {{ address: 127.0.0.1:3000 }}\n\
                 store: {{ url: sqlite://data/keyward.db }}\n\
                 routes:\n  - path: /\n    require: {{ min_security_level: EXTERNAL }}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    assert!(check(&one.cert, &one.key).status.success());
    let out = check(&one.cert, &two.key);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen.tls.key"), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    let out = check(&dir.path().join("absent.crt"), &one.key);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen.tls.cert"), "{stderr}");
}

/// The serial of the certificate keyward presents on a new connection, read with openssl.
fn served_serial(kw: &Keyward) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -serial",
            kw.proxy
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `SIGHUP` re-reads the certificate files: a new connection gets the new certificate, and a
/// file that cannot be used refuses the reload and keeps the old one.
#[test]
fn sighup_swaps_the_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let (kw, pki) = start_tls("");
    let before = served_serial(&kw);
    assert!(before.ends_with("1092"), "serial 4242 = 0x1092: {before}");
    // Serial 4242 expires on 2142-01-01.
    assert_eq!(metric(&kw, EXPIRY), 5_427_820_800);
    // The new certificate replaces the files keyward was started with.
    let fresh = tempfile::tempdir().unwrap();
    let next = pki.server(fresh.path(), "tls", 4343);
    let (cert, key) = next.pair();
    std::fs::copy(&cert, kw.dir.path().join("tls.crt")).unwrap();
    std::fs::copy(&key, kw.dir.path().join("tls.key")).unwrap();
    kw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(&kw) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = served_serial(&kw);
    assert!(
        after.ends_with("10F7"),
        "the new certificate (4343 = 0x10F7): {after}"
    );
    assert!(metric(&kw, "keyward_config_reloads_total{outcome=\"ok\"}") >= 1);
    assert_eq!(metric(&kw, EXPIRY) as i64, next.not_after);

    // A broken key file: the reload is refused and the running certificate stays.
    std::fs::write(kw.dir.path().join("tls.key"), "not a key").unwrap();
    kw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&kw, "keyward_config_reloads_total{outcome=\"invalid\"}") == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&kw, "keyward_config_reloads_total{outcome=\"invalid\"}"),
        1
    );
    assert_eq!(served_serial(&kw), after);
    assert_eq!(metric(&kw, EXPIRY) as i64, next.not_after);
}
