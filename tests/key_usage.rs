//! API key usage (SPEC §12, issue #22 item 4): per key and hour, the requests keyward
//! forwarded, refused (403) and rate-limited (429), counted in memory on every replica and
//! added to the store in batches; read back through `…/apikey/{userIdHex}/{keyId}/usage`.
//! Real keyward processes, a real upstream, SQLite and (for two replicas) PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /ops
    require: { functions_any: [OPS] }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

/// Counts reach the store within a flush (200 ms here).
const EXTRA: &str = "api_keys: { last_used_flush: 200ms }\n";

const ADMIN: (&str, &str) = ("admin", ADMIN_PASSWORD);
const JOHN: (&str, &str) = ("john", "john-password");
const BOB: (&str, &str) = ("bob", "bob-password-1");

fn setup(store_url: Option<String>) -> Setup {
    Setup {
        routes: ROUTES.into(),
        extra: EXTRA.into(),
        store_url,
        ..Setup::default()
    }
}

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

/// A new key for john (made by the administrator); returns the key string.
fn create_key(kw: &Keyward, body: Value) -> String {
    let (status, body) = call(
        kw,
        ADMIN,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(body),
    );
    assert_eq!(status, 201, "{body}");
    body["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

fn prefix(key: &str) -> String {
    key.rsplit_once('/').unwrap().0.to_owned()
}

/// A proxied GET with `key`; the status the client saw.
fn get_with_key(kw: &Keyward, path: &str, key: &str) -> u16 {
    client()
        .get(kw.url(path))
        .header("argus-api-key", key)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// (accepted, refused, rateLimited) summed over the buckets of a usage answer.
fn totals(data: &Value) -> (i64, i64, i64) {
    data.as_array()
        .unwrap()
        .iter()
        .fold((0, 0, 0), |(a, r, l), bucket| {
            (
                a + bucket["accepted"].as_i64().unwrap(),
                r + bucket["refused"].as_i64().unwrap(),
                l + bucket["rateLimited"].as_i64().unwrap(),
            )
        })
}

/// Reads `path` until its totals are `expected` (the flush is asynchronous) or 15 s pass;
/// returns the last answer's `data`.
fn usage_once_flushed(
    kw: &Keyward,
    who: (&str, &str),
    path: &str,
    expected: (i64, i64, i64),
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = call(kw, who, "GET", path, None);
        assert_eq!(status, 200, "{body}");
        if totals(&body["data"]) == expected || Instant::now() > deadline {
            assert_eq!(totals(&body["data"]), expected, "{body}");
            assert_eq!(
                body["count"],
                body["data"].as_array().unwrap().len(),
                "{body}"
            );
            return body["data"].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mix of forwarded, 403-refused and 429-limited requests with one key, and some that are
/// not this key's doing (a wrong secret, an admin call): the usage endpoint answers what the
/// client saw, per hour and per day, for the user, a POWER-USER and the own-keys path.
#[test]
fn usage_counts_match_what_the_client_saw() {
    let kw = Keyward::start_with(setup(None));
    kw.add_user("john", JOHN.1, &[]);
    kw.add_user("bob", BOB.1, &[]);
    // Six requests in the burst, then (at 0.001/s) nothing more for the test's duration.
    let key = create_key(
        &kw,
        json!({ "description": "metered", "rateLimit": { "requestsPerSecond": 0.001, "burst": 6 } }),
    );
    let idle = create_key(&kw, json!({ "description": "idle" }));
    let started = kw.upstream().requests();

    let mut seen = Vec::new();
    for path in [
        "/", "/a", "/public", "/b", "/ops", "/ops/x", "/", "/ops", "/public",
    ] {
        seen.push(get_with_key(&kw, path, &key));
    }
    assert_eq!(
        seen,
        [200, 200, 200, 200, 403, 403, 429, 429, 429],
        "{seen:?}"
    );
    // Not the key's doing: a wrong secret (anyone can write a prefix) is not counted.
    let wrong = format!("{}/kw_{}", prefix(&key), "A".repeat(49));
    assert_eq!(get_with_key(&kw, "/", &wrong), 401);
    assert_eq!(kw.upstream().requests(), started + 4);

    let count = |status| seen.iter().filter(|s| **s == status).count() as i64;
    let expected = (count(200), count(403), count(429));
    assert_eq!(expected, (4, 2, 3));
    let path = format!("/authentication/v1/user/john/apikey/{}/usage", prefix(&key));
    let hours = usage_once_flushed(&kw, ADMIN, &path, expected);
    for bucket in hours.as_array().unwrap() {
        assert_eq!(bucket["start"].as_i64().unwrap() % HOUR_MS, 0, "{hours}");
    }
    // The own-keys path and the user's own call answer the same.
    let own = format!("/authentication/v1/apikey/{}/usage", prefix(&key));
    let (status, body) = call(&kw, JOHN, "GET", &own, None);
    assert_eq!((status, &body["data"]), (200, &hours), "{body}");
    let (status, body) = call(&kw, JOHN, "GET", &path, None);
    assert_eq!((status, &body["data"]), (200, &hours), "{body}");
    // Per day: the same totals, buckets at UTC midnights.
    let (status, body) = call(&kw, ADMIN, "GET", &format!("{path}?granularity=day"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(totals(&body["data"]), expected, "{body}");
    for bucket in body["data"].as_array().unwrap() {
        assert_eq!(bucket["start"].as_i64().unwrap() % DAY_MS, 0, "{body}");
    }
    // A range before the key existed, and a key without traffic: nothing.
    let (status, body) = call(
        &kw,
        ADMIN,
        "GET",
        &format!("{path}?from=0&to=86400000"),
        None,
    );
    assert_eq!(
        (status, body["data"].clone(), body["count"].clone()),
        (200, json!([]), json!(0)),
        "{body}"
    );
    let idle_path = format!(
        "/authentication/v1/user/john/apikey/{}/usage",
        prefix(&idle)
    );
    let (status, body) = call(&kw, ADMIN, "GET", &idle_path, None);
    assert_eq!((status, body["data"].clone()), (200, json!([])), "{body}");

    // Later flushes add nothing that was not sent (the admin calls above are not counted).
    std::thread::sleep(Duration::from_millis(600));
    let (_, body) = call(&kw, ADMIN, "GET", &path, None);
    assert_eq!(totals(&body["data"]), expected, "{body}");
}

/// Bad `from`, `to` and `granularity` (and unknown or repeated parameters) are 412 naming the
/// parameter; nothing is a 500.
#[test]
fn bad_usage_queries_are_412() {
    let kw = Keyward::start_with(setup(None));
    kw.add_user("john", JOHN.1, &[]);
    let key = create_key(&kw, json!({ "description": "k" }));
    let path = format!("/authentication/v1/user/john/apikey/{}/usage", prefix(&key));
    for (query, field) in [
        ("from=abc", "from"),
        ("from=-1", "from"),
        ("to=1.5", "to"),
        ("to=99999999999999999999999999", "to"),
        ("from=2000&to=1000", "from"),
        ("from=1000&to=1000", "from"),
        ("granularity=week", "granularity"),
        ("granularity=", "granularity"),
        ("granularity=day&granularity=hour", "granularity"),
        ("limit=10", "limit"),
    ] {
        let (status, body) = call(&kw, ADMIN, "GET", &format!("{path}?{query}"), None);
        assert_eq!(status, 412, "{query}: {body}");
        assert_eq!(body["messages"][0]["field"], field, "{query}: {body}");
        assert_eq!(
            body["messages"][0]["type"], "FIELD_ERROR",
            "{query}: {body}"
        );
        assert_eq!(body["data"], Value::Null, "{query}: {body}");
    }
    let (status, body) = call(
        &kw,
        ADMIN,
        "GET",
        &format!("{path}?from=0&to=1&granularity=day"),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

/// Authorized as listing the keys: another user (without POWER-USER) gets what the list
/// answers them (403); a key that is not the named user's, or does not exist, is 404; a
/// revoked key's usage is 404 too.
#[test]
fn usage_is_authorized_as_the_key_list() {
    let kw = Keyward::start_with(setup(None));
    kw.add_user("john", JOHN.1, &[]);
    kw.add_user("bob", BOB.1, &[]);
    let key = create_key(&kw, json!({ "description": "k" }));
    let johns = format!("/authentication/v1/user/john/apikey/{}/usage", prefix(&key));

    let (list_status, _) = call(&kw, BOB, "GET", "/authentication/v1/user/john/apikey", None);
    let (status, body) = call(&kw, BOB, "GET", &johns, None);
    assert_eq!((list_status, status), (403, 403), "{body}");
    assert_eq!(body["messages"][0]["type"], "ACTION_ERROR", "{body}");
    // Bob's own-keys path with john's prefix: not one of bob's keys.
    let own = format!("/authentication/v1/apikey/{}/usage", prefix(&key));
    let (status, body) = call(&kw, BOB, "GET", &own, None);
    assert_eq!(status, 404, "{body}");
    // John's key under bob's name, an unknown key id, an unknown user: 404.
    let under_bob = format!("/authentication/v1/user/bob/apikey/{}/usage", prefix(&key));
    let (status, body) = call(&kw, ADMIN, "GET", &under_bob, None);
    assert_eq!(status, 404, "{body}");
    let user_hex = prefix(&key).split_once('/').unwrap().0.to_owned();
    let (status, body) = call(
        &kw,
        ADMIN,
        "GET",
        &format!("/authentication/v1/user/john/apikey/{user_hex}/99/usage"),
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(
        &kw,
        ADMIN,
        "GET",
        "/authentication/v1/user/nobody/apikey/1/1/usage",
        None,
    );
    assert_eq!(status, 404);
    // The user and a POWER-USER may.
    assert_eq!(call(&kw, JOHN, "GET", &johns, None).0, 200);
    assert_eq!(call(&kw, ADMIN, "GET", &johns, None).0, 200);
    // Only GET.
    let (status, _) = call(&kw, ADMIN, "POST", &johns, Some(json!({})));
    assert_eq!(status, 405);
    // Revoked: 404, as renewing it would be.
    let (status, body) = call(
        &kw,
        ADMIN,
        "DELETE",
        &format!("/authentication/v1/user/john/apikey/{}", prefix(&key)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&kw, ADMIN, "GET", &johns, None).0, 404);
}

/// Three replicas on one PostgreSQL database and one TLS Redis (fleet-scoped limits and a
/// quota) count separately and add to the same hour rows: the usage any of them answers is
/// the sum of what the clients saw — forwarded, refused (403) and limited (429) — from all.
#[test]
fn three_replicas_on_one_postgres_sum() {
    let database = ScratchDatabase::create_blocking()
        .expect("this test needs PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)");
    let redis = common::redis::TestRedis::start_tls();
    let replica = || {
        Keyward::start_with(Setup {
            extra: format!(
                "{EXTRA}{}rate_limits:\n  per_credential: {{ requests_per_second: 100, burst: 200 }}\n",
                redis.section("refuse")
            ),
            ..setup(Some(database.url().to_owned()))
        })
    };
    let fleet = [replica(), replica(), replica()];
    fleet[0].add_user("john", JOHN.1, &[]);
    // The key's own limit, fleet-scoped (the administrator polling the usage below keeps the
    // generous default).
    let key = create_key(
        &fleet[0],
        json!({ "description": "fleet", "rateLimit": { "requestsPerSecond": 0.5, "burst": 10 } }),
    );
    let limited = create_key(
        &fleet[0],
        json!({ "description": "quota", "quota": { "requests": 4, "period": "day" } }),
    );
    let mut seen = Vec::new();
    let mut seen_quota = Vec::new();
    for i in 0..30 {
        seen.push(get_with_key(&fleet[i % 3], "/", &key));
        seen_quota.push(get_with_key(&fleet[(i + 1) % 3], "/", &limited));
    }
    for kw in &fleet {
        seen.push(get_with_key(kw, "/ops", &key));
    }
    let count = |seen: &[u16], status| seen.iter().filter(|s| **s == status).count() as i64;
    let expected = (count(&seen, 200), count(&seen, 403), count(&seen, 429));
    assert!(expected.0 >= 5 && expected.2 >= 10, "{seen:?}");
    assert_eq!(expected.0 + expected.1 + expected.2, 33, "{seen:?}");
    assert_eq!(
        (count(&seen_quota, 200), count(&seen_quota, 429)),
        (4, 26),
        "{seen_quota:?}"
    );
    let path = format!("/authentication/v1/user/john/apikey/{}/usage", prefix(&key));
    let quota_path = format!(
        "/authentication/v1/user/john/apikey/{}/usage",
        prefix(&limited)
    );
    for kw in &fleet {
        usage_once_flushed(kw, ADMIN, &path, expected);
        usage_once_flushed(kw, ADMIN, &quota_path, (4, 0, 26));
    }
}
