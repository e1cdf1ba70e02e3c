//! Signed requests end to end (SPEC §3): enrollment, verification through the proxy, replay,
//! clock skew and session eviction, and interoperability with an independent implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, echoed, echoed_header, Keyward, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn start() -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: "signatures: { max_age: 300s, max_future: 30s, skew_tolerance: 30s }".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &["--function", "CASE-SECMON-RO"]);
    kw.add_user("mary", "mary-password", &[]);
    kw.add_user("ext", "ext-password", &["--external", "--customer", "9"]);
    kw
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public_b64(key: &SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
}

fn admin(kw: &Keyward, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), kw.url(path))
        .basic_auth("admin", Some(ADMIN_PASSWORD));
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

/// Enrolls `key` for `user` as the administrator; returns the keyID.
fn enroll(kw: &Keyward, user: &str, key: &SigningKey) -> i64 {
    let (status, body) = admin(
        kw,
        "POST",
        &format!("/authentication/v1/user/{user}/signature"),
        Some(json!({"publicKey": public_b64(key), "description": "laptop"})),
    );
    assert_eq!(status, 201, "{body}");
    body["data"]["keyID"].as_i64().unwrap()
}

struct Signed {
    method: String,
    url: String,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

fn signed(
    kw: &Keyward,
    key: &SigningKey,
    keyid: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    created: i64,
) -> Signed {
    let url = kw.url(path);
    let nonce = format!("n{}", rand_suffix());
    let headers = sign(
        key,
        keyid,
        method,
        &url.parse().unwrap(),
        body,
        created,
        &nonce,
    )
    .unwrap();
    Signed {
        method: method.into(),
        url,
        body: body.map(<[u8]>::to_vec),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + now() as u64 * 1000
}

impl Signed {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap()
            .1
            .clone()
    }

    fn set(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value));
    }

    fn send(&self) -> reqwest::blocking::Response {
        self.send_to(&self.method, &self.url)
    }

    fn send_to(&self, method: &str, url: &str) -> reqwest::blocking::Response {
        let mut request = client().request(method.parse().unwrap(), url);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        request.send().unwrap()
    }
}

fn reason(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

#[test]
fn enrolled_key_signs_requests_through_the_proxy() {
    let kw = start();
    let laptop = key(1);
    let id = enroll(&kw, "john", &laptop);
    let keyid = format!("john/{id}");

    let resp = signed(&kw, &laptop, &keyid, "GET", "/x?a=1", None, now()).send();
    let echo = echoed(resp);
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("SIGNATURE")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("DEFAULT")
    );

    // A body is checked against Content-Digest, then forwarded whole.
    let body = br#"{"case": 42, "text": "signed body"}"#;
    let echo = echoed(signed(&kw, &laptop, &keyid, "POST", "/cases", Some(body), now()).send());
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["method"], "POST");

    // keyid may name the user by numeric id too.
    let echo = echoed(signed(&kw, &laptop, &format!("2/{id}"), "GET", "/x", None, now()).send());
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));

    let (status, list) = admin(&kw, "GET", "/authentication/v1/user/john/signature", None);
    assert_eq!(status, 200);
    let keys = list["data"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["keyID"], id);
    assert_eq!(keys[0]["publicKey"], public_b64(&laptop));
    let metrics = kw.metrics();
    assert!(
        metrics.contains(r#"keyward_cache_entries{cache="replay_window"} 3"#),
        "{metrics}"
    );
}

#[test]
fn tampering_with_any_covered_part_is_refused() {
    let kw = start();
    let laptop = key(2);
    let keyid = format!("john/{}", enroll(&kw, "john", &laptop));
    let before = kw.upstream().requests();
    let body = b"original body".as_slice();
    let fresh = || signed(&kw, &laptop, &keyid, "POST", "/x?q=1", Some(body), now());

    let s = fresh();
    assert_eq!(
        reason(s.send_to("PUT", &s.url)),
        (401, "bad_signature".into()),
        "method"
    );
    let s = fresh();
    assert_eq!(
        reason(s.send_to("POST", &kw.url("/y?q=1"))),
        (401, "bad_signature".into()),
        "path"
    );
    let s = fresh();
    assert_eq!(
        reason(s.send_to("POST", &kw.url("/x?q=2"))),
        (401, "bad_signature".into()),
        "query"
    );
    let s = fresh();
    let other_authority = format!("http://localhost:{}/x?q=1", kw.proxy.port());
    assert_eq!(
        reason(s.send_to("POST", &other_authority)),
        (401, "bad_signature".into()),
        "authority"
    );
    let mut s = fresh();
    s.body = Some(b"tampered body".to_vec());
    assert_eq!(reason(s.send()), (401, "digest_mismatch".into()), "body");

    for (param, from, to) in [
        ("created", ";created=", ";created=1"),
        ("nonce", ";nonce=\"", ";nonce=\"x"),
        ("alg", "alg=\"ed25519\"", "alg=\"rsa-pss-sha512\""),
        ("keyid", "keyid=\"john/", "keyid=\"mary/"),
    ] {
        let mut s = fresh();
        let input = s.header("Signature-Input").replacen(from, to, 1);
        s.set("Signature-Input", input);
        let (status, _) = reason(s.send());
        assert_eq!(status, 401, "{param}");
    }
    let mut s = fresh();
    let sig = s.header("Signature").replacen(":", ":AAAA", 1);
    s.set("Signature", sig);
    assert_eq!(reason(s.send()).0, 401, "signature bytes");
    assert_eq!(
        kw.upstream().requests(),
        before,
        "nothing tampered reached the upstream"
    );
}

#[test]
fn a_body_needs_content_digest_coverage() {
    let kw = start();
    let laptop = key(3);
    let keyid = format!("john/{}", enroll(&kw, "john", &laptop));
    // Signed without a body (so without content-digest), sent with one.
    let mut s = signed(&kw, &laptop, &keyid, "POST", "/x", None, now());
    s.body = Some(b"smuggled".to_vec());
    assert_eq!(reason(s.send()), (401, "malformed".into()));
}

#[test]
fn replay_and_stale_signatures() {
    let kw = start();
    let laptop = key(4);
    let keyid = format!("john/{}", enroll(&kw, "john", &laptop));
    let s = signed(&kw, &laptop, &keyid, "GET", "/x", None, now());
    assert_eq!(s.send().status(), 200);
    assert_eq!(reason(s.send()), (401, "replay".into()));

    let old = signed(&kw, &laptop, &keyid, "GET", "/x", None, now() - 301);
    assert_eq!(reason(old.send()), (401, "stale".into()));
    let future = signed(&kw, &laptop, &keyid, "GET", "/x", None, now() + 60);
    assert_eq!(reason(future.send()), (401, "stale".into()));
    let metrics = kw.metrics();
    assert!(
        metrics.contains(r#"keyward_auth_failures_total{method="signature",reason="replay"} 1"#),
        "{metrics}"
    );
}

#[test]
fn clock_stepped_back_is_clock_skew_until_the_session_is_evicted() {
    let kw = start();
    let laptop = key(5);
    let id = enroll(&kw, "john", &laptop);
    let keyid = format!("john/{id}");
    assert_eq!(
        signed(&kw, &laptop, &keyid, "GET", "/x", None, now())
            .send()
            .status(),
        200
    );

    // The client's clock jumps back 2 minutes: still inside max_age, but not its session.
    let resp = signed(&kw, &laptop, &keyid, "GET", "/x", None, now() - 120).send();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["reason"], "clock_skew");
    assert!(
        body["message"].as_str().unwrap().contains("clock skew"),
        "{body}"
    );

    // Another user cannot evict john's session; john's administrator can.
    let mary = client()
        .delete(kw.url("/authentication/v1/user/john/signature/session"))
        .basic_auth("mary", Some("mary-password"))
        .send()
        .unwrap();
    assert_eq!(mary.status(), 403);
    let (status, evicted) = admin(
        &kw,
        "DELETE",
        &format!("/authentication/v1/user/john/signature/session?keyID={id}"),
        None,
    );
    assert_eq!(status, 200, "{evicted}");
    assert_eq!(evicted["data"]["evictedKeys"], json!([id]));

    // After eviction the new offset is accepted, and becomes the session.
    assert_eq!(
        signed(&kw, &laptop, &keyid, "GET", "/x", None, now() - 120)
            .send()
            .status(),
        200
    );
    assert_eq!(
        signed(&kw, &laptop, &keyid, "GET", "/x", None, now() - 118)
            .send()
            .status(),
        200
    );

    // The caller's own sessions: a signed request evicts them.
    let s = signed(
        &kw,
        &laptop,
        &keyid,
        "DELETE",
        "/authentication/v1/user/signature/session",
        None,
        now() - 119,
    );
    let resp = s.send();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["data"]["evictedKeys"], json!([id]));
}

#[test]
fn deleted_key_is_refused_at_once() {
    let kw = start();
    let laptop = key(6);
    let id = enroll(&kw, "john", &laptop);
    let keyid = format!("john/{id}");
    assert_eq!(
        signed(&kw, &laptop, &keyid, "GET", "/x", None, now())
            .send()
            .status(),
        200
    );
    let (status, _) = admin(
        &kw,
        "DELETE",
        &format!("/authentication/v1/user/john/signature/{id}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        reason(signed(&kw, &laptop, &keyid, "GET", "/x", None, now()).send()),
        (401, "unknown_key".into())
    );
    let (status, _) = admin(
        &kw,
        "DELETE",
        &format!("/authentication/v1/user/john/signature/{id}"),
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn malformed_signature_headers_are_401_and_never_forwarded() {
    let kw = start();
    let laptop = key(7);
    let keyid = format!("john/{}", enroll(&kw, "john", &laptop));
    let before = kw.upstream().requests();
    let good = signed(&kw, &laptop, &keyid, "GET", "/public", None, now());
    let input = good.header("Signature-Input");
    let signature = good.header("Signature");
    let shapes: Vec<(Option<String>, Option<String>)> = vec![
        (Some(input.clone()), None),
        (None, Some(signature.clone())),
        (Some("garbage (".into()), Some(signature.clone())),
        (Some(input.clone()), Some("sig1=notbytes".into())),
        (Some(input.clone()), Some("other=:AAAA:".into())),
        (
            Some(input.replace("sig1=", "sig1=\"x\";")),
            Some(signature.clone()),
        ),
        (
            Some(input.replace(";created=", ";created=\"now\";x=")),
            Some(signature.clone()),
        ),
        (
            Some(input.replace("keyid=\"john/", "keyid=\"")),
            Some(signature.clone()),
        ),
        (
            Some(input.replace(" \"@query\"", "")),
            Some(signature.clone()),
        ),
        (
            Some(format!("{input}, sig2=(\"@method\");created=1;keyid=\"k\"")),
            Some(signature.clone()),
        ),
        (Some("x".repeat(5000)), Some(signature.clone())),
    ];
    for (i, (input, signature)) in shapes.into_iter().enumerate() {
        let mut request = client().get(kw.url("/public"));
        if let Some(v) = input {
            request = request.header("Signature-Input", v);
        }
        if let Some(v) = signature {
            request = request.header("Signature", v);
        }
        let resp = request.send().unwrap();
        assert_eq!(resp.status(), 401, "shape {i}");
    }
    // Mixed with another credential: refused, not guessed between.
    let resp = client()
        .get(kw.url("/x"))
        .header("Signature-Input", &input)
        .header("Signature", &signature)
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(kw.upstream().requests(), before);
}

#[test]
fn enrollment_levels_and_roles() {
    let kw = start();
    let laptop = key(8);
    // Password login is DEFAULT: not enough to enroll for yourself.
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("john", Some("john-password"))
        .body(json!({"publicKey": public_b64(&laptop), "description": "mine"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Another user's key needs POWER-USER.
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("mary", Some("mary-password"))
        .body(json!({"publicKey": public_b64(&laptop), "description": "x"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Validation.
    for (body, field) in [
        (json!({"description": "x"}), "publicKey"),
        (
            json!({"publicKey": "AAAA", "description": "x"}),
            "publicKey",
        ),
        (json!({"publicKey": public_b64(&laptop)}), "description"),
        (
            json!({"publicKey": public_b64(&laptop), "description": "x", "validSources": "1.2.3.4/40"}),
            "validSources",
        ),
        (
            json!({"publicKey": public_b64(&laptop), "description": "x", "colour": 1}),
            "colour",
        ),
    ] {
        let (status, resp) = admin(
            &kw,
            "POST",
            "/authentication/v1/user/john/signature",
            Some(body),
        );
        assert_eq!(status, 412, "{resp}");
        assert_eq!(resp["messages"][0]["field"], field);
    }
    // PEM is accepted as well as base64.
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    let pem = key(9)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let (status, _) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": pem, "description": "pem", "validDays": 30})),
    );
    assert_eq!(status, 201);
}

#[test]
fn a_signed_request_can_manage_api_keys_but_an_external_users_key_cannot() {
    let kw = start();
    let ext_laptop = key(10);
    let keyid = format!("ext/{}", enroll(&kw, "ext", &ext_laptop));
    let body = br#"{"description": "created by a signed request"}"#;
    let resp = signed(
        &kw,
        &ext_laptop,
        &keyid,
        "POST",
        "/authentication/v1/apikey",
        Some(body),
        now(),
    )
    .send();
    assert_eq!(
        resp.status(),
        201,
        "a signed request is DEFAULT, even for an external user"
    );
    let created: Value = resp.json().unwrap();
    let api_key = created["data"]["apiKeyString"].as_str().unwrap();
    let resp = client()
        .get(kw.url("/authentication/v1/apikey"))
        .header("Argus-API-Key", api_key)
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "the external user's API key is EXTERNAL"
    );
}

#[test]
fn requests_signed_by_an_independent_implementation_are_accepted() {
    let kw = start();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("client.pem");
    let out = Command::new(common::BIN)
        .args(["keygen", "--out"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let public = stdout
        .lines()
        .find_map(|l| l.split("enrolling): ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let (status, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": public, "description": "python client"})),
    );
    assert_eq!(status, 201, "{body}");
    let keyid = format!("john/{}", body["data"]["keyID"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/python_signer.py"
    );
    for (method, path, body) in [
        ("GET", "/x?case=1&b=2", None),
        ("POST", "/cases", Some(r#"{"from": "python"}"#)),
    ] {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(kw.url(path))
            .arg(method)
            .arg(&key_path)
            .arg(&keyid);
        if let Some(body) = body {
            cmd.arg(body);
        }
        let out = cmd.output().expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python signer failed (is http-message-signatures installed? scripts/prereqs.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("200"), "{method} {path}: {stdout}");
        let echo: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(echo["headers"]["x-keyward-auth-method"][0], "SIGNATURE");
        assert_eq!(echo["body_len"], body.map_or(0, str::len));
    }
}

#[test]
fn keygen_writes_a_private_key_readable_only_by_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    let out = Command::new(common::BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = Command::new(common::BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );
    let signed = Command::new(common::BIN)
        .args(["sign", "--key"])
        .arg(&path)
        .args([
            "--keyid",
            "john/1",
            "-X",
            "POST",
            "-d",
            "{}",
            "http://127.0.0.1:1/x?y=1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&signed.stdout);
    assert!(text.contains("Signature-Input: sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\")"), "{text}");
    assert!(text.contains("Content-Digest: sha-256=:"));
}

#[test]
fn key_validity_and_sources_are_enforced() {
    let kw = start();
    let office = key(11);
    let (status, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(
            json!({"publicKey": public_b64(&office), "description": "office only", "validSources": ["10.0.0.0/8"]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let keyid = format!("john/{}", body["data"]["keyID"]);
    assert_eq!(
        reason(signed(&kw, &office, &keyid, "GET", "/x", None, now()).send()),
        (401, "source_not_allowed".into())
    );
    let (status, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": public_b64(&key(12)), "description": "anywhere", "validDays": 1})),
    );
    assert_eq!(status, 201);
    let (_, list) = admin(&kw, "GET", "/authentication/v1/user/john/signature", None);
    let until = list["data"]["keys"][1]["validUntil"].as_i64().unwrap();
    let day_ms = 24 * 3600 * 1000;
    assert!(
        (until - (now() * 1000 + day_ms)).abs() < 60_000,
        "validDays sets validUntil"
    );
    let keyid = format!("john/{}", body["data"]["keyID"]);
    assert_eq!(
        signed(&kw, &key(12), &keyid, "GET", "/x", None, now())
            .send()
            .status(),
        200
    );
}
