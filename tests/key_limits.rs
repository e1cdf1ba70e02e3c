//! Lifetimes and rate limits of API keys set through the admin API (issue 20 items 6, 7 and
//! 14; SPEC §15 "limits are set from above"), against a real keyward process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use keyward::auth::api_key::KeyHasher;
use keyward::store::sqlite::SqliteStore;
use keyward::store::{now_ms, AuditEvent, NewApiKey, PoolSettings, Store, StoreUrl};
use serde_json::{json, Value};
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

fn start(extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: extra.into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &["--function", "CASE-WRITE"]);
    kw
}

/// A call as `who` (Basic: DEFAULT level), with a JSON body.
fn call(
    kw: &Keyward,
    who: (&str, &str),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), kw.url(path))
        .basic_auth(who.0, Some(who.1));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

const ADMIN: (&str, &str) = ("admin", ADMIN_PASSWORD);
const JOHN: (&str, &str) = ("john", "john-password");

fn prefix(key: &str) -> String {
    key.rsplit_once('/').unwrap().0.to_owned()
}

fn field_error(body: &Value) -> &str {
    body["messages"][0]["field"].as_str().unwrap_or_default()
}

/// `expirationDays` beyond 100 years is 412 on `expirationDays`, even for a POWER-USER (who
/// may exceed `api_keys.max_expiration_days`); the 9e18 days used to give 201 with a
/// saturated `validUntil`. Signature keys' `validDays` likewise.
#[test]
fn lifetimes_beyond_a_hundred_years_are_412() {
    let kw = start("");
    for days in [
        json!(9_000_000_000_000_000_000i64),
        json!(i64::MAX),
        json!(36_501),
        json!(1_000_000),
    ] {
        let (status, body) = call(
            &kw,
            ADMIN,
            "POST",
            "/authentication/v1/user/john/apikey",
            Some(json!({ "description": "long", "expirationDays": days })),
        );
        assert_eq!(status, 412, "{days}: {body}");
        assert_eq!(field_error(&body), "expirationDays", "{body}");
        assert_eq!(body["messages"][0]["type"], "FIELD_ERROR", "{body}");
    }
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "century", "expirationDays": 36_500 })),
    );
    assert_eq!(status, 201, "{body}");
    let key = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let until = body["data"]["keyDescriptor"]["validUntil"]
        .as_i64()
        .unwrap();
    assert!(until > now_ms() + 36_499 * DAY_MS, "{body}");
    // Renewing, too.
    for days in [json!(9_000_000_000_000_000_000i64), json!(36_501)] {
        let (status, body) = call(
            &kw,
            ADMIN,
            "PUT",
            &format!("/authentication/v1/user/john/apikey/{}", prefix(&key)),
            Some(json!({ "expirationDays": days })),
        );
        assert_eq!(status, 412, "{body}");
        assert_eq!(field_error(&body), "expirationDays", "{body}");
    }
    // A signature key's validDays.
    use base64::Engine as _;
    let public_key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        "/authentication/v1/user/john/signature",
        Some(
            json!({ "publicKey": public_key, "description": "s", "validDays": 9_000_000_000_000_000_000i64 }),
        ),
    );
    assert_eq!(status, 412, "{body}");
    assert_eq!(field_error(&body), "validDays", "{body}");
}

/// A key stored with a saturated `validUntil` (what a 9e18-day create made before): rolling it
/// gives a key valid for at most 100 years, not a negative `validUntil` (nor, in a debug
/// build, a panic), and both keys keep working as they should.
#[test]
fn rolling_a_key_with_a_saturated_lifetime_stays_in_range() {
    let kw = start("");
    let secret = "Q".repeat(43);
    let db = kw.dir.path().join("keyward.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(async {
        let pool = PoolSettings::default_for(&StoreUrl::Sqlite(db.clone()));
        let store = SqliteStore::open(&db, pool).await.unwrap();
        let hasher = KeyHasher::new(store.api_key_pepper().await.unwrap());
        let john = store.user_by_name("john").await.unwrap().unwrap();
        let key = store
            .create_api_key(
                NewApiKey {
                    user_id: john.id,
                    secret_hash: hasher.hash(&secret),
                    description: "saturated".into(),
                    created_by_id: 1,
                    created_by_name: "admin".into(),
                    valid_until_ms: i64::MAX,
                    valid_sources: Vec::new(),
                    functions: None,
                    customers: Vec::new(),
                    read_only: false,
                    rate_limit: None,
                    quota: None,
                },
                AuditEvent {
                    seq: 0,
                    time: String::new(),
                    request_id: "test".into(),
                    actor: "test".into(),
                    auth_method: "-".into(),
                    operation: "apikey.create".into(),
                    target_user: "john".into(),
                    target_credential: String::new(),
                    status: 201,
                    outcome: "allowed".into(),
                    source_ip: None,
                },
            )
            .await
            .unwrap();
        key.prefix()
    });
    let before = now_ms();
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        &format!("/authentication/v1/user/john/apikey/{stored}/roll"),
        Some(json!({ "gracePeriodSeconds": 0 })),
    );
    assert_eq!(status, 201, "{body}");
    let after = now_ms();
    let until = body["data"]["keyDescriptor"]["validUntil"]
        .as_i64()
        .unwrap();
    assert!(
        until >= before && until <= after + 36_500 * DAY_MS,
        "validUntil {until} out of range: {body}"
    );
    let old_until = body["data"]["rolledKey"]["validUntil"].as_i64().unwrap();
    assert!(old_until >= before && old_until <= after, "{body}");
    let new = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let with = |key: &str| {
        client()
            .get(kw.url("/private"))
            .header("Argus-API-Key", key)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(with(&new), 200);
    assert_eq!(with(&format!("{stored}/{secret}")), 401);
}

/// An expired key (here: the old key of a roll without grace) is 404 to roll; before, the roll
/// made it a fresh successor.
#[test]
fn an_expired_key_cannot_be_rolled() {
    let kw = start("");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        "/authentication/v1/apikey",
        Some(json!({ "description": "mine" })),
    );
    assert_eq!(status, 201, "{body}");
    let old = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let roll = |key: &str| {
        call(
            &kw,
            JOHN,
            "POST",
            &format!("/authentication/v1/apikey/{}/roll", prefix(key)),
            None,
        )
    };
    let (status, body) = roll(&old);
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(Duration::from_millis(5));
    let (status, body) = roll(&old);
    assert_eq!(status, 404, "the expired key is not rolled again: {body}");
    let (status, _) = call(
        &kw,
        ADMIN,
        "POST",
        &format!("/authentication/v1/user/john/apikey/{}/roll", prefix(&old)),
        None,
    );
    assert_eq!(status, 404, "not by a POWER-USER either");
}

/// A roll's new lifetime is capped as a create's: renew-then-roll, or rolling a key that never
/// expires, gives a caller without POWER-USER no key beyond `api_keys.max_expiration_days`.
#[test]
fn a_roll_never_extends_a_lifetime_past_the_maximum() {
    let kw = start("api_keys: { max_expiration_days: 30, default_expiration_days: 30 }\n");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        "/authentication/v1/apikey",
        Some(json!({ "description": "mine", "expirationDays": 30 })),
    );
    assert_eq!(status, 201, "{body}");
    let key = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    // Later, renewed to the maximum from now: created → validUntil is now more than 30 days.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, body) = call(
        &kw,
        JOHN,
        "PUT",
        &format!("/authentication/v1/apikey/{}", prefix(&key)),
        Some(json!({ "expirationDays": 30 })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        &format!("/authentication/v1/apikey/{}/roll", prefix(&key)),
        None,
    );
    let after = now_ms();
    assert_eq!(status, 201, "{body}");
    let until = body["data"]["keyDescriptor"]["validUntil"]
        .as_i64()
        .unwrap();
    assert!(
        until <= after + 30 * DAY_MS,
        "the new key outlives the maximum by {} ms: {body}",
        until - (after + 30 * DAY_MS)
    );

    // A key that never expires (made by a POWER-USER), rolled by its owner.
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "forever", "disableExpiration": true })),
    );
    assert_eq!(status, 201, "{body}");
    let forever = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        &format!("/authentication/v1/apikey/{}/roll", prefix(&forever)),
        None,
    );
    let after = now_ms();
    assert_eq!(status, 201, "{body}");
    let until = body["data"]["keyDescriptor"]["validUntil"]
        .as_i64()
        .unwrap();
    assert!(until != 0 && until <= after + 30 * DAY_MS, "{body}");
    // A POWER-USER's roll keeps "never".
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "forever 2", "disableExpiration": true })),
    );
    assert_eq!(status, 201, "{body}");
    let forever = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let (status, body) = call(
        &kw,
        ADMIN,
        "POST",
        &format!(
            "/authentication/v1/user/john/apikey/{}/roll",
            prefix(&forever)
        ),
        None,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["keyDescriptor"]["validUntil"], 0, "{body}");
}

/// SPEC §15: without POWER-USER, a key owner may add or lower a `rateLimit`, never raise or
/// remove one (403); a POWER-USER may do either.
#[test]
fn rate_limits_are_set_from_above() {
    let kw = start("rate_limits:\n  per_credential: { requests_per_second: 100, burst: 200 }\n");
    let renew = |who, key: &str, limit: Value| {
        call(
            &kw,
            who,
            "PUT",
            &format!("/authentication/v1/user/john/apikey/{}", prefix(key)),
            Some(json!({ "rateLimit": limit })),
        )
    };
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        "/authentication/v1/apikey",
        Some(json!({ "description": "mine" })),
    );
    assert_eq!(status, 201, "{body}");
    let key = body["data"]["apiKeyString"].as_str().unwrap().to_owned();

    // Removing a limit the key does not have changes nothing: allowed.
    assert_eq!(renew(JOHN, &key, Value::Null).0, 200);
    // Adding one above `per_credential` would lift the key's limit.
    let (status, body) = renew(
        JOHN,
        &key,
        json!({ "requestsPerSecond": 1000, "burst": 200 }),
    );
    assert_eq!(status, 403, "{body}");
    // Adding one below it, then lowering it: allowed.
    assert_eq!(
        renew(JOHN, &key, json!({ "requestsPerSecond": 50, "burst": 100 })).0,
        200
    );
    assert_eq!(
        renew(JOHN, &key, json!({ "requestsPerSecond": 5, "burst": 10 })).0,
        200
    );
    // Raising it (either figure) or removing it: 403, and the limit stays.
    for limit in [
        json!({ "requestsPerSecond": 6, "burst": 10 }),
        json!({ "requestsPerSecond": 5, "burst": 11 }),
        Value::Null,
    ] {
        let (status, body) = renew(JOHN, &key, limit.clone());
        assert_eq!(status, 403, "{limit}: {body}");
    }
    let (_, listed) = call(&kw, JOHN, "GET", "/authentication/v1/apikey", None);
    assert_eq!(
        listed["data"][0]["rateLimit"],
        json!({ "requestsPerSecond": 5.0, "burst": 10 }),
        "{listed}"
    );
    // A POWER-USER sets a tighter one; the owner cannot lift it (the issue's `null`).
    assert_eq!(
        renew(ADMIN, &key, json!({ "requestsPerSecond": 1, "burst": 2 })).0,
        200
    );
    assert_eq!(renew(JOHN, &key, Value::Null).0, 403);
    assert_eq!(
        renew(JOHN, &key, json!({ "requestsPerSecond": 2, "burst": 2 })).0,
        403
    );
    // ... while a POWER-USER may raise or remove it.
    assert_eq!(
        renew(
            ADMIN,
            &key,
            json!({ "requestsPerSecond": 500, "burst": 900 })
        )
        .0,
        200
    );
    assert_eq!(renew(ADMIN, &key, Value::Null).0, 200);
    // A new key of the owner's with a limit above `per_credential`: 403; below it: 201.
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        "/authentication/v1/apikey",
        Some(
            json!({ "description": "fast", "rateLimit": { "requestsPerSecond": 1000, "burst": 10 } }),
        ),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        "/authentication/v1/apikey",
        Some(
            json!({ "description": "slow", "rateLimit": { "requestsPerSecond": 10, "burst": 10 } }),
        ),
    );
    assert_eq!(status, 201, "{body}");
}
