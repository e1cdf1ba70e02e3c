//! Signed uploads end to end: bodies above pingora's 64 KiB retry buffer are read whole,
//! checked against `Content-Digest` (in memory, or spilled to an unnamed temporary file) and
//! only then forwarded; bodies over `signatures.max_body` get 413; the bodies held at once
//! are bounded; a body is read only behind a signature that verified.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, raw_request, Keyward, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: usize = 1024 * 1024;

struct Uploads {
    kw: Keyward,
    /// Requests the upstream had answered once keyward was up.
    baseline: u64,
    key: SigningKey,
    keyid: String,
    spool: tempfile::TempDir,
}

/// keyward with a 4 MiB body limit, 256 KiB of it in memory, 6 MiB in flight at once (all of
/// it for one key: tests/budgets.rs checks the per-key share), a 3-second body deadline, and
/// spool files in a directory the test watches.
fn start() -> Uploads {
    let spool = tempfile::tempdir().unwrap();
    let kw = Keyward::start_with(Setup {
        extra: format!(
            "signatures: {{ max_body: {}, body_in_memory: {}, bodies_in_flight: {}, bodies_in_flight_per_user: {}, body_timeout: 3s, spool_dir: {} }}",
            4 * MIB,
            256 * 1024,
            6 * MIB,
            6 * MIB,
            spool.path().display()
        ),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let key = SigningKey::from_bytes(&[7; 32]);
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({
            "publicKey": base64::engine::general_purpose::STANDARD
                .encode(key.verifying_key().to_bytes()),
            "description": "uploads",
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    let keyid = format!("john/{}", body["data"]["keyID"]);
    Uploads {
        baseline: kw.upstream().requests(),
        kw,
        key,
        keyid,
        spool,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("u{}-{}", now(), N.fetch_add(1, Ordering::Relaxed))
}

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Uploads {
    fn signed_headers(&self, method: &str, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        sign(
            &self.key,
            &self.keyid,
            method,
            &self.kw.url(path).parse().unwrap(),
            Some(body),
            now(),
            &nonce(),
        )
        .unwrap()
    }

    fn put(&self, path: &str, signed_for: &[u8], sent: Vec<u8>) -> reqwest::blocking::Response {
        let mut request = client().put(self.kw.url(path)).body(sent);
        for (name, value) in self.signed_headers("PUT", path, signed_for) {
            request = request.header(name, value);
        }
        request.send().unwrap()
    }

    /// The raw head of a signed PUT of `body` to `path`, framed by `Content-Length` or chunked.
    fn raw_head(&self, path: &str, body: &[u8], chunked: bool) -> String {
        let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {}\r\n", self.kw.proxy);
        for (name, value) in self.signed_headers("PUT", path, body) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match chunked {
            true => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
            false => head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len())),
        }
        head
    }

    /// Requests forwarded since the start.
    fn forwarded(&self) -> u64 {
        self.kw.upstream().requests() - self.baseline
    }

    fn spool_files(&self) -> usize {
        std::fs::read_dir(self.spool.path()).unwrap().count()
    }
}

fn reason(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

#[test]
fn uploads_above_the_retry_buffer_are_checked_then_forwarded_whole() {
    let up = start();
    // In memory (above 64 KiB, within 256 KiB), spilled (3 MiB), and at the limit (4 MiB).
    for len in [100 * 1024, 3 * MIB, 4 * MIB] {
        let body = body_of(len);
        let resp = up.put("/app/upload", &body, body.clone());
        assert_eq!(resp.status(), 200, "{len} bytes");
        let echo: Value = resp.json().unwrap();
        assert_eq!(echo["body_len"], len);
        assert_eq!(echo["body_sha256"], sha256_hex(&body));
        assert_eq!(echo["headers"]["x-keyward-auth-method"][0], "SIGNATURE");
    }
    assert_eq!(up.forwarded(), 3);
    // Spool files are unnamed: nothing is ever visible in the directory.
    assert_eq!(up.spool_files(), 0);
}

#[test]
fn a_chunked_upload_is_checked_the_same_way() {
    let up = start();
    let body = body_of(2 * MIB);
    let mut request = up.raw_head("/app/chunked", &body, true).into_bytes();
    for piece in body.chunks(100_000) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(up.kw.proxy, &request);
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let echo = resp.json();
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
}

#[test]
fn a_body_that_does_not_match_its_digest_reaches_nothing() {
    let up = start();
    for len in [100 * 1024, 3 * MIB] {
        let signed_for = body_of(len);
        let mut sent = signed_for.clone();
        sent[len - 1] ^= 1;
        let (status, why) = reason(up.put("/app/upload", &signed_for, sent));
        assert_eq!(
            (status, why.as_str()),
            (401, "digest_mismatch"),
            "{len} bytes"
        );
    }
    assert_eq!(up.forwarded(), 0);
    let page = up.kw.metrics();
    assert!(
        page.contains(
            r#"keyward_auth_failures_total{method="signature",reason="digest_mismatch"} 2"#
        ),
        "{page}"
    );
}

#[test]
fn bodies_over_max_body_get_413_declared_or_not() {
    let up = start();
    let body = body_of(4 * MIB + 1);
    // Declared too large: refused from the header, before a byte of body is read.
    let mut stream = TcpStream::connect(up.kw.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(up.raw_head("/app/big", &body, false).as_bytes())
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("signed_body_too_large"), "{answer}");

    // Chunked, so only counting finds out.
    let mut request = up.raw_head("/app/big", &body, true).into_bytes();
    for piece in body.chunks(512 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(up.kw.proxy, &request);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["reason"], "signed_body_too_large");
    assert_eq!(up.forwarded(), 0);
}

#[test]
fn a_bad_signature_is_refused_before_its_body_is_read() {
    let up = start();
    let body = body_of(3 * MIB);
    let other = SigningKey::from_bytes(&[9; 32]);
    let mut head = format!("PUT /app/upload HTTP/1.1\r\nHost: {}\r\n", up.kw.proxy);
    let headers = sign(
        &other,
        &up.keyid,
        "PUT",
        &up.kw.url("/app/upload").parse().unwrap(),
        Some(&body),
        now(),
        &nonce(),
    )
    .unwrap();
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    // Only the head is sent: the answer comes without the body.
    let mut stream = TcpStream::connect(up.kw.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(up.forwarded(), 0);
}

#[test]
fn bodies_in_flight_are_bounded_and_a_stalled_body_times_out() {
    let up = start();
    // Holds 4 MiB of the 6 MiB bound: the head and half the body, then nothing.
    let held = body_of(4 * MIB);
    let mut stalled = TcpStream::connect(up.kw.proxy).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stalled
        .write_all(up.raw_head("/app/stalled", &held, false).as_bytes())
        .unwrap();
    stalled.write_all(&held[..2 * MIB]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // 3 MiB more does not fit: 503 with Retry-After, nothing forwarded.
    let body = body_of(3 * MIB);
    let resp = up.put("/app/upload", &body, body.clone());
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(reason(resp).1, "signed_bodies_in_flight");
    // 1 MiB still does.
    let small = body_of(MIB);
    assert_eq!(up.put("/app/upload", &small, small.clone()).status(), 200);

    // The stalled body runs out of time (signatures.body_timeout) and frees its share.
    let started = Instant::now();
    let mut answer = vec![0; 4096];
    let n = stalled.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.put("/app/upload", &body, body.clone()).status(), 200);
    assert_eq!(up.forwarded(), 2);
}

#[test]
fn a_spooled_upload_closes_its_http1_connection_after_answering() {
    let up = start();
    let body = body_of(MIB);
    let mut request = up.raw_head("/app/upload", &body, false).into_bytes();
    request.extend_from_slice(&body);
    let resp = raw_request(up.kw.proxy, &request);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    // A small signed body stays within pingora's buffer and keeps the connection.
    let small = body_of(1000);
    let resp = up.put("/app/upload", &small, small.clone());
    assert_eq!(resp.status(), 200);
    assert_ne!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(b"close".as_slice())
    );
}

#[test]
fn a_client_expecting_100_continue_gets_it_from_keyward() {
    let up = start();
    let body = body_of(2 * MIB);
    let head = up
        .raw_head("/app/upload", &body, false)
        .replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    let mut stream = TcpStream::connect(up.kw.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = vec![0; 256];
    let n = stream.read(&mut interim).unwrap();
    let interim = String::from_utf8_lossy(&interim[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert_eq!(
        up.forwarded(),
        0,
        "nothing forwarded before the body is checked"
    );
    stream.write_all(&body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, echo) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: Value = serde_json::from_str(echo).unwrap();
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
    assert!(echo["headers"].get("expect").is_none(), "{echo}");
}
