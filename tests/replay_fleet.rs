//! The replay window of a fleet: keyward processes on one real PostgreSQL database (a fresh
//! one per test) and one real Redis share the replay window of signed requests, TOTP codes and
//! the failure throttles; and what a replica answers while Redis cannot be reached
//! (`redis.on_error: refuse | local`), driven through a TCP forwarder the test cuts,
//! restores and turns into a black hole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::tcp_cut::TcpCut;
use common::{client, echoed, echoed_header, free_port, redis_address, Keyward, Setup};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use totp_rs::TOTP;

/// Requests are signed for this authority and sent with it as `Host` to every replica, as a
/// client of a load-balanced fleet would.
const AUTHORITY: &str = "fleet.test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn config(redis_url: &str, on_redis_error: &str) -> Setup {
    Setup {
        extra: format!(
            "limits: {{ password_failures: 3 }}\n\
             redis: {{ url: \"{redis_url}\", on_error: {on_redis_error} }}\n"
        ),
        ..Setup::default()
    }
}

fn redis_url() -> String {
    format!("redis://{}", redis_address())
}

/// Two replicas on one fresh PostgreSQL database and the shared Redis (the database lives as
/// long as the first value).
fn two_replicas() -> (ScratchDatabase, Keyward, Keyward) {
    let db = ScratchDatabase::create_blocking()
        .expect("these tests need PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)");
    let replica = || {
        Keyward::start_with(Setup {
            store_url: Some(db.url().to_owned()),
            ..config(&redis_url(), "refuse")
        })
    };
    let (a, b) = (replica(), replica());
    (db, a, b)
}

/// `Retry-After` of a 503: present, a small number of seconds.
fn assert_retry_soon(retry_after: Option<&str>) {
    let secs: u64 = retry_after
        .expect("a 503 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=5).contains(&secs), "Retry-After: {secs}");
}

/// Creates `john` and enrolls a key for him; returns the key and its keyid.
fn john_with_key(kw: &Keyward, seed: u8) -> (SigningKey, String) {
    kw.add_user("john", "john-password", &[]);
    let key = SigningKey::from_bytes(&[seed; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(common::ADMIN_PASSWORD))
        .body(json!({"publicKey": public, "description": "laptop"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    let keyid = format!("john/{}", body["data"]["keyID"].as_i64().unwrap());
    (key, keyid)
}

/// The headers of a freshly signed `GET /x`.
fn signed(key: &SigningKey, keyid: &str) -> Vec<(&'static str, String)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let nonce = format!("n{}-{}", now(), NONCE.fetch_add(1, Ordering::Relaxed));
    let url: http::Uri = format!("http://{AUTHORITY}/x").parse().unwrap();
    sign(key, keyid, "GET", &url, None, now(), &nonce).unwrap()
}

fn send(kw: &Keyward, headers: &[(&'static str, String)]) -> reqwest::blocking::Response {
    let mut request = client().get(kw.url("/x")).header("host", AUTHORITY);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    request.send().unwrap()
}

/// (status, reason, Retry-After).
fn answer(resp: reqwest::blocking::Response) -> (u16, String, Option<String>) {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().unwrap_or(Value::Null);
    let reason = body["reason"].as_str().unwrap_or("").to_owned();
    (status, reason, retry_after)
}

fn add_with_totp(kw: &Keyward, name: &str) -> TOTP {
    let out = kw.cli(
        &["user", "add", name, "--password-stdin", "--totp"],
        Some("totp-password\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let uri = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTP: "))
        .expect("otpauth URI printed");
    TOTP::from_url(uri).unwrap()
}

fn totp_login(kw: &Keyward, name: &str, code: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/x"))
        .basic_auth(name, Some("totp-password"))
        .header("X-Totp-Code", code)
        .send()
        .unwrap()
}

fn metric(kw: &Keyward, series: &str) -> u64 {
    let text = kw.metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn log_lines(kw: &Keyward, needle: &str) -> usize {
    kw.stderr().lines().filter(|l| l.contains(needle)).count()
}

const DOWN_LINE: &str = "redis is unreachable";
const UP_LINE: &str = "redis is reachable again";

#[test]
fn a_signature_accepted_by_one_replica_is_refused_by_every_other_and_after_a_restart() {
    let (_db, mut a, b) = two_replicas();
    let (key, keyid) = john_with_key(&a, 11);

    let first = signed(&key, &keyid);
    let echo = echoed(send(&a, &first));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(answer(send(&b, &first)).0, 401);
    assert_eq!(answer(send(&b, &first)).1, "replay");
    assert_eq!(
        metric(
            &b,
            r#"keyward_auth_failures_total{method="signature",reason="replay"}"#
        ),
        2
    );

    // The other way round: B accepts first, A refuses.
    let second = signed(&key, &keyid);
    echoed(send(&b, &second));
    assert_eq!(answer(send(&a, &second)).1, "replay");

    // A replica that restarts has an empty local window; Redis still remembers.
    let third = signed(&key, &keyid);
    echoed(send(&a, &third));
    a.restart();
    assert_eq!(answer(send(&a, &third)).1, "replay", "after a restart");
    // And new signatures still work on the restarted replica.
    echoed(send(&a, &signed(&key, &keyid)));
    assert_eq!(metric(&a, "keyward_redis_errors_total"), 0);
    assert_eq!(log_lines(&a, DOWN_LINE), 0);
}

#[test]
fn a_totp_code_used_on_one_replica_is_refused_on_every_other() {
    let (_db, a, b) = two_replicas();
    let totp = add_with_totp(&a, "tina");
    let code = totp.generate(now() as u64);
    let echo = echoed(totp_login(&a, "tina", &code));
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("ADMINISTRATIVE")
    );
    assert_eq!(
        answer(totp_login(&b, "tina", &code)),
        (401, "bad_totp".into(), None)
    );
    // B verifies codes itself: a code not used anywhere yet passes there.
    let next = totp.generate(now() as u64 + 30);
    echoed(totp_login(&b, "tina", &next));
    assert_eq!(answer(totp_login(&a, "tina", &next)).1, "bad_totp");
}

#[test]
fn failure_throttles_count_across_the_replicas() {
    let (_db, a, b) = two_replicas();

    // Wrong TOTP codes: three on A and two on B reach the limit of five for the user.
    let totp = add_with_totp(&a, "tom");
    for (kw, code) in [(&a, "000001"), (&a, "000002"), (&a, "000003")] {
        assert_eq!(answer(totp_login(kw, "tom", code)).1, "bad_totp");
    }
    for code in ["000004", "000005"] {
        assert_eq!(answer(totp_login(&b, "tom", code)).1, "bad_totp");
    }
    let (status, reason, retry_after) = answer(totp_login(&b, "tom", &totp.generate(now() as u64)));
    assert_eq!((status, reason.as_str()), (429, "totp_rate_limited"));
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=300).contains(&secs), "{secs}");

    // Failed passwords (limit 3 per name and address): two on A and one on B, then even the
    // right password is throttled, on A where it is cached (its login known good without the
    // store) as on B where it is not.
    a.add_user("pat", "pat-password", &[]);
    let login = |kw: &Keyward, password: &str| {
        answer(
            client()
                .get(kw.url("/x"))
                .basic_auth("pat", Some(password))
                .send()
                .unwrap(),
        )
    };
    assert_eq!(login(&a, "pat-password").0, 200);
    assert_eq!(login(&a, "wrong-1").0, 401);
    assert_eq!(login(&a, "wrong-2").0, 401);
    assert_eq!(login(&b, "wrong-3").0, 401);
    for kw in [&a, &b] {
        let (status, reason, retry_after) = login(kw, "pat-password");
        assert_eq!((status, reason.as_str()), (429, "too_many_failures"));
        assert!(retry_after.is_some());
    }
}

#[test]
fn unreachable_redis_with_refuse_answers_503_with_retry_after() {
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let kw = Keyward::start_with(config(&closed, "refuse"));
    let (key, keyid) = john_with_key(&kw, 12);
    let before = kw.upstream().requests();

    let headers = signed(&key, &keyid);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, reason, retry_after) = answer(send(&kw, &headers));
        assert_eq!(
            (status, reason.as_str()),
            (503, "replay_window_unavailable")
        );
        assert_retry_soon(retry_after.as_deref());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let totp = add_with_totp(&kw, "tina");
    let (status, _, retry_after) = answer(totp_login(&kw, "tina", &totp.generate(now() as u64)));
    assert_eq!(status, 503);
    assert_retry_soon(retry_after.as_deref());
    assert_eq!(kw.upstream().requests(), before, "nothing was forwarded");
    // The admin API answers a TOTP login the same way.
    let resp = client()
        .get(kw.url("/authentication/v1/user/tina/signature"))
        .basic_auth("tina", Some("totp-password"))
        .header("X-Totp-Code", totp.generate(now() as u64))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_retry_soon(resp.headers()["retry-after"].to_str().ok());

    // Password logins fall back to this replica's throttle: the admin API stays reachable.
    let resp = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    assert!(metric(&kw, "keyward_redis_errors_total") >= 1);
    assert!(
        metric(
            &kw,
            r#"keyward_replay_local_fallback_total{claim="password_throttle"}"#
        ) >= 1
    );
    assert_eq!(
        metric(
            &kw,
            r#"keyward_replay_local_fallback_total{claim="signature"}"#
        ),
        0,
        "refuse never falls back for signatures"
    );
    assert_eq!(log_lines(&kw, DOWN_LINE), 1, "{}", kw.stderr());
    assert!(
        !kw.stderr().contains(&closed),
        "the Redis URL is never logged"
    );
}

#[test]
fn unreachable_redis_with_local_falls_back_to_the_replicas_own_window() {
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let kw = Keyward::start_with(config(&closed, "local"));
    let (key, keyid) = john_with_key(&kw, 13);

    let headers = signed(&key, &keyid);
    echoed(send(&kw, &headers));
    assert_eq!(answer(send(&kw, &headers)).1, "replay", "the local window");
    echoed(send(&kw, &signed(&key, &keyid)));

    let totp = add_with_totp(&kw, "tina");
    let code = totp.generate(now() as u64);
    echoed(totp_login(&kw, "tina", &code));
    assert_eq!(answer(totp_login(&kw, "tina", &code)).1, "bad_totp");

    assert!(
        metric(
            &kw,
            r#"keyward_replay_local_fallback_total{claim="signature"}"#
        ) >= 2
    );
    assert!(metric(&kw, r#"keyward_replay_local_fallback_total{claim="totp"}"#) >= 1);
    assert!(metric(&kw, "keyward_redis_errors_total") >= 1);
    assert_eq!(log_lines(&kw, DOWN_LINE), 1, "{}", kw.stderr());
}

#[test]
fn a_replica_recovers_when_redis_comes_back_and_a_hung_redis_costs_a_bounded_wait() {
    let proxy = TcpCut::start(redis_address());
    let kw = Keyward::start_with(config(&format!("redis://{}", proxy.addr), "refuse"));
    let (key, keyid) = john_with_key(&kw, 14);
    let accepted = signed(&key, &keyid);
    echoed(send(&kw, &accepted));

    proxy.cut();
    let during = signed(&key, &keyid);
    assert_eq!(answer(send(&kw, &during)).0, 503);
    proxy.restore();
    // Redis is tried again within a second; the signature refused with 503 was not used.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, reason, _) = answer(send(&kw, &during));
        if status == 200 {
            break;
        }
        assert_eq!(
            (status, reason.as_str()),
            (503, "replay_window_unavailable")
        );
        assert!(Instant::now() < deadline, "not recovered after 5 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(answer(send(&kw, &accepted)).1, "replay");
    assert_eq!(log_lines(&kw, DOWN_LINE), 1, "{}", kw.stderr());
    assert_eq!(log_lines(&kw, UP_LINE), 1, "{}", kw.stderr());

    // A Redis that accepts connections but never answers: each request waits at most the
    // call timeout (500 ms), then 503.
    proxy.blackhole();
    let started = Instant::now();
    assert_eq!(answer(send(&kw, &signed(&key, &keyid))).0, 503);
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    proxy.cut();
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(5);
    while answer(send(&kw, &signed(&key, &keyid))).0 != 200 {
        assert!(Instant::now() < deadline, "not recovered after 5 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(log_lines(&kw, DOWN_LINE), 2, "{}", kw.stderr());
    assert_eq!(log_lines(&kw, UP_LINE), 2, "{}", kw.stderr());
}

/// A signed upload's head (`POST /x`, signed over `payload`) declaring `length` bytes.
fn upload_head(key: &SigningKey, keyid: &str, length: u64) -> String {
    let url: http::Uri = format!("http://{AUTHORITY}/x").parse().unwrap();
    let nonce = format!("upload-{}-{length}-{}", now(), rand_suffix());
    let headers = sign(key, keyid, "POST", &url, Some(b"payload"), now(), &nonce).unwrap();
    let mut head = format!("POST /x HTTP/1.1\r\nHost: {AUTHORITY}\r\nContent-Length: {length}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Sends `head` on a raw connection; the status and head of the first answer, or `None` when
/// none came within 5 s.
fn raw_answer(kw: &Keyward, head: &str) -> (std::net::TcpStream, Option<(u16, String)>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(kw.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .map(|s| (s, text.clone()));
    (stream, status)
}

#[test]
fn a_signature_used_on_one_replica_costs_another_neither_its_body_nor_its_keys_limit() {
    let db = ScratchDatabase::create_blocking().expect("these tests need PostgreSQL");
    let replica = || {
        let mut setup = config(&redis_url(), "refuse");
        setup.extra.push_str(
            "signatures: { max_body: 8388608 }\n\
             rate_limits:\n  per_credential: { requests_per_second: 0.01, burst: 3 }\n",
        );
        Keyward::start_with(Setup {
            store_url: Some(db.url().to_owned()),
            ..setup
        })
    };
    let (a, b) = (replica(), replica());
    let (key, keyid) = john_with_key(&a, 13);

    // Accepted on A (one of the key's three requests).
    let head = upload_head(&key, &keyid, 7);
    let (_, accepted) = raw_answer(&a, &format!("{head}payload"));
    assert_eq!(accepted.map(|s| s.0), Some(200));
    // Replayed on B, declaring 8 MiB and sending none of it: refused at once as a replay, its
    // body never waited for and its key's limit never charged (B's local window has never
    // seen it; Redis has).
    let replayed = head.replace("Content-Length: 7", "Content-Length: 8388608");
    let mut held = Vec::new();
    for _ in 0..5 {
        let (stream, answer) = raw_answer(&b, &replayed);
        let (status, text) = answer.expect("answered before the body");
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("replay"), "{text}");
        held.push(stream);
    }
    // The key still has its other two requests, and the user's body share is free: a fresh
    // upload and a fresh GET on B pass.
    let (_, upload) = raw_answer(&b, &format!("{}payload", upload_head(&key, &keyid, 7)));
    assert_eq!(upload.map(|s| s.0), Some(200));
    echoed(send(&b, &signed(&key, &keyid)));
    // The limit itself is there (the slices replicas lease may add a few requests to it).
    assert!(
        (0..10).any(|_| answer(send(&b, &signed(&key, &keyid))).0 == 429),
        "the key's limit never answered 429"
    );
    drop(held);
}
