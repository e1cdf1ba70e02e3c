//! Rate limits end to end: per credential after authentication, per client address for
//! anonymous requests and refused credentials, an API key's own `rateLimit`, and the 429 with
//! `Retry-After`, `RateLimit-Policy` and `RateLimit` that forwards nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, client_from, raw_request, Keyward, Setup, ADMIN_PASSWORD};
use serde_json::{json, Value};
use std::time::Duration;

fn start(rate_limits: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: format!("rate_limits:\n{rate_limits}\n"),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    kw
}

/// An admin call by `john` (his Basic credential counts against `per_credential` too).
fn admin(kw: &Keyward, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client()
        .request(method, kw.url(path))
        .basic_auth("john", Some("john-password"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

/// [`admin`] as the administrator (POWER-USER).
fn power_user(
    kw: &Keyward,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, kw.url(path))
        .basic_auth("admin", Some(ADMIN_PASSWORD));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

fn create_key(kw: &Keyward, body: Value) -> (String, Value) {
    let (status, resp) = admin(
        kw,
        reqwest::Method::POST,
        "/authentication/v1/apikey",
        Some(body),
    );
    assert_eq!(status, 201, "{resp}");
    let key = resp["data"]["apiKeyString"].as_str().unwrap().to_owned();
    (key, resp["data"]["keyDescriptor"].clone())
}

fn get(kw: &Keyward, path: &str, key: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url(path))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::blocking::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn rate_limited_total(kw: &Keyward, kind: &str) -> u64 {
    let line = format!("keyward_rate_limited_total{{kind=\"{kind}\"}} ");
    kw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no series {line}"))
}

#[test]
fn a_burst_over_the_credential_limit_is_429_and_forwards_nothing_then_recovers() {
    // One request every two seconds after the burst: slow enough that nothing below is
    // earned back before the test waits for it.
    let kw = start("  per_credential: { requests_per_second: 0.5, burst: 5 }");
    let (key, descriptor) = create_key(&kw, json!({"description": "a"}));
    assert_eq!(descriptor["rateLimit"], Value::Null, "no own quota");
    let (other, _) = create_key(&kw, json!({"description": "b"}));

    let before = kw.upstream().requests();
    for i in 0..5 {
        assert_eq!(get(&kw, "/api", &key).status(), 200, "request {i}");
    }
    assert_eq!(kw.upstream().requests(), before + 5);
    let refused = get(&kw, "/api", &key);
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "2");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"credential\";q=1;w=2;keyward-burst=5"
    );
    assert_eq!(header(&refused, "ratelimit"), "\"credential\";r=0;t=2");
    assert!(refused.headers().contains_key("gateway-request-id"));
    let body: Value = refused.json().unwrap();
    assert_eq!(body["reason"], "rate_limited", "{body}");
    assert_eq!(body["status"], 429);
    assert_eq!(
        kw.upstream().requests(),
        before + 5,
        "a refused request reaches nothing"
    );

    // The same refusal, byte for byte on the wire.
    let raw = raw_request(
        kw.proxy,
        format!(
            "GET /api HTTP/1.1\r\nHost: x\r\nArgus-API-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(raw.status, 429);
    assert_eq!(
        raw.header("ratelimit-policy"),
        Some("\"credential\";q=1;w=2;keyward-burst=5")
    );
    let retry_after = raw.header("retry-after").unwrap();
    assert_eq!(
        raw.header("ratelimit"),
        Some(format!("\"credential\";r=0;t={retry_after}").as_str()),
        "Retry-After and t name the same moment"
    );
    assert_eq!(raw.json()["reason"], "rate_limited");

    // Another key of the same user has its own count.
    assert_eq!(get(&kw, "/api", &other).status(), 200);
    assert_eq!(rate_limited_total(&kw, "credential"), 2);
    assert_eq!(rate_limited_total(&kw, "client"), 0);

    // Two seconds earn one request back.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(&kw, "/api", &key).status(), 200, "after the interval");
    assert_eq!(get(&kw, "/api", &key).status(), 429);
    assert_eq!(kw.upstream().requests(), before + 7);
}

#[test]
fn random_api_keys_from_one_address_hit_429_before_any_credential_work() {
    let kw = start(
        "  per_credential: { requests_per_second: 100, burst: 100 }\n  \
         per_client_unauthenticated: { requests_per_second: 0.01, burst: 20 }",
    );
    let (valid, _) = create_key(&kw, json!({"description": "mine"}));
    let before = kw.upstream().requests();
    let http = client_from("127.0.0.2");
    let (mut unauthenticated, mut limited) = (0, 0);
    for i in 0..300u32 {
        let key = format!("{:x}/{}/{}", 0x1000 + i, i + 1, "A".repeat(43));
        let resp = http
            .get(kw.url("/api"))
            .header("Argus-API-Key", key)
            .send()
            .unwrap();
        match resp.status().as_u16() {
            401 => unauthenticated += 1,
            429 => {
                limited += 1;
                assert_eq!(
                    header(&resp, "ratelimit-policy"),
                    "\"client\";q=1;w=100;keyward-burst=20"
                );
                assert!(header(&resp, "ratelimit").starts_with("\"client\";r=0;t="));
                assert!(header(&resp, "retry-after").parse::<u64>().unwrap() >= 1);
            }
            other => panic!("status {other}"),
        }
    }
    // Twenty refused credentials, then every further attempt is refused unread.
    assert_eq!((unauthenticated, limited), (20, 280));
    assert_eq!(kw.upstream().requests(), before, "nothing was forwarded");
    assert_eq!(rate_limited_total(&kw, "client"), 280);
    // The address stays refused until its failures are earned back, valid credential or not;
    // another address is not.
    let with_valid = |http: &reqwest::blocking::Client| {
        http.get(kw.url("/api"))
            .header("Argus-API-Key", &valid)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(with_valid(&http), 429);
    assert_eq!(with_valid(&client_from("127.0.0.3")), 200);
    let unknown_before = kw
        .metrics()
        .lines()
        .find(|l| {
            l.starts_with("keyward_auth_failures_total{method=\"apikey\",reason=\"unknown_key\"}")
        })
        .map(str::to_owned);
    assert!(
        unknown_before
            .as_deref()
            .is_some_and(|l| l.ends_with(" 20")),
        "only the first twenty keys were looked up: {unknown_before:?}"
    );
}

#[test]
fn anonymous_requests_count_per_address_on_public_routes_too() {
    let kw = start("  per_client_unauthenticated: { requests_per_second: 0.1, burst: 3 }");
    let before = kw.upstream().requests();
    let http = client_from("127.0.0.4");
    for i in 0..3 {
        let resp = http.get(kw.url("/public/page")).send().unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    let refused = http.get(kw.url("/public/page")).send().unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "10");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"client\";q=1;w=10;keyward-burst=3"
    );
    assert_eq!(kw.upstream().requests(), before + 3);
    // A protected route without a credential counts the same way (429 before the 401).
    assert_eq!(http.get(kw.url("/api")).send().unwrap().status(), 429);
    assert_eq!(
        client_from("127.0.0.5")
            .get(kw.url("/api"))
            .send()
            .unwrap()
            .status(),
        401,
        "another address"
    );
    // Without `per_credential`, authenticated requests from the same address are not limited,
    // and anonymous traffic does not use up their quota.
    for _ in 0..5 {
        let resp = http
            .get(kw.url("/api"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[test]
fn a_key_with_its_own_rate_limit_gets_its_own_quota() {
    let kw = start("  per_credential: { requests_per_second: 50, burst: 50 }");
    let (own, descriptor) = create_key(
        &kw,
        json!({"description": "slow", "rateLimit": {"requestsPerSecond": 0.5, "burst": 2}}),
    );
    assert_eq!(
        descriptor["rateLimit"],
        json!({"requestsPerSecond": 0.5, "burst": 2})
    );
    let (plain, _) = create_key(&kw, json!({"description": "default"}));
    for _ in 0..2 {
        assert_eq!(get(&kw, "/api", &own).status(), 200);
    }
    let refused = get(&kw, "/api", &own);
    assert_eq!(refused.status(), 429);
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"credential\";q=1;w=2;keyward-burst=2"
    );
    assert_eq!(header(&refused, "retry-after"), "2");
    for _ in 0..10 {
        assert_eq!(get(&kw, "/api", &plain).status(), 200, "per_credential");
    }

    // Invalid quotas are field errors.
    for (body, field) in [
        (
            json!({"description": "x", "rateLimit": {"requestsPerSecond": 0, "burst": 2}}),
            "rateLimit.requestsPerSecond",
        ),
        (
            json!({"description": "x", "rateLimit": {"requestsPerSecond": 1, "burst": 0}}),
            "rateLimit.burst",
        ),
        (
            json!({"description": "x", "rateLimit": {"requestsPerSecond": 1}}),
            "rateLimit",
        ),
    ] {
        let (status, resp) = admin(
            &kw,
            reqwest::Method::POST,
            "/authentication/v1/apikey",
            Some(body),
        );
        assert_eq!(status, 412, "{resp}");
        assert_eq!(resp["messages"][0]["type"], "FIELD_ERROR");
        assert_eq!(resp["messages"][0]["field"], field, "{resp}");
    }

    // Renewing replaces the key's quota; the listing shows it. Raising a limit (and removing
    // one) needs POWER-USER (SPEC §15): john may not, the administrator may.
    let prefix = own.rsplit_once('/').unwrap().0.to_owned();
    let (status, resp) = admin(
        &kw,
        reqwest::Method::PUT,
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        Some(json!({"rateLimit": {"requestsPerSecond": 100, "burst": 100}})),
    );
    assert_eq!(status, 403, "{resp}");
    let (status, resp) = power_user(
        &kw,
        reqwest::Method::PUT,
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        Some(json!({"rateLimit": {"requestsPerSecond": 100, "burst": 100}})),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["data"]["renewedKey"]["rateLimit"],
        json!({"requestsPerSecond": 100.0, "burst": 100})
    );
    // The key's past use (4 s of debt under 0.5/s) counts at most as a full burst of its new
    // quota: the first request after the change waits at most one new interval (10 ms).
    let first = get(&kw, "/api", &own).status().as_u16();
    assert!(first == 200 || first == 429, "{first}");
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..5 {
        assert_eq!(get(&kw, "/api", &own).status(), 200, "the new quota");
    }
    let (_, listed) = admin(&kw, reqwest::Method::GET, "/authentication/v1/apikey", None);
    let listed = listed["data"].as_array().unwrap().clone();
    let mine = listed
        .iter()
        .find(|d| d["prefix"] == prefix.as_str())
        .unwrap();
    assert_eq!(mine["rateLimit"]["burst"], 100);
    // `null` gives it back to per_credential.
    let (status, resp) = power_user(
        &kw,
        reqwest::Method::PUT,
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        Some(json!({"rateLimit": null})),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["data"]["renewedKey"]["rateLimit"], Value::Null);
}

#[test]
fn admin_calls_count_against_the_same_limits() {
    let kw = start("  per_credential: { requests_per_second: 0.1, burst: 3 }");
    for i in 0..3 {
        let (status, resp) = admin(&kw, reqwest::Method::GET, "/authentication/v1/apikey", None);
        assert_eq!(status, 200, "call {i}: {resp}");
    }
    let refused = client()
        .get(kw.url("/authentication/v1/apikey"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((9..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"credential\";q=1;w=10;keyward-burst=3"
    );
    let body: Value = refused.json().unwrap();
    assert_eq!(body["responseCode"], 429, "the Argus envelope: {body}");
    // The admin's own credential is counted apart.
    let (status, _) = {
        let resp = client()
            .get(kw.url("/authentication/v1/apikey"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().unwrap())
    };
    assert_eq!(status, 200);
}

/// `SIGHUP` changes the quotas for new requests and keeps every key's count.
#[test]
fn a_reload_changes_the_quota_and_keeps_the_counts() {
    let kw = start("  per_credential: { requests_per_second: 0.01, burst: 2 }");
    let (key, _) = create_key(&kw, json!({"description": "a"}));
    // `john` made one admin call; his key's count starts at zero.
    for _ in 0..2 {
        assert_eq!(get(&kw, "/api", &key).status(), 200);
    }
    assert_eq!(get(&kw, "/api", &key).status(), 429);
    let text = std::fs::read_to_string(&kw.config_path).unwrap();
    std::fs::write(
        &kw.config_path,
        text.replace("burst: 2 }", "burst: 4 }\n  max_tracked: 50"),
    )
    .unwrap();
    kw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !kw
        .metrics()
        .contains("keyward_config_reloads_total{outcome=\"ok\"} 1")
    {
        assert!(std::time::Instant::now() < deadline, "{}", kw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two of the new burst of four were used before the reload.
    for i in 0..2 {
        assert_eq!(get(&kw, "/api", &key).status(), 200, "request {i}");
    }
    let refused = get(&kw, "/api", &key);
    assert_eq!(refused.status(), 429);
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"credential\";q=1;w=100;keyward-burst=4"
    );
    assert!(
        kw.stderr().contains("rate_limits.max_tracked"),
        "named as needing a restart"
    );
}

#[test]
fn without_rate_limits_nothing_is_limited() {
    let kw = Keyward::start();
    let http = client();
    for _ in 0..60 {
        assert_eq!(http.get(kw.url("/public/x")).send().unwrap().status(), 200);
    }
    assert_eq!(rate_limited_total(&kw, "client"), 0);
}
