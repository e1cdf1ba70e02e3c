//! API keys end to end (SPEC §2): the admin endpoints and the key on proxied requests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, echoed, echoed_header, Keyward, Setup, ADMIN_PASSWORD};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /write
    require: { functions_any: [CASE-WRITE] }
  - path: /secmon
    require: { functions_any: [CASE-SECMON-RO] }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn start(extra: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: format!("api_keys: {{ last_used_flush: 200ms }}\n{extra}"),
        ..Setup::default()
    });
    kw.add_user(
        "john",
        "john-password",
        &[
            "--function",
            "CASE-SECMON-RO",
            "--function",
            "CASE-WRITE",
            "--customer",
            "7",
        ],
    );
    kw.add_user("mary", "mary-password", &[]);
    kw.add_user("ext", "ext-password", &["--external", "--customer", "9"]);
    kw
}

/// Who calls the admin API.
#[derive(Clone, Copy)]
enum As<'a> {
    Basic(&'a str, &'a str),
    Key(&'a str),
}

fn call(kw: &Keyward, who: As<'_>, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, kw.url(path));
    request = match who {
        As::Basic(user, password) => request.basic_auth(user, Some(password)),
        As::Key(key) => request.header("Argus-API-Key", key),
    };
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("gateway-request-id"));
    let body: Value = resp.json().unwrap();
    assert_eq!(body["responseCode"], status, "{body}");
    (status, body)
}

const ADMIN: As<'static> = As::Basic("admin", ADMIN_PASSWORD);

fn create_key(kw: &Keyward, who: As<'_>, user: &str, body: Value) -> String {
    let (status, resp) = call(
        kw,
        who,
        "POST",
        &format!("/authentication/v1/user/{user}/apikey"),
        Some(&body.to_string()),
    );
    assert_eq!(status, 201, "{resp}");
    resp["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

fn get_with_key(kw: &Keyward, path: &str, key: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url(path))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
}

fn prefix_of(key: &str) -> String {
    key.rsplit_once('/').unwrap().0.to_owned()
}

#[test]
fn create_use_list_renew_revoke() {
    let kw = start("");
    let key = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "My read-only case API-key", "expirationDays": 30}),
    );
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 3);
    assert!(parts[2].len() >= 43, "at least 32 random bytes");
    let prefix = prefix_of(&key);

    let echo = echoed(get_with_key(&kw, "/anything", &key));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("APIKEY")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("DEFAULT")
    );
    assert_eq!(
        echoed_header(&echo, "x-keyward-credential"),
        Some(prefix.as_str())
    );
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("7"));
    assert_eq!(
        echoed_header(&echo, "argus-api-key"),
        None,
        "the key is not forwarded"
    );

    // lastUsed* arrive after the batch interval (200 ms here), never synchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let (status, body) = call(
            &kw,
            ADMIN,
            "GET",
            "/authentication/v1/user/john/apikey",
            None,
        );
        assert_eq!(status, 200);
        let entry = body["data"][0].clone();
        if entry["lastUsedTimestamp"].as_i64().unwrap_or(0) > 0 {
            assert_eq!(body["count"], 1);
            break entry;
        }
        assert!(Instant::now() < deadline, "lastUsed never recorded: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed["prefix"], prefix.as_str());
    assert_eq!(listed["lastUsedIP"], "127.0.0.1");
    assert_eq!(listed["createdByUser"]["name"], "admin");
    assert!(listed.get("apiKeyString").is_none());
    assert!(
        !listed.to_string().contains(parts[2]),
        "the secret is shown once only"
    );

    let (status, renewed) = call(
        &kw,
        ADMIN,
        "PUT",
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        Some(r#"{"expirationDays": 60}"#),
    );
    assert_eq!(status, 200, "{renewed}");
    let until = renewed["data"]["renewedKey"]["validUntil"]
        .as_i64()
        .unwrap();
    assert!(until > listed["validUntil"].as_i64().unwrap());
    assert_eq!(
        get_with_key(&kw, "/anything", &key).status(),
        200,
        "renew keeps the secret"
    );

    let (status, revoked) = call(
        &kw,
        ADMIN,
        "DELETE",
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(revoked["data"]["revokedKey"]["prefix"], prefix.as_str());
    let resp = get_with_key(&kw, "/anything", &key);
    assert_eq!(resp.status(), 401, "revocation is effective at once");
    let (status, body) = call(
        &kw,
        ADMIN,
        "GET",
        "/authentication/v1/user/john/apikey",
        None,
    );
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)));
    let (status, _) = call(
        &kw,
        ADMIN,
        "DELETE",
        &format!("/authentication/v1/user/john/apikey/{prefix}"),
        None,
    );
    assert_eq!(status, 404);

    let stderr = kw.stderr();
    let audit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("keyward::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("apikey.create")
            && l.contains("actor=\"admin\"")
            && l.contains("target_user=\"john\"")),
        "{stderr}"
    );
    assert!(audit
        .iter()
        .any(|l| l.contains("apikey.revoke") && l.contains(&prefix)));
    assert!(!stderr.contains(parts[2]), "the secret is never logged");
    let metrics = kw.metrics();
    assert!(
        metrics.contains(
            r#"keyward_admin_operations_total{operation="apikey.create",outcome="ok"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn self_service_with_a_key() {
    let kw = start("");
    let key = create_key(
        &kw,
        As::Basic("john", "john-password"),
        "john",
        json!({"description": "mine"}),
    );
    let (status, own) = call(&kw, As::Key(&key), "GET", "/authentication/v1/apikey", None);
    assert_eq!(status, 200);
    assert_eq!(own["data"][0]["prefix"], prefix_of(&key).as_str());
    let (status, created) = call(
        &kw,
        As::Key(&key),
        "POST",
        "/authentication/v1/apikey",
        Some(r#"{"description":"second"}"#),
    );
    assert_eq!(status, 201, "{created}");
    let second = created["data"]["apiKeyString"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &kw,
        As::Key(&key),
        "DELETE",
        &format!("/authentication/v1/apikey/{}", prefix_of(&second)),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(get_with_key(&kw, "/x", &second).status(), 401);
}

#[test]
fn roles_and_security_levels() {
    let kw = start("");
    let ext_key = create_key(&kw, ADMIN, "ext", json!({"description": "customer key"}));
    let echo = echoed(get_with_key(&kw, "/x", &ext_key));
    assert_eq!(
        echoed_header(&echo, "x-keyward-security-level"),
        Some("EXTERNAL")
    );
    // An external user's key is EXTERNAL: no key management, not even its own.
    for (method, path) in [
        ("GET", "/authentication/v1/apikey"),
        ("GET", "/authentication/v1/user/ext/apikey"),
        ("POST", "/authentication/v1/apikey"),
    ] {
        let (status, body) = call(
            &kw,
            As::Key(&ext_key),
            method,
            path,
            Some(r#"{"description":"x"}"#),
        );
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["messages"][0]["type"], "ACTION_ERROR");
        assert_eq!(body["data"], Value::Null);
    }
    // With a password the same external user is DEFAULT and may manage its own keys.
    let (status, _) = call(
        &kw,
        As::Basic("ext", "ext-password"),
        "GET",
        "/authentication/v1/user/ext/apikey",
        None,
    );
    assert_eq!(status, 200);

    // Non-POWER-USER managing another user: 403; POWER-USER: 200.
    let (status, _) = call(
        &kw,
        As::Basic("mary", "mary-password"),
        "GET",
        "/authentication/v1/user/john/apikey",
        None,
    );
    assert_eq!(status, 403);
    let mary_key = create_key(
        &kw,
        As::Basic("mary", "mary-password"),
        "mary",
        json!({"description": "m"}),
    );
    let (status, _) = call(
        &kw,
        As::Key(&mary_key),
        "POST",
        "/authentication/v1/user/john/apikey",
        Some(r#"{"description":"x"}"#),
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        &kw,
        ADMIN,
        "GET",
        "/authentication/v1/user/john/apikey",
        None,
    );
    assert_eq!(status, 200);
    // By numeric id too.
    let (status, _) = call(&kw, ADMIN, "GET", "/authentication/v1/user/2/apikey", None);
    assert_eq!(status, 200);
    let (status, body) = call(
        &kw,
        ADMIN,
        "GET",
        "/authentication/v1/user/nobody/apikey",
        None,
    );
    assert_eq!(status, 404, "{body}");

    // No credential, bad credential.
    let resp = client()
        .get(kw.url("/authentication/v1/apikey"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let (status, _) = call(
        &kw,
        As::Basic("john", "wrong-password"),
        "GET",
        "/authentication/v1/apikey",
        None,
    );
    assert_eq!(status, 401);
}

#[test]
fn validation_errors_name_the_field() {
    let kw = start("");
    let john = As::Basic("john", "john-password");
    let cases = [
        (json!({"validSources": "10.0.0.0/8"}), "description"),
        (
            json!({"description": "x", "validSources": "10.0.0.0/33"}),
            "validSources",
        ),
        (
            json!({"description": "x", "validSources": ["10.0.0.0/8", "nope"]}),
            "validSources",
        ),
        (json!({"description": "x", "colour": "red"}), "colour"),
        (
            json!({"description": "x", "sessionConstraints": {"functions": ["A"]}}),
            "sessionConstraints.functions",
        ),
        (
            json!({"description": "x", "expirationDays": 366}),
            "expirationDays",
        ),
        (
            json!({"description": "x", "expirationDays": 0}),
            "expirationDays",
        ),
        (
            json!({"description": "x", "disableExpiration": true}),
            "disableExpiration",
        ),
        (
            json!({"description": "x", "sessionConstraints": {"function": ["POWER-USER"]}}),
            "sessionConstraints.function",
        ),
    ];
    for (body, field) in cases {
        let (status, resp) = call(
            &kw,
            john,
            "POST",
            "/authentication/v1/user/john/apikey",
            Some(&body.to_string()),
        );
        assert_eq!(status, 412, "{body}: {resp}");
        assert_eq!(resp["messages"][0]["type"], "FIELD_ERROR");
        assert_eq!(resp["messages"][0]["field"], field, "{body}: {resp}");
    }
    let (status, _) = call(
        &kw,
        john,
        "POST",
        "/authentication/v1/user/john/apikey",
        Some("{not json"),
    );
    assert_eq!(status, 400);
    // A POWER-USER may exceed the maximum and disable expiry.
    create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "long", "expirationDays": 1000}),
    );
    create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "forever", "disableExpiration": true}),
    );
    // IPv6 and a list are accepted.
    create_key(
        &kw,
        john,
        "john",
        json!({"description": "v6", "validSources": ["94.127.56.0/24", "2001:db8::/32"]}),
    );
}

#[test]
fn constraints_on_proxied_requests() {
    let kw = start("");
    let read_only = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "ro", "sessionConstraints": {"readOnly": true}}),
    );
    assert_eq!(get_with_key(&kw, "/x", &read_only).status(), 200);
    let post = client()
        .post(kw.url("/x"))
        .header("Argus-API-Key", &read_only)
        .send()
        .unwrap();
    assert_eq!(post.status(), 403);

    let secmon = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "fn", "sessionConstraints": {"function": ["CASE-SECMON-RO"], "customerID": [7]}}),
    );
    let echo = echoed(get_with_key(&kw, "/secmon", &secmon));
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some("CASE-SECMON-RO")
    );
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("7"));
    assert_eq!(
        get_with_key(&kw, "/write", &secmon).status(),
        403,
        "the key lacks CASE-WRITE"
    );
    let unconstrained = create_key(&kw, ADMIN, "john", json!({"description": "all"}));
    assert_eq!(get_with_key(&kw, "/write", &unconstrained).status(), 200);
}

#[test]
fn source_cidr_through_a_trusted_proxy() {
    let kw = start("trusted_proxies: [127.0.0.1/32]");
    let key = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "office", "validSources": "94.127.56.0/24"}),
    );
    let via = |xff: &str| {
        client()
            .get(kw.url("/x"))
            .header("Argus-API-Key", &key)
            .header("X-Forwarded-For", xff)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(via("94.127.56.10"), 200);
    assert_eq!(
        via("6.6.6.6, 94.127.56.10"),
        200,
        "the right-most untrusted hop counts"
    );
    assert_eq!(via("94.127.56.10, 10.9.9.9"), 401);
    assert_eq!(
        get_with_key(&kw, "/x", &key).status(),
        401,
        "the proxy itself is not in the range"
    );
    let metrics = kw.metrics();
    assert!(
        metrics.contains(
            r#"keyward_auth_failures_total{method="apikey",reason="source_not_allowed"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn an_untrusted_peer_cannot_spoof_its_address() {
    let kw = start("");
    let key = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "office", "validSources": ["94.127.56.0/24"]}),
    );
    let resp = client()
        .get(kw.url("/x"))
        .header("Argus-API-Key", &key)
        .header("X-Forwarded-For", "94.127.56.10")
        .header("Forwarded", "for=94.127.56.10")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn expired_key_is_refused() {
    let kw = start("");
    let key = create_key(
        &kw,
        ADMIN,
        "john",
        json!({"description": "short", "expirationDays": 1}),
    );
    // Age the key in the real store (as another replica or time would), before first use.
    let db = kw.dir.path().join("keyward.db");
    let prefix = prefix_of(&key);
    let key_id: i64 = prefix.split('/').nth(1).unwrap().parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE api_keys SET valid_until_ms = 1000 WHERE key_id = ?")
            .bind(key_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let resp = get_with_key(&kw, "/x", &key);
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["reason"], "expired");
}

#[test]
fn malformed_keys_are_401_and_never_forwarded() {
    let kw = start("");
    let key = create_key(&kw, ADMIN, "john", json!({"description": "k"}));
    let secret = key.rsplit('/').next().unwrap().to_owned();
    let before = kw.upstream().requests();
    let shapes = [
        String::new(),
        "garbage".into(),
        prefix_of(&key),
        format!("{key}/extra"),
        format!("{}/", prefix_of(&key)),
        format!("XYZ/1/{secret}"),
        format!("2/one/{secret}"),
        format!("2/1/{}", &secret[..20]),
        format!("{}/{}", prefix_of(&key), "é".repeat(22)),
        format!("{key}{}", "A".repeat(300)),
        // A changed character breaks the checksum: malformed, not a wrong secret.
        format!("{}x", &key[..key.len() - 1]),
        // A well-formed secret (its checksum holds) that is not the key's: the one bad_secret.
        format!(
            "{}/{}",
            prefix_of(&key),
            keyward::auth::api_key::generate_secret()
        ),
    ];
    for shape in &shapes {
        let resp = client()
            .get(kw.url("/public"))
            .header("Argus-API-Key", shape.as_str())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "{shape:?}");
    }
    let twice = client()
        .get(kw.url("/x"))
        .header("Argus-API-Key", &key)
        .header("Argus-API-Key", &key)
        .send()
        .unwrap();
    assert_eq!(twice.status(), 401);
    let with_basic = client()
        .get(kw.url("/x"))
        .header("Argus-API-Key", &key)
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(with_basic.status(), 401);
    assert_eq!(kw.upstream().requests(), before);
    let metrics = kw.metrics();
    assert!(metrics.contains(r#"keyward_auth_failures_total{method="apikey",reason="malformed"}"#));
    assert!(
        metrics.contains(r#"keyward_auth_failures_total{method="apikey",reason="bad_secret"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_locked_users_key_is_refused() {
    let kw = start("");
    let key = create_key(&kw, ADMIN, "john", json!({"description": "k"}));
    assert_eq!(get_with_key(&kw, "/x", &key).status(), 200);
    assert!(kw.cli(&["user", "lock", "john"], None).status.success());
    let locked_at = Instant::now();
    loop {
        let resp = get_with_key(&kw, "/x", &key);
        if resp.status() == 401 {
            let body: Value = resp.json().unwrap();
            assert_eq!(body["reason"], "locked");
            break;
        }
        assert!(
            locked_at.elapsed() < Duration::from_secs(2),
            "locked user's key still works"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .unwrap_or(0)
}

#[test]
fn unknown_keys_reach_the_store_once_per_prefix() {
    let kw = start("");
    let misses = r#"keyward_cache_misses_total{cache="apikey"}"#;
    let negative_hits = r#"keyward_cache_hits_total{cache="apikey_negative"}"#;
    let m0 = kw.metrics();
    let random = format!("abc/7/{}", "Q".repeat(43));
    for _ in 0..30 {
        assert_eq!(get_with_key(&kw, "/x", &random).status(), 401);
    }
    let m1 = kw.metrics();
    assert_eq!(metric(&m1, misses) - metric(&m0, misses), 1, "{m1}");
    assert_eq!(metric(&m1, negative_hits) - metric(&m0, negative_hits), 29);
    for i in 0..20 {
        let key = format!("{:x}/{}/{}", 0x1000 + i, i + 1, "Z".repeat(43));
        assert_eq!(get_with_key(&kw, "/x", &key).status(), 401);
        assert_eq!(get_with_key(&kw, "/x", &key).status(), 401);
    }
    let m2 = kw.metrics();
    assert_eq!(
        metric(&m2, misses) - metric(&m1, misses),
        20,
        "one store query per prefix"
    );
    assert!(
        m2.contains(r#"keyward_cache_entries{cache="apikey_negative"} 21"#),
        "{m2}"
    );
}
