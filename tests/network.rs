//! The network side of the second security review (issue 20, SPEC §15), driven with raw
//! sockets and h2 frames against the real binary: dual-stack listeners, keyward's own
//! namespaces and Windows path equivalences with `routes_case_insensitive`, body deadlines and
//! the per-client connection cap, HTTP/1.1 pipelining and client-triggered error logs, and
//! HTTP/2 stream bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{
    client, echoed, echoed_header, raw_request, FrameworkUpstream, Keyward, RawResponse, Setup,
    ADMIN_PASSWORD,
};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn reason(resp: &RawResponse) -> String {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

/// Everything the server sends until it closes the connection (or 10 s pass).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "connection not closed ({e}); got {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    String::from_utf8_lossy(&data).into_owned()
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
    let local = kw.create_api_key(
        "john",
        json!({"description": "local", "validSources": ["127.0.0.1/32"]}),
    );
    let behind = kw.create_api_key(
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
    let key = kw.create_api_key("john", json!({"description": "t"}));
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

// ---------------------------------------------------------------------------------------------
// Item 13: body deadlines and the per-client connection cap.

fn start_limits(limits: &str, extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: format!("limits: {{ {limits} }}\n{extra}"),
        ..Setup::default()
    });
    kw.wait_for_metric("keyward_connections_open", 0);
    kw
}

/// Sends `head`, then trickles body bytes every 200 ms until the server answers or closes;
/// returns what it answered and when the connection closed.
fn trickle(kw: &Keyward, head: &str) -> (String, Duration) {
    let mut stream = kw.connect_raw(Duration::from_secs(10));
    stream.write_all(head.as_bytes()).unwrap();
    stream.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(8) {
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if closed || stream.write(b"x").is_err() {
            return (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "still open after {:?}; got {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn request_bodies_must_arrive_within_the_body_timeout() {
    let kw = start_limits("body_timeout: 1s", "");
    // An anonymous admin POST trickling its body: 408 and closed, before authentication.
    let (answer, closed) = trickle(
        &kw,
        "POST /authentication/v1/apikey HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");

    // A forwarded body on a public route (streamed to the upstream as it comes): 408
    // body_timeout, and the upstream's request is cut off.
    let (answer, closed) = trickle(
        &kw,
        "POST /public/x HTTP/1.1\r\nHost: k\r\nContent-Length: 1000\r\n\r\nab",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("\"reason\":\"body_timeout\""), "{answer:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    // Chunked, the same.
    let (answer, closed) = trickle(
        &kw,
        "POST /public/x HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");

    // A refused request's unread body is not drained past the deadline either.
    let before = kw.upstream().requests();
    let (answer, closed) = trickle(
        &kw,
        "POST /x HTTP/1.1\r\nHost: k\r\nContent-Length: 1000\r\n\r\nab",
    );
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    assert_eq!(kw.upstream().requests(), before);

    // A body in time is forwarded whole, and a slow upstream is not a slow body.
    let resp = client()
        .post(kw.url("/public/slow/1500"))
        .body(vec![b'a'; 100_000])
        .send()
        .unwrap();
    assert_eq!(echoed(resp)["body_len"], 100_000);
    let resp = client()
        .post(kw.url("/authentication/v1/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(json!({"description": "in time"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[test]
fn one_client_address_cannot_hold_every_connection() {
    const REQUEST: &[u8] = b"GET /public/fixed HTTP/1.1\r\nHost: keyward\r\n\r\n";
    let kw = start_limits("max_connections_per_client: 3, max_connections: 100", "");
    let open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = kw.connect_raw(Duration::from_secs(10));
            stream.write_all(REQUEST).unwrap();
            let mut buf = [0u8; 12];
            stream.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            stream
        })
        .collect();
    let mut fourth = kw.connect_raw(Duration::from_secs(10));
    let answer = read_until_closed(&mut fourth);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(
        answer.contains("\"reason\":\"too_many_connections_from_client\""),
        "{answer:?}"
    );
    drop(open);
    kw.wait_for_metric("keyward_connections_open", 0);
    let mut again = kw.connect_raw(Duration::from_secs(10));
    again.write_all(REQUEST).unwrap();
    let mut buf = [0u8; 12];
    again.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");

    // A trusted proxy carries many clients: not capped.
    let kw = start_limits(
        "max_connections_per_client: 3",
        "trusted_proxies: [127.0.0.1/32]\n",
    );
    let mut open: Vec<TcpStream> = (0..6)
        .map(|_| kw.connect_raw(Duration::from_secs(10)))
        .collect();
    for stream in &mut open {
        stream.write_all(REQUEST).unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 12: HTTP/1.1 pipelining and client-triggered error logs.

/// Reads one response (which must carry Content-Length): its status line and body.
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            other => panic!(
                "connection ended inside a response header ({other:?}): {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    let head = String::from_utf8(data).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), body)
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let kw = start_limits("", "");
    let before = kw.upstream().requests();
    // Five requests in one write: forwarded, refused, a body, the admin API, forwarded.
    let pipeline = concat!(
        "GET /public/one HTTP/1.1\r\nHost: k\r\n\r\n",
        "GET /two HTTP/1.1\r\nHost: k\r\n\r\n",
        "POST /public/three HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhello",
        "GET /authentication/v1/apikey HTTP/1.1\r\nHost: k\r\n\r\n",
        "GET /public/five HTTP/1.1\r\nHost: k\r\n\r\n",
    );
    let mut stream = kw.connect_raw(Duration::from_secs(10));
    stream.write_all(pipeline.as_bytes()).unwrap();
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body) = read_response(&mut stream);
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        answers.push((status, body));
    }
    assert_eq!(answers[0].0, "HTTP/1.1 200 OK");
    assert_eq!(answers[0].1["path"], "/public/one");
    assert_eq!(answers[1].0, "HTTP/1.1 401 Unauthorized");
    assert_eq!(answers[1].1["reason"], "credentials_required");
    assert_eq!(answers[2].0, "HTTP/1.1 200 OK");
    assert_eq!(answers[2].1["path"], "/public/three");
    assert_eq!(answers[2].1["body_len"], 5);
    assert_eq!(answers[3].0, "HTTP/1.1 401 Unauthorized");
    assert_eq!(answers[4].0, "HTTP/1.1 200 OK");
    assert_eq!(answers[4].1["path"], "/public/five");
    assert_eq!(kw.upstream().requests(), before + 3);
    // The connection is still usable afterwards.
    stream
        .write_all(b"GET /public/six HTTP/1.1\r\nHost: k\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["path"],
        "/public/six"
    );
}

/// Many connections that each make pingora fail (here: a malformed chunked body) write one
/// error line per cause and interval, not one per connection.
#[test]
fn client_triggered_error_lines_are_rate_limited() {
    let kw = start_limits("", "");
    for _ in 0..200 {
        let mut stream = kw.connect_raw(Duration::from_secs(10));
        stream
            .write_all(
                b"POST /public/x HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
            )
            .unwrap();
        let _ = read_until_closed(&mut stream);
    }
    // And pipelined bursts.
    for _ in 0..20 {
        let mut stream = kw.connect_raw(Duration::from_secs(10));
        let burst = "GET /public/fixed HTTP/1.1\r\nHost: k\r\n\r\n".repeat(10)
            + "GET / HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
        stream.write_all(burst.as_bytes()).unwrap();
        let _ = read_until_closed(&mut stream);
    }
    // One line per call site and 10 s, then one summary with the count.
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = kw.stderr();
        if log.contains("similar log lines suppressed") {
            break log;
        }
        assert!(Instant::now() < deadline, "no summary:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || (l.contains("WARN") && l.contains("pingora")))
        .collect();
    assert!(
        errors.len() <= 2,
        "{} lines:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let summary = log
        .lines()
        .find(|l| l.contains("similar log lines suppressed"))
        .unwrap();
    assert!(summary.contains("pingora_proxy"), "{summary}");
    assert!(summary.contains("suppressed=199"), "{summary}");
}

// ---------------------------------------------------------------------------------------------
// Item 9: HTTP/2 stream bounds.

type H2Sender = h2::client::SendRequest<bytes::Bytes>;

/// An HTTP/2 connection to keyward over TLS; the receiver follows the server's advertised
/// SETTINGS_MAX_CONCURRENT_STREAMS as the connection task sees it.
async fn h2_connect(
    kw: &Keyward,
    pki: &common::tls::TestPki,
) -> (H2Sender, tokio::sync::watch::Receiver<usize>) {
    use rustls_pki_types::pem::PemObject;
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(kw.proxy).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, mut connection) = h2::client::handshake(tls).await.unwrap();
    let (advertised, watch) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        use std::future::Future;
        std::future::poll_fn(|cx| {
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            let _ = advertised.send(connection.max_concurrent_send_streams());
            polled
        })
        .await
    });
    (sender, watch)
}

fn h2_request(kw: &Keyward, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", kw.proxy.port()))
        .body(())
        .unwrap()
}

async fn h2_answer(response: h2::client::ResponseFuture) -> (u16, Vec<u8>) {
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, bytes)
}

/// `limits.max_h2_streams` is what the SETTINGS advertise, and each stream in progress takes a
/// permit of `limits.max_connections` as a connection does: one TLS connection cannot open
/// more upstream requests than the listener would take connections.
#[test]
fn http2_streams_are_bounded_and_count_as_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::TestPki::new();
    let files = pki.server(dir.path(), "tls", 7);
    let kw = Keyward::start_with(Setup {
        extra: "limits: { max_h2_streams: 4, max_connections: 3, body_timeout: 1s }\n".into(),
        tls: Some(files.pair()),
        dir: Some(dir),
        ..Setup::default()
    });
    kw.wait_for_metric("keyward_connections_open", 0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut sender, advertised) = h2_connect(&kw, &pki).await;
        let (response, _) = sender
            .send_request(h2_request(&kw, "GET", "/public/fixed"), true)
            .unwrap();
        assert_eq!(h2_answer(response).await.0, 200);
        assert_eq!(*advertised.borrow(), 4, "SETTINGS_MAX_CONCURRENT_STREAMS");

        // Two uploads in progress hold two permits (the connection holds the third).
        let mut uploads = Vec::new();
        for i in 0..2 {
            sender = sender.ready().await.unwrap();
            let (response, body) = sender
                .send_request(h2_request(&kw, "POST", &format!("/public/up{i}")), false)
                .unwrap();
            uploads.push((response, body));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender = sender.ready().await.unwrap();
        let (response, _) = sender
            .send_request(h2_request(&kw, "GET", "/public/fixed"), true)
            .unwrap();
        let (status, body) = h2_answer(response).await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["reason"], "too_many_connections");

        // The uploads finish; their permits come back.
        for (response, mut body) in uploads {
            body.send_data(bytes::Bytes::from_static(b"hello"), true)
                .unwrap();
            let (status, answer) = h2_answer(response).await;
            assert_eq!(status, 200);
            assert_eq!(
                serde_json::from_slice::<Value>(&answer).unwrap()["body_len"],
                5
            );
        }
        sender = sender.ready().await.unwrap();
        let (response, _) = sender
            .send_request(h2_request(&kw, "GET", "/public/fixed"), true)
            .unwrap();
        assert_eq!(h2_answer(response).await.0, 200);

        // limits.body_timeout holds for HTTP/2 bodies: a stream whose body stalls is reset.
        sender = sender.ready().await.unwrap();
        let (response, mut body) = sender
            .send_request(h2_request(&kw, "POST", "/public/stalled"), false)
            .unwrap();
        body.send_data(bytes::Bytes::from_static(b"a"), false)
            .unwrap();
        let started = Instant::now();
        let reset = tokio::time::timeout(Duration::from_secs(5), response).await;
        let waited = started.elapsed();
        assert!(
            matches!(reset, Ok(Err(_))),
            "the stalled stream was not reset: {reset:?}"
        );
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        // A body in time passes, however slow the upstream's answer.
        sender = sender.ready().await.unwrap();
        let (response, mut body) = sender
            .send_request(h2_request(&kw, "POST", "/public/slow/1500"), false)
            .unwrap();
        body.send_data(bytes::Bytes::from_static(b"hello"), true)
            .unwrap();
        let (status, answer) = h2_answer(response).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&answer).unwrap()["body_len"],
            5
        );
        // A request without a body is not held to it.
        sender = sender.ready().await.unwrap();
        let (response, _) = sender
            .send_request(h2_request(&kw, "GET", "/public/slow/1500"), true)
            .unwrap();
        assert_eq!(h2_answer(response).await.0, 200);
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 header blocks are held to `limits.header_read_timeout`.

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_CONTINUATION: u8 = 0x9;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
/// HPACK for `:method: GET`, `:scheme: https`, `:path: /` (static table entries).
const H2_GET: [u8; 3] = [0x82, 0x87, 0x84];

/// keyward over TLS with a 1 s header deadline.
fn start_h2_header_deadline() -> (Keyward, common::tls::TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::TestPki::new();
    let files = pki.server(dir.path(), "tls", 11);
    let kw = Keyward::start_with(Setup {
        extra: "limits: { header_read_timeout: 1s }\n".into(),
        tls: Some(files.pair()),
        dir: Some(dir),
        ..Setup::default()
    });
    kw.wait_for_metric("keyward_connections_open", 0);
    (kw, pki)
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id (RFC 9113 §4.1), payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Over TLS (ALPN `h2`): the preface, an empty SETTINGS and `then`, then the bytes of
/// `trickle` one every 100 ms; returns how long after `then` keyward closed the connection
/// (whatever it sent before, its own SETTINGS, is read and dropped).
fn h2_closed_after(
    kw: &Keyward,
    pki: &common::tls::TestPki,
    then: &[u8],
    trickle: &[u8],
) -> Duration {
    let mut tls = pki.raw_tls(kw.proxy, b"h2");
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut start = H2_PREFACE.to_vec();
    start.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    start.extend(then);
    tls.write_all(&start).unwrap();
    tls.flush().unwrap();
    let sent = Instant::now();
    let mut trickle = trickle.iter();
    let mut buf = [0u8; 4096];
    while sent.elapsed() < Duration::from_secs(10) {
        match tls.read(&mut buf) {
            Ok(0) => return sent.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if let Some(byte) = trickle.next() {
                    if tls.write_all(&[*byte]).and_then(|()| tls.flush()).is_err() {
                        return sent.elapsed();
                    }
                }
            }
            // A close without close_notify, or a reset.
            Err(_) => return sent.elapsed(),
        }
    }
    panic!("the connection is still open after {:?}", sent.elapsed());
}

/// After its preface an HTTP/2 connection is held to the header deadline for each header
/// block: from a HEADERS frame's header to the end of the frame with END_HEADERS. A client
/// that starts one and never finishes it is closed as an HTTP/1 client would be.
#[test]
fn http2_header_blocks_must_arrive_within_the_header_timeout() {
    let (kw, pki) = start_h2_header_deadline();
    let before = kw.upstream().requests();
    let timeouts = kw.metric_value("keyward_header_timeouts_total");
    // HEADERS announcing 20 bytes of header block, 3 of them sent.
    let mut short = h2_frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, 1, &H2_GET);
    short[2] = 20;
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "HEADERS without END_HEADERS, no CONTINUATION",
            h2_frame(H2_HEADERS, H2_END_STREAM, 1, &H2_GET),
            vec![],
        ),
        ("HEADERS with part of its payload", short, vec![]),
        (
            "a CONTINUATION trickled",
            h2_frame(H2_HEADERS, H2_END_STREAM, 1, &H2_GET),
            h2_frame(H2_CONTINUATION, H2_END_HEADERS, 1, &[0x40; 200]),
        ),
        (
            "a frame header cut short",
            h2_frame(H2_HEADERS, H2_END_HEADERS, 1, &H2_GET)[..5].to_vec(),
            vec![],
        ),
    ];
    for (i, (case, then, trickle)) in cases.iter().enumerate() {
        let closed = h2_closed_after(&kw, &pki, then, trickle);
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
            "{case}: closed after {closed:?}"
        );
        kw.wait_for_metric("keyward_header_timeouts_total", timeouts + i as i64 + 1);
    }
    assert_eq!(kw.upstream().requests(), before, "no request went upstream");
    kw.wait_for_metric("keyward_connections_open", 0);
}

/// The header deadline does not count the time between requests on an HTTP/2 connection,
/// nor a request's body.
#[test]
fn an_idle_http2_connection_is_not_held_to_the_header_timeout() {
    let (kw, pki) = start_h2_header_deadline();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut sender, _) = h2_connect(&kw, &pki).await;
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            sender = sender.ready().await.unwrap();
            let (response, _) = sender
                .send_request(h2_request(&kw, "GET", "/public/fixed"), true)
                .unwrap();
            assert_eq!(h2_answer(response).await.0, 200, "round {round}");
        }
        sender = sender.ready().await.unwrap();
        let (response, mut body) = sender
            .send_request(h2_request(&kw, "POST", "/public/slow-body"), false)
            .unwrap();
        body.send_data(bytes::Bytes::from_static(b"a"), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        body.send_data(bytes::Bytes::from_static(b"b"), true)
            .unwrap();
        let (status, answer) = h2_answer(response).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&answer).unwrap()["body_len"],
            2
        );
    });
    assert_eq!(kw.metric_value("keyward_header_timeouts_total"), 0);
}

/// The second review's flood, as it came: junk Basic logins on a hundred HTTP/2 streams of
/// one TLS connection. Each pays the client's budget for refused credentials before argon2
/// runs, so no more are hashed than the budget's burst, however many arrive at once.
#[test]
fn junk_logins_on_http2_streams_pay_their_budget_before_argon2() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let pki = common::tls::TestPki::new();
    let files = pki.server(dir.path(), "tls", 8);
    let kw = Keyward::start_with(Setup {
        extra: "limits: { max_h2_streams: 100 }\n\
                rate_limits:\n  per_client_unauthenticated: { requests_per_second: 0.01, burst: 20 }\n"
            .into(),
        tls: Some(files.pair()),
        dir: Some(dir),
        ..Setup::default()
    });
    let hashes = r#"keyward_auth_duration_seconds_count{method="basic"}"#;
    let before = kw.metric_value(hashes);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<u16> = runtime.block_on(async {
        let (mut sender, _) = h2_connect(&kw, &pki).await;
        let mut responses = Vec::new();
        for i in 0..100 {
            sender = sender.ready().await.unwrap();
            let mut request = h2_request(&kw, "GET", "/api/x");
            let junk = base64::engine::general_purpose::STANDARD.encode(format!("junk{i}:guess"));
            request
                .headers_mut()
                .insert("authorization", format!("Basic {junk}").parse().unwrap());
            let (response, _) = sender.send_request(request, true).unwrap();
            responses.push(tokio::spawn(h2_answer(response)));
        }
        let mut statuses = Vec::new();
        for response in responses {
            statuses.push(response.await.unwrap().0);
        }
        statuses
    });
    let hashed = kw.metric_value(hashes) - before;
    assert!(
        hashed <= 20,
        "{hashed} junk logins hashed past a burst of 20"
    );
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    // Each 401 is one check: at most the burst's 20. A 503 (the hash queue full) decided
    // nothing, so its budget slot goes back and a later login may take it: on a loaded machine
    // more 503s mean fewer 429s, never more checks.
    assert!(
        statuses.iter().filter(|s| **s == 401).count() <= 20,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| [429, 503].contains(*s)).count() >= 80,
        "{statuses:?}"
    );
}

/// An upstream that answers 101 to every `Upgrade` request — with RFC 6455's example accept
/// value on `/public/ws`, without one elsewhere — and then echoes every byte it reads, as a
/// framework that "upgrades" without switching would keep reading requests.
fn upgrading_upstream() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let answer = match (head.contains("upgrade:"), head.starts_with("get /public/ws ")) {
                    (true, true) => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    (true, false) => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    (false, _) => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                };
                let _ = stream.write_all(answer.as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads until the end of a response head; the head, or what came before the connection ended.
fn read_head(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(1) => raw.push(buf[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The red team's tunnel: an upstream that answers 101 without completing a WebSocket
/// handshake would have had keyward relay the client's next bytes — a request for an admin
/// path with forged identity headers — unchecked. Such a 101 is now a 502 and the connection
/// closes; a completed handshake still opens the tunnel.
#[test]
fn only_a_completed_websocket_handshake_leaves_http() {
    let kw = Keyward::start_with(Setup {
        upstream_address: Some(upgrading_upstream().to_string()),
        ..Setup::default()
    });
    let mut stream = kw.connect_raw(Duration::from_secs(10));
    stream
        .write_all(upgrade_request("/public/fake").as_bytes())
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // Whatever follows is not relayed: the connection ends (the 502's body, then EOF).
    let smuggled = b"GET /api/admin HTTP/1.1\r\nHost: app\r\nX-Keyward-User: admin\r\n\r\n";
    let _ = stream.write_all(smuggled);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("/api/admin"), "relayed: {rest}");
    assert!(!rest.contains("HTTP/1.1 200"), "answered: {rest}");

    // A real handshake (RFC 6455's example key and accept) switches, and bytes flow both ways.
    let mut stream = kw.connect_raw(Duration::from_secs(10));
    stream
        .write_all(upgrade_request("/public/ws").as_bytes())
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"\x81\x05hello").unwrap();
    let mut echoed = [0u8; 7];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"\x81\x05hello");
    // A protected path's upgrade still needs its credential.
    let mut stream = kw.connect_raw(Duration::from_secs(10));
    stream
        .write_all(upgrade_request("/api/ws").as_bytes())
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

/// pingora made an HTTP/1.1 connection's idle time endless when the client named none: one
/// request per connection slot held it for ever. An idle connection now ends after 60 s.
#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_time() {
    let kw = Keyward::start_with(Setup::default());
    let mut stream = kw.connect_raw(Duration::from_secs(90));
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    let idle = started.elapsed();
    assert!(read.is_ok(), "still open after {idle:?}: {read:?}");
    assert!(
        (Duration::from_secs(55)..Duration::from_secs(75)).contains(&idle),
        "closed after {idle:?}"
    );
}

/// Headers some frameworks read in place of the request target never reach the upstream.
#[test]
fn target_override_headers_are_not_forwarded() {
    let kw = Keyward::start_with(Setup::default());
    let resp = raw_request(
        kw.proxy,
        b"GET /public/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Original-URL: /api/admin\r\n\
          X-Rewrite-URL: /api/admin\r\nx-original-uri: /api/admin\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let echo: Value = serde_json::from_slice(&resp.body).unwrap();
    for name in ["x-original-url", "x-rewrite-url", "x-original-uri"] {
        assert!(
            echo["headers"].get(name).is_none(),
            "{name} forwarded: {echo}"
        );
    }
}
