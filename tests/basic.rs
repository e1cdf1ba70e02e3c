//! HTTP Basic hardening (SPEC §6): one reason for every failed password login, and password
//! guessing throttled per (user name, client address) with 429 + `Retry-After`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, client_from, echoed, Keyward, Setup};
use serde_json::Value;
use std::time::{Duration, Instant};

const OWN_KEYS: &str = "/authentication/v1/apikey";

/// (status, reason in the body, Retry-After) of a Basic login at `path`.
fn login(
    client: &reqwest::blocking::Client,
    kw: &Keyward,
    path: &str,
    user: &str,
    password: &str,
) -> (u16, String, Option<u64>) {
    let resp = client
        .get(kw.url(path))
        .basic_auth(user, Some(password))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let body: Value = resp.json().unwrap_or(Value::Null);
    // The proxy's small JSON body, or the admin API's Argus envelope.
    let reason = match body["reason"].as_str() {
        Some(reason) => reason.to_owned(),
        None => body["messages"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    };
    (status, reason, retry_after)
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let series = format!(r#"keyward_auth_failures_total{{method="basic",reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn every_failed_password_login_answers_one_reason_but_metrics_keep_the_cause() {
    // Far from the throttle: this test is about the answers.
    let kw = Keyward::start_with(Setup {
        extra: "limits:\n  password_failures: 100\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    kw.add_user("lucy", "lucy-password", &[]);
    assert_eq!(
        login(&client(), &kw, "/x", "lucy", "lucy-password").0,
        200,
        "lucy works before she is locked"
    );
    assert!(kw.cli(&["user", "lock", "lucy"], None).status.success());
    // The lock reaches the running keyward through the change feed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while login(&client(), &kw, "/x", "lucy", "lucy-password").0 == 200 {
        assert!(Instant::now() < deadline, "the lock never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = kw.metrics();

    let cases = [
        ("john", "wrong-password"),  // bad_secret
        ("nobody", "john-password"), // unknown_key
        ("lucy", "lucy-password"),   // locked, right password
        ("lucy", "wrong-password"),  // locked, wrong password: bad_secret
    ];
    for (user, password) in cases {
        let (status, reason, _) = login(&client(), &kw, "/x", user, password);
        assert_eq!(
            (status, reason.as_str()),
            (401, "bad_credentials"),
            "proxy, {user}/{password}"
        );
        let (status, message, _) = login(&client(), &kw, OWN_KEYS, user, password);
        assert_eq!(status, 401, "admin API, {user}/{password}");
        assert!(
            message.contains("bad_credentials"),
            "admin API, {user}/{password}: {message}"
        );
        for leak in ["unknown_key", "bad_secret", "locked"] {
            assert!(!message.contains(leak), "{message}");
        }
    }
    // Byte-identical bodies apart from the request id: nothing else tells the causes apart.
    let bodies: Vec<String> = cases
        .iter()
        .map(|(user, password)| {
            let resp = client()
                .get(kw.url("/x"))
                .basic_auth(user, Some(password))
                .send()
                .unwrap();
            let id = resp
                .headers()
                .get("gateway-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            resp.text().unwrap().replace(&id, "ID")
        })
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:#?}");

    let after = kw.metrics();
    // Three rounds (proxy, admin, bodies) of the four cases.
    assert_eq!(
        failures(&after, "bad_secret") - failures(&before, "bad_secret"),
        6
    );
    assert_eq!(
        failures(&after, "unknown_key") - failures(&before, "unknown_key"),
        3
    );
    assert_eq!(failures(&after, "locked") - failures(&before, "locked"), 3);
    assert_eq!(
        failures(&after, "bad_credentials"),
        0,
        "metrics keep the cause"
    );
}

#[test]
fn password_guessing_is_throttled_per_user_and_address() {
    let kw = Keyward::start_with(Setup {
        extra: "limits:\n  password_failures: 3\n  password_failure_window: 3s\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let attacker = client_from("127.0.0.1");
    let elsewhere = client_from("127.0.0.2");
    // The real user logs in from the attacker's address first: a cached login must not let
    // the right password through once the pair is throttled.
    assert_eq!(login(&attacker, &kw, "/x", "john", "john-password").0, 200);
    let started = Instant::now();
    for _ in 0..3 {
        let (status, reason, retry) = login(&attacker, &kw, "/x", "john", "guess");
        assert_eq!(
            (status, reason.as_str(), retry),
            (401, "bad_credentials", None)
        );
    }
    let (status, reason, retry) = login(&attacker, &kw, "/x", "john", "guess");
    assert_eq!((status, reason.as_str()), (429, "too_many_failures"));
    let retry = retry.expect("429 carries Retry-After");
    assert!((1..=3).contains(&retry), "Retry-After: {retry}");
    // The right password waits too, through the proxy and the admin API alike.
    let (status, _, retry) = login(&attacker, &kw, "/x", "john", "john-password");
    assert_eq!((status, retry.is_some()), (429, true));
    let (status, _, retry) = login(&attacker, &kw, OWN_KEYS, "john", "john-password");
    assert_eq!((status, retry.is_some()), (429, true), "admin API");

    // Another address is not locked out, and its success resets nothing at the first.
    let echo = echoed(
        elsewhere
            .get(kw.url("/x"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap(),
    );
    assert_eq!(echo["headers"]["x-keyward-user"][0], "john");
    assert_eq!(
        login(&elsewhere, &kw, OWN_KEYS, "john", "john-password").0,
        200
    );
    assert_eq!(login(&attacker, &kw, "/x", "john", "john-password").0, 429);

    // Unknown names are throttled alike: the throttle is no oracle either.
    for _ in 0..3 {
        assert_eq!(login(&attacker, &kw, "/x", "nobody", "guess").0, 401);
    }
    assert_eq!(login(&attacker, &kw, "/x", "nobody", "guess").0, 429);
    assert!(failures(&kw.metrics(), "too_many_failures") >= 4);

    // The window passes: the right password works again.
    let wait =
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(300);
    std::thread::sleep(wait);
    assert_eq!(login(&attacker, &kw, "/x", "john", "john-password").0, 200);
}

#[test]
fn parallel_guesses_cannot_outrun_the_throttle() {
    let kw = Keyward::start_with(Setup {
        extra: "limits:\n  password_failures: 3\n  password_failure_window: 60s\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let before = kw.upstream().requests();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let kw = &kw;
                scope.spawn(move || login(&client(), kw, "/x", "john", &format!("guess-{i}")).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused_401 = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(refused_401, 3, "{statuses:?}");
    assert_eq!(throttled, 21, "{statuses:?}");
    assert_eq!(kw.upstream().requests(), before);
}

/// Parallel logins with the same header (a client's connections, all missing the cache at
/// once when its entry expires) are checked once and share the answer: the right password is
/// never throttled by its own requests, and an identical guess counts as one guess.
#[test]
fn parallel_logins_with_one_header_are_checked_once() {
    let kw = Keyward::start_with(Setup {
        extra: "limits:\n  password_failures: 5\n  password_failure_window: 60s\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let parallel = |password: &str| -> Vec<u16> {
        let barrier = std::sync::Barrier::new(24);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..24)
                .map(|_| {
                    let (kw, barrier) = (&kw, &barrier);
                    scope.spawn(move || {
                        let client = client();
                        barrier.wait();
                        login(&client, kw, "/x", "john", password).0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    // Nothing cached yet: 24 misses at once, far more than the 5 attempts the pair has.
    let before = kw.upstream().requests();
    assert_eq!(parallel("john-password"), vec![200; 24]);
    assert_eq!(kw.upstream().requests(), before + 24);
    let metrics = kw.metrics();
    assert_eq!(failures(&metrics, "too_many_failures"), 0, "{metrics}");

    // 24 copies of one wrong password: refused alike, and counted once per check rather
    // than once per request (counted each, 19 of them would be 429).
    let statuses = parallel("one-guess");
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
}
