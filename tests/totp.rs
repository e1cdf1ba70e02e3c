//! Password + TOTP (SPEC §1): the ADMINISTRATIVE level, single-use codes, rate limiting.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, echoed, echoed_header, Keyward};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use totp_rs::TOTP;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn add_with_totp(kw: &Keyward, name: &str) -> TOTP {
    let out = kw.cli(
        &["user", "add", name, "--password-stdin", "--totp"],
        Some("john-password\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let uri = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTP: "))
        .expect("otpauth URI printed");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    TOTP::from_url(uri).unwrap()
}

#[test]
fn password_and_totp_is_administrative_and_enrolls_your_own_key() {
    let kw = Keyward::start();
    let totp = add_with_totp(&kw, "john");
    let code = totp.generate(now());

    let echo = echoed(
        client()
            .get(kw.url("/x"))
            .basic_auth("john", Some("john-password"))
            .header("X-Totp-Code", &code)
            .send()
            .unwrap(),
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("ADMINISTRATIVE")
    );
    assert_eq!(echoed_header(&echo, "x-keyward-auth-method"), Some("TOTP"));
    assert_eq!(
        echoed_header(&echo, "x-totp-code"),
        None,
        "the code is not forwarded"
    );

    // The same code again: refused.
    let reused = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("john-password"))
        .header("X-Totp-Code", &code)
        .send()
        .unwrap();
    assert_eq!(reused.status(), 401);
    let body: Value = reused.json().unwrap();
    assert_eq!(body["reason"], "bad_totp");

    // Self-enrollment of a signature key needs ADMINISTRATIVE: a fresh code (the next step's).
    let signing = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().to_bytes());
    let enroll = |code: Option<String>| {
        let mut request = client()
            .post(kw.url("/authentication/v1/user/john/signature"))
            .basic_auth("john", Some("john-password"))
            .body(json!({"publicKey": public, "description": "mine"}).to_string());
        if let Some(code) = code {
            request = request.header("X-Totp-Code", code);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(enroll(None), 403, "a password alone is DEFAULT");
    assert_eq!(enroll(Some(totp.generate(now() + 30))), 201);
}

#[test]
fn wrong_codes_are_refused_then_rate_limited() {
    let kw = Keyward::start();
    let totp = add_with_totp(&kw, "mary");
    kw.add_user("nototp", "other-password", &[]);
    let try_code = |user: &str, password: &str, code: &str| {
        let resp = client()
            .get(kw.url("/x"))
            .basic_auth(user, Some(password))
            .header("X-Totp-Code", code)
            .send()
            .unwrap();
        // Only the TOTP throttle's 429 carries Retry-After here (the window is 5 minutes).
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            retry_after.is_some(),
            resp.status() == 429,
            "Retry-After on 429 only: {retry_after:?}"
        );
        if let Some(secs) = retry_after {
            assert!((1..=300).contains(&secs.parse::<u64>().unwrap()), "{secs}");
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap_or(Value::Null);
        (status, body["reason"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        try_code("nototp", "other-password", "123456"),
        (401, "bad_totp".into()),
        "no secret enrolled"
    );
    for code in ["000000", "12345", "abcdef", "99999999", "111111"] {
        let (status, reason) = try_code("mary", "john-password", code);
        assert_eq!(status, 401, "{code}");
        assert_eq!(reason, "bad_totp");
    }
    // Five failures: even the right code waits out the window.
    let (status, reason) = try_code("mary", "john-password", &totp.generate(now()));
    assert_eq!((status, reason.as_str()), (429, "totp_rate_limited"));
    // A wrong password with a code is a password failure, as before.
    assert_eq!(try_code("mary", "wrong-password", "000000").0, 401);
    // `keyward user totp` replaces the secret.
    let out = kw.cli(&["user", "totp", "mary"], None);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("TOTP: otpauth://totp/"));
}
