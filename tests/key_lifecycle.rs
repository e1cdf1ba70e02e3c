//! API key lifecycle beyond create/renew/revoke: rotation with a grace period, and keys a
//! secret scanner can recognise (the published pattern and checksum), refused on a bad
//! checksum before any store query; keys issued before checksums keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, echoed_header, Keyward, Setup, ADMIN_PASSWORD};
use keyward::auth::api_key::{checksum, KeyHasher, KEY_PATTERN};
use keyward::store::sqlite::SqliteStore;
use keyward::store::{now_ms, AuditEvent, NewApiKey, PoolSettings, Store, StoreUrl};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start() -> Keyward {
    let kw = Keyward::start_with(Setup::default());
    kw.add_user("john", "john-password", &["--function", "CASE-WRITE"]);
    kw
}

fn admin(kw: &Keyward, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), kw.url(path))
        .basic_auth("admin", Some(ADMIN_PASSWORD));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn with_key(kw: &Keyward, key: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/private"))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
}

fn prefix(key: &str) -> String {
    key.rsplit_once('/').unwrap().0.to_owned()
}

fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_roll_carries_the_settings_over_and_the_old_key_ends_after_the_grace_period() {
    let kw = start();
    let (status, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({
            "description": "deploy bot",
            "validSources": ["127.0.0.0/8"],
            "sessionConstraints": { "function": "CASE-WRITE", "readOnly": false },
            "rateLimit": { "requestsPerSecond": 50, "burst": 80 },
            "expirationDays": 30,
        })),
    );
    assert_eq!(status, 201, "{body}");
    let old = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let old_descriptor = body["data"]["keyDescriptor"].clone();

    let (status, body) = admin(
        &kw,
        "POST",
        &format!("/authentication/v1/user/john/apikey/{}/roll", prefix(&old)),
        Some(json!({ "gracePeriodSeconds": 2 })),
    );
    assert_eq!(status, 201, "{body}");
    let rolled_at = Instant::now();
    let new = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    assert_ne!(prefix(&new), prefix(&old));
    let new_descriptor = &body["data"]["keyDescriptor"];
    for field in [
        "description",
        "validSources",
        "sessionConstraints",
        "rateLimit",
    ] {
        assert_eq!(
            new_descriptor[field], old_descriptor[field],
            "{field}: {body}"
        );
    }
    // Same lifetime from now: 30 days, give or take the test's own run time.
    let lifetime = new_descriptor["validUntil"].as_i64().unwrap() - now_ms();
    assert!((lifetime - 30 * 86_400_000).abs() < 60_000, "{body}");
    // The old key now ends with the grace period.
    let old_end = body["data"]["rolledKey"]["validUntil"].as_i64().unwrap();
    assert!((old_end - now_ms() - 2000).abs() < 2000, "{body}");

    // Both work during the grace period, with the same identity.
    for key in [&old, &new] {
        let resp = with_key(&kw, key);
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().unwrap();
        assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    }
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(rolled_at.elapsed()));
    assert_eq!(
        with_key(&kw, &old).status(),
        401,
        "the old key after its grace"
    );
    assert_eq!(with_key(&kw, &new).status(), 200);

    // One audit record names both prefixes.
    let out = kw.cli(&["audit", "tail", "-n", "20"], None);
    let audit = String::from_utf8_lossy(&out.stdout);
    let line = audit
        .lines()
        .find(|l| l.contains("apikey.roll"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        line.contains(&prefix(&old)) && line.contains(&prefix(&new)),
        "{line}"
    );
}

#[test]
fn without_a_grace_period_the_old_key_ends_at_once_and_bad_rolls_are_refused() {
    let kw = start();
    let (_, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "k" })),
    );
    let old = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let path = format!("/authentication/v1/user/john/apikey/{}/roll", prefix(&old));
    for bad in [
        json!({ "gracePeriodSeconds": 86_401 }),
        json!({ "gracePeriodSeconds": -1 }),
    ] {
        let (status, body) = admin(&kw, "POST", &path, Some(bad));
        assert!(status == 400 || status == 412, "{status} {body}");
    }
    let (status, body) = admin(&kw, "POST", &path, None);
    assert_eq!(status, 201, "{body}");
    let new = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    assert_eq!(with_key(&kw, &old).status(), 401);
    assert_eq!(with_key(&kw, &new).status(), 200);

    // A read-only key cannot roll, not even itself.
    let (_, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "ro", "sessionConstraints": { "readOnly": true } })),
    );
    let read_only = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let resp = client()
        .post(kw.url(&format!(
            "/authentication/v1/apikey/{}/roll",
            prefix(&read_only)
        )))
        .header("Argus-API-Key", &read_only)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    // No such key: 404.
    let (status, _) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey/2/999/roll",
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn keys_match_the_published_pattern_and_a_bad_checksum_costs_no_store_query() {
    let kw = start();
    let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
    let (_, body) = admin(
        &kw,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(json!({ "description": "scan me" })),
    );
    let key = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    assert!(pattern.is_match(&key), "{key}");
    let secret = key.rsplit_once('/').unwrap().1;
    assert!(secret.starts_with("kw_"));
    assert_eq!(checksum(&secret[..46]), secret[46..]);
    assert_eq!(with_key(&kw, &key).status(), 200);

    let misses = |kw: &Keyward| {
        let page = kw.metrics();
        (
            sample(&page, "keyward_cache_misses_total{cache=\"apikey\"}"),
            sample(
                &page,
                "keyward_cache_misses_total{cache=\"apikey_negative\"}",
            ),
            sample(
                &page,
                "keyward_auth_failures_total{method=\"apikey\",reason=\"malformed\"}",
            ),
        )
    };
    let before = misses(&kw);
    // One character of the secret changed, on another key id (nothing cached for it).
    let mut typo = key.replacen("/1/", "/7/", 1).into_bytes();
    let at = typo.len() - 20;
    typo[at] = if typo[at] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(with_key(&kw, &typo).status(), 401);
    let after = misses(&kw);
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1),
        "no cache or store look-up"
    );
    assert_eq!(after.2, before.2 + 1.0, "counted as malformed");
}

#[test]
fn keys_issued_before_checksums_still_authenticate() {
    let kw = start();
    // A key as keyward issued them before: 43 characters of URL-safe base64, no prefix.
    let legacy_secret = "Z".repeat(43);
    let db = kw.dir.path().join("keyward.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = runtime.block_on(async {
        let pool = PoolSettings::default_for(&StoreUrl::Sqlite(db.clone()));
        let store = SqliteStore::open(&db, pool).await.unwrap();
        let hasher = KeyHasher::new(store.api_key_pepper().await.unwrap());
        let john = store.user_by_name("john").await.unwrap().unwrap();
        let key = store
            .create_api_key(
                NewApiKey {
                    user_id: john.id,
                    secret_hash: hasher.hash(&legacy_secret),
                    description: "legacy".into(),
                    created_by_id: john.id,
                    created_by_name: "john".into(),
                    valid_until_ms: 0,
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
    let key = format!("{prefix}/{legacy_secret}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while with_key(&kw, &key).status() != 200 {
        assert!(
            Instant::now() < deadline,
            "the legacy key never authenticated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
