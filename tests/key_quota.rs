//! API key quotas (SPEC §12, issue #22 item 3): `quota: {requests, period}` on create, renew
//! and roll; a quota of N admits exactly N per UTC day or month, fleet-wide with Redis (three
//! replicas, one PostgreSQL, a `redis-server` this test starts), and across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ADMIN: (&str, &str) = ("admin", ADMIN_PASSWORD);
const JOHN: (&str, &str) = ("john", "john-password");
const DAY_SECS: u64 = 86_400;

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

fn prefix(key: &str) -> String {
    key.rsplit_once('/').unwrap().0.to_owned()
}

fn create(kw: &Keyward, who: (&str, &str), body: Value) -> (String, Value) {
    let (status, body) = call(
        kw,
        who,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(body),
    );
    assert_eq!(status, 201, "{body}");
    (
        body["data"]["apiKeyString"].as_str().unwrap().to_owned(),
        body["data"]["keyDescriptor"].clone(),
    )
}

/// The descriptor of `key`, from the key list.
fn listed(kw: &Keyward, key: &str) -> Value {
    let (status, body) = call(
        kw,
        ADMIN,
        "GET",
        "/authentication/v1/user/john/apikey",
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["prefix"] == prefix(key).as_str())
        .unwrap()
        .clone()
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    DAY_SECS - now % DAY_SECS
}

/// Without Redis: exactly N pass, then 429 `quota_exhausted` with the quota's headers; the
/// descriptor shows what is left; a replica killed and restarted mid-period keeps the count
/// (seeded from the usage rows flushed before the kill).
#[test]
fn a_quota_admits_exactly_n_and_survives_a_restart() {
    let mut kw = Keyward::start_with(Setup {
        extra: "api_keys: { last_used_flush: 200ms }\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", JOHN.1, &[]);
    let (key, descriptor) = create(
        &kw,
        ADMIN,
        json!({ "description": "metered", "quota": { "requests": 5, "period": "day" } }),
    );
    assert_eq!(
        descriptor["quota"],
        json!({ "requests": 5, "period": "day" })
    );
    assert_eq!(descriptor["quotaRemaining"], 5);
    let before = kw.upstream().requests();
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..8 {
        let resp = client()
            .get(kw.url("/"))
            .header("argus-api-key", &key)
            .send()
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            refusal = Some(resp);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(
        kw.upstream().requests(),
        before + 5,
        "nothing over the quota is forwarded"
    );
    let refusal = refusal.unwrap();
    let header = |name: &str| refusal.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("ratelimit-policy"), r#""quota";q=5;w=86400"#);
    let retry: u64 = header("retry-after").parse().unwrap();
    let midnight = seconds_to_utc_midnight();
    assert!(
        retry >= 1 && retry.abs_diff(midnight) <= 2,
        "{retry} vs {midnight}"
    );
    assert_eq!(header("ratelimit"), format!(r#""quota";r=0;t={retry}"#));
    let body: Value = refusal.json().unwrap();
    assert_eq!(body["reason"], "quota_exhausted", "{body}");
    assert_eq!(listed(&kw, &key)["quotaRemaining"], 0);

    // The usage rows reach the store; then a kill -9 and a restart keep the count.
    let usage = format!("/authentication/v1/user/john/apikey/{}/usage", prefix(&key));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = call(&kw, ADMIN, "GET", &usage, None);
        let accepted: i64 = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["accepted"].as_i64().unwrap())
            .sum();
        if accepted == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached the store: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kw.restart();
    assert_eq!(listed(&kw, &key)["quotaRemaining"], 0);
    let resp = client()
        .get(kw.url("/"))
        .header("argus-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 429);
}

/// Invalid quotas are 412 naming the field; limits are set from above (SPEC §15): without
/// POWER-USER a user may add or lower a quota on their own key, never raise or remove it
/// (403), on renew and on roll; a roll carries the quota over; a POWER-USER may remove it.
#[test]
fn quotas_are_validated_and_set_from_above() {
    let kw = Keyward::start();
    kw.add_user("john", JOHN.1, &[]);
    for (quota, field) in [
        (json!({ "requests": 0, "period": "day" }), "quota.requests"),
        (json!({ "requests": -1, "period": "day" }), "quota.requests"),
        (
            json!({ "requests": 1.5, "period": "day" }),
            "quota.requests",
        ),
        (
            json!({ "requests": "5", "period": "day" }),
            "quota.requests",
        ),
        (
            json!({ "requests": 1_000_000_000_001u64, "period": "day" }),
            "quota.requests",
        ),
        (json!({ "requests": 5, "period": "week" }), "quota.period"),
        (
            json!({ "requests": 5, "period": "day", "burst": 1 }),
            "quota.burst",
        ),
        (json!({ "requests": 5 }), "quota"),
        (json!(5), "quota"),
    ] {
        let (status, body) = call(
            &kw,
            JOHN,
            "POST",
            "/authentication/v1/apikey",
            Some(json!({ "description": "q", "quota": quota })),
        );
        assert_eq!(status, 412, "{quota}: {body}");
        assert_eq!(body["messages"][0]["field"], field, "{quota}: {body}");
    }
    // John adds a quota to his own key, and may lower it.
    let (key, descriptor) = create(
        &kw,
        JOHN,
        json!({ "description": "mine", "quota": { "requests": 100, "period": "month" } }),
    );
    assert_eq!(descriptor["quotaRemaining"], 100);
    let own = format!("/authentication/v1/apikey/{}", prefix(&key));
    for (quota, status) in [
        (json!({ "requests": 101, "period": "month" }), 403),
        (json!({ "requests": 100, "period": "day" }), 403),
        (Value::Null, 403),
        (json!({ "requests": 50, "period": "month" }), 200),
        (json!({ "requests": 1, "period": "day" }), 200),
    ] {
        let (got, body) = call(&kw, JOHN, "PUT", &own, Some(json!({ "quota": quota })));
        assert_eq!(got, status, "{quota}: {body}");
    }
    // A renewal without `quota` keeps it.
    let (status, body) = call(&kw, JOHN, "PUT", &own, Some(json!({ "expirationDays": 5 })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["renewedKey"]["quota"],
        json!({ "requests": 1, "period": "day" })
    );
    // Roll: raising is 403, the old key's quota carries over, lowering is allowed.
    let roll = format!("{own}/roll");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        &roll,
        Some(json!({ "quota": { "requests": 2, "period": "day" } })),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        &kw,
        JOHN,
        "POST",
        &roll,
        Some(json!({ "gracePeriodSeconds": 0 })),
    );
    assert_eq!(status, 201, "{body}");
    let rolled = body["data"]["apiKeyString"].as_str().unwrap().to_owned();
    assert_eq!(
        body["data"]["keyDescriptor"]["quota"],
        json!({ "requests": 1, "period": "day" })
    );
    // A POWER-USER may remove it.
    let (status, body) = call(
        &kw,
        ADMIN,
        "PUT",
        &format!("/authentication/v1/user/john/apikey/{}", prefix(&rolled)),
        Some(json!({ "quota": null })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["renewedKey"]["quota"], Value::Null);
    assert_eq!(body["data"]["renewedKey"]["quotaRemaining"], Value::Null);
}

/// Three replicas sharing one TLS Redis and one PostgreSQL: a quota of 20 admits exactly 20 of
/// 64 concurrent requests spread over them, a quota of 3 admits 3 of requests taken in turn,
/// and a replica restarted mid-period still refuses.
#[test]
fn a_quota_holds_for_the_whole_fleet() {
    let redis = common::redis::TestRedis::start_tls();
    let database = ScratchDatabase::create_blocking()
        .expect("this test needs PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)");
    let replica = || {
        Keyward::start_with(Setup {
            store_url: Some(database.url().to_owned()),
            extra: redis.section("refuse"),
            ..Setup::default()
        })
    };
    let mut replicas = [replica(), replica(), replica()];
    replicas[0].add_user("john", JOHN.1, &[]);
    let (key, _) = create(
        &replicas[0],
        ADMIN,
        json!({ "description": "fleet", "quota": { "requests": 20, "period": "month" } }),
    );
    let urls: Vec<String> = replicas.iter().map(|kw| kw.url("/")).collect();
    let upstream =
        |replicas: &[Keyward]| -> u64 { replicas.iter().map(|kw| kw.upstream().requests()).sum() };
    let before = upstream(&replicas);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..64)
            .map(|n| {
                let (url, key) = (&urls[n % 3], &key);
                scope.spawn(move || {
                    client()
                        .get(url)
                        .header("argus-api-key", key)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let count = |status| statuses.iter().filter(|s| **s == status).count();
    assert_eq!((count(200), count(429)), (20, 44), "{statuses:?}");
    assert_eq!(
        upstream(&replicas) - before,
        20,
        "nothing over the quota is forwarded"
    );
    for kw in &replicas {
        assert_eq!(listed(kw, &key)["quotaRemaining"], 0);
    }

    let (small, _) = create(
        &replicas[1],
        ADMIN,
        json!({ "description": "small", "quota": { "requests": 3, "period": "day" } }),
    );
    let send = |kw: &Keyward| {
        client()
            .get(kw.url("/"))
            .header("argus-api-key", &small)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let taken: Vec<u16> = replicas.iter().chain(&replicas[..1]).map(send).collect();
    assert_eq!(taken, [200, 200, 200, 429]);
    // The count is in Redis: a restarted replica refuses as the others do.
    replicas[2].restart();
    assert_eq!(send(&replicas[2]), 429);
    assert_eq!(listed(&replicas[2], &small)["quotaRemaining"], 0);
    drop(redis);
}
