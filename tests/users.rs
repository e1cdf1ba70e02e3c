//! Locking through the admin API (SPEC §5) and the audit log file (SPEC §4).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use keyward::auth::signature::sign;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn admin(kw: &Keyward, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), kw.url(path))
        .basic_auth("admin", Some(ADMIN_PASSWORD));
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let resp = request.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

#[test]
fn a_lock_refuses_every_credential_on_the_next_request() {
    let kw = Keyward::start_with(Setup {
        extra: "audit: { path: audit.jsonl }".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    kw.add_user("mary", "mary-password", &[]);
    let (_, created) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({"description": "k"})),
    );
    let api_key = created["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().to_bytes());
    let (_, enrolled) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(json!({"publicKey": public, "description": "s"})),
    );
    let keyid = format!("john/{}", enrolled["data"]["keyID"]);

    let with_key = || {
        client()
            .get(kw.url("/x"))
            .header("Argus-API-Key", &api_key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let with_password = || {
        client()
            .get(kw.url("/x"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let with_signature = || {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let nonce = format!("{:?}", Instant::now());
        let headers = sign(
            &signing,
            &keyid,
            "GET",
            &kw.url("/x").parse().unwrap(),
            None,
            created,
            &nonce,
        )
        .unwrap();
        let mut request = client().get(kw.url("/x"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send().unwrap().status().as_u16()
    };
    // Warm every cache.
    assert_eq!(
        (with_key(), with_password(), with_signature()),
        (200, 200, 200)
    );
    assert_eq!(
        (with_key(), with_password(), with_signature()),
        (200, 200, 200)
    );

    // Only a POWER-USER may lock.
    let resp = client()
        .put(kw.url("/authentication/v1/user/john/lock"))
        .basic_auth("mary", Some("mary-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);

    let (status, body) = admin(&kw, "PUT", "/authentication/v1/user/john/lock", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["locked"], true);
    // The very next request of each kind, no waiting.
    assert_eq!(
        (with_key(), with_password(), with_signature()),
        (401, 401, 401)
    );

    let (status, _) = admin(&kw, "DELETE", "/authentication/v1/user/john/lock", None);
    assert_eq!(status, 200);
    assert_eq!(
        (with_key(), with_password(), with_signature()),
        (200, 200, 200)
    );
    let (status, _) = admin(&kw, "PUT", "/authentication/v1/user/nobody/lock", None);
    assert_eq!(status, 404);

    // One JSON line per admin call, with the caller as actor and no secret anywhere.
    let path = kw.dir.path().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let records: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= 6 {
            assert!(
                !text.contains(api_key.rsplit('/').next().unwrap()),
                "no secret in the audit log"
            );
            break records;
        }
        assert!(Instant::now() < deadline, "audit records missing: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ops: Vec<(&str, &str, &str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
                r["target_user"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("apikey.create", "admin", "john", 201),
            ("signature.enroll", "admin", "john", 201),
            ("user.lock", "mary", "john", 403),
            ("user.lock", "admin", "john", 200),
            ("user.unlock", "admin", "john", 200),
            ("user.lock", "admin", "", 404),
        ]
    );
    assert!(records
        .iter()
        .all(|r| r["request_id"].as_str().unwrap().len() == 16 && r["source_ip"] == "127.0.0.1"));
}
