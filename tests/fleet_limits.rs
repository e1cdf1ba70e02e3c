//! Fleet-scoped rate limits (SPEC §12): real keyward replicas on one fresh PostgreSQL database
//! and one `redis-server` each test starts itself. Requests go round-robin over the replicas;
//! what they accept together stays within `burst + W × rate + replicas × slice` (W: the time
//! the requests took; slice: a tenth of the burst), and the quota is the fleet's, not divided
//! among the replicas. Redis (TLS, as managed Redis runs) stopped or hung: `refuse` answers 503 with
//! `Retry-After`, `local` lets each replica's own bucket decide (counted). `scope: replica`
//! keeps each replica's own quota.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::redis::{commands_in, TestRedis};
use common::{client, client_from, Keyward, Setup};
use keyward::store::scratch::ScratchDatabase;
use serde_json::json;
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn database() -> ScratchDatabase {
    ScratchDatabase::create_blocking()
        .expect("the fleet tests need PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)")
}

/// `n` replicas on `db` sharing `redis`, started together.
fn replicas(
    n: usize,
    db: &ScratchDatabase,
    redis: &TestRedis,
    on_error: &str,
    extra: &str,
) -> Vec<Keyward> {
    let extra = format!("{}{extra}", redis.section(on_error));
    let starting: Vec<_> = (0..n)
        .map(|_| {
            let (url, extra) = (db.url().to_owned(), extra.clone());
            std::thread::spawn(move || {
                Keyward::start_with(Setup {
                    routes: ROUTES.into(),
                    store_url: Some(url),
                    invalidation_poll: "5s".into(),
                    extra,
                    ..Setup::default()
                })
            })
        })
        .collect();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// What a run of requests got.
#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    limited: u64,
    unavailable: u64,
    /// From the first request to the last answer.
    took: Duration,
    /// The `RateLimit-Policy` of the last 429.
    policy: Option<String>,
    /// The `Retry-After` of the last 503.
    retry_after: Option<String>,
}

impl Tally {
    fn count(&mut self, resp: reqwest::blocking::Response) {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        match resp.status().as_u16() {
            200 => self.accepted += 1,
            429 => {
                self.limited += 1;
                self.policy = header("ratelimit-policy");
            }
            503 => {
                self.unavailable += 1;
                self.retry_after = header("retry-after");
            }
            status => panic!("unexpected {status}: {:?}", resp.text()),
        }
    }

    /// SPEC §12's bound for the time the requests took: `burst + W × rate` plus one slice
    /// (a tenth of the burst) per replica, and one for the request at the window's edge.
    fn assert_within(&self, rate: f64, burst: u64, replicas: u64) {
        eprintln!("{self:?}");
        let bound = burst as f64 + rate * self.took.as_secs_f64() + (replicas * burst / 10) as f64;
        // SPEC states the bound for 10 s windows; over a longer run (a loaded machine) the
        // same formula with the run's own duration is the bound of that window.
        assert!(
            self.accepted as f64 <= bound + 1.0,
            "{} accepted, bound {bound:.1}: {self:?}",
            self.accepted
        );
    }
}

/// `requests` requests, the i-th through `send(i)`.
fn run(requests: usize, send: impl Fn(usize) -> reqwest::blocking::Response) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    for i in 0..requests {
        tally.count(send(i));
    }
    tally.took = start.elapsed();
    tally
}

fn with_key(kw: &Keyward, key: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/private"))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
}

fn sum_metric(fleet: &[Keyward], name: &str) -> i64 {
    fleet.iter().map(|kw| kw.metric_value(name)).sum()
}

#[test]
fn one_keys_quota_holds_for_the_whole_fleet() {
    let db = database();
    let redis = TestRedis::start_tls();
    let fleet = replicas(
        3,
        &db,
        &redis,
        "refuse",
        "rate_limits:\n  per_credential: { requests_per_second: 2, burst: 50 }\n",
    );
    fleet[0].add_user("john", "john-password", &[]);
    let key = fleet[0].create_api_key("john", json!({ "description": "fleet" }));
    let commands = redis.commands();
    let tally = run(300, |i| with_key(&fleet[i % 3], &key));
    tally.assert_within(2.0, 50, 3);
    // The fleet's quota, not a third of it per replica (about 17 each): all but the slices
    // the replicas still hold were used.
    assert!(tally.accepted >= 50 - 3 * 5, "{tally:?}");
    assert_eq!(
        tally.policy.as_deref(),
        Some("\"credential\";q=2;w=1;keyward-burst=50")
    );
    // Leases, not a call per request: a slice of 5 per call while the burst lasts (10), then
    // at most one call per replica each time the bucket has earned a request back (2/s over
    // the run: more on a slow machine), and one more per replica at each end. A lease is
    // four commands (`EVALSHA`, and `TIME`, `GET`, `SET` inside it).
    let calls = sum_metric(&fleet, "keyward_rate_limit_redis_calls_total");
    let sent = redis.commands() - commands;
    let earned = 2.0 * tally.took.as_secs_f64();
    let most = 10 + 3 * (earned.ceil() as i64 + 2);
    assert!(
        calls > 0 && calls <= most && calls < 150,
        "{calls} lease calls for 300 requests (at most {most}): {tally:?}"
    );
    assert!(
        sent <= 4 * calls as u64 + 4,
        "{sent} Redis commands for {calls} lease calls"
    );

    // A client that talks to one replica only gets (nearly) the whole quota there.
    let other = fleet[0].create_api_key("john", json!({ "description": "one replica" }));
    let tally = run(100, |_| with_key(&fleet[1], &other));
    tally.assert_within(2.0, 50, 1);
    assert!(tally.accepted >= 50, "{tally:?}");

    // The issue's case: a key's own quota of 2/s with a burst of 10, 90 requests round-robin
    // (33 accepted per replica counts; 11 allowed). A slice is one request here.
    let small = fleet[0].create_api_key(
        "john",
        json!({ "description": "small", "rateLimit": { "requestsPerSecond": 2, "burst": 10 } }),
    );
    let tally = run(90, |i| with_key(&fleet[i % 3], &small));
    tally.assert_within(2.0, 10, 3);
    assert!(tally.accepted >= 10, "{tally:?}");
}

#[test]
fn a_users_credentials_share_the_per_user_quota_in_the_fleet() {
    let db = database();
    let redis = TestRedis::start_tls();
    let fleet = replicas(
        3,
        &db,
        &redis,
        "refuse",
        "rate_limits:\n  per_credential: { requests_per_second: 100, burst: 200 }\n  \
         per_user: { requests_per_second: 2, burst: 50 }\n",
    );
    fleet[0].add_user("john", "john-password", &[]);
    let keys = [
        fleet[0].create_api_key("john", json!({ "description": "one" })),
        fleet[0].create_api_key("john", json!({ "description": "two" })),
    ];
    let tally = run(300, |i| with_key(&fleet[i % 3], &keys[(i / 3) % 2]));
    tally.assert_within(2.0, 50, 3);
    assert!(tally.accepted >= 50 - 3 * 5, "{tally:?}");
    assert_eq!(
        tally.policy.as_deref(),
        Some("\"user\";q=2;w=1;keyward-burst=50")
    );
    let text = fleet[0].metrics();
    assert!(
        text.contains("keyward_rate_limited_total{kind=\"user\"}"),
        "{text}"
    );
}

#[test]
fn anonymous_clients_are_limited_fleet_wide() {
    let db = database();
    let redis = TestRedis::start_tls();
    let fleet = replicas(
        3,
        &db,
        &redis,
        "refuse",
        "rate_limits:\n  per_client_unauthenticated: { requests_per_second: 2, burst: 50 }\n",
    );
    let from = client_from("127.0.0.7");
    let tally = run(300, |i| {
        from.get(fleet[i % 3].url("/public/x")).send().unwrap()
    });
    tally.assert_within(2.0, 50, 3);
    assert!(tally.accepted >= 50 - 3 * 5, "{tally:?}");
    assert_eq!(
        tally.policy.as_deref(),
        Some("\"client\";q=2;w=1;keyward-burst=50")
    );
}

#[test]
fn redis_hung_or_stopped_with_refuse_answers_503_with_retry_after() {
    let db = database();
    let mut redis = TestRedis::start_tls();
    let fleet = replicas(
        1,
        &db,
        &redis,
        "refuse",
        "rate_limits:\n  per_credential: { requests_per_second: 100, burst: 50 }\n",
    );
    let kw = &fleet[0];
    kw.add_user("john", "john-password", &[]);
    let key = kw.create_api_key("john", json!({ "description": "outage" }));
    assert_eq!(with_key(kw, &key).status(), 200);

    // Hung: the slice held is served, then the lease call times out (500 ms) → 503.
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    let tally = run(10, |_| with_key(kw, &key));
    assert!(tally.accepted <= 5, "{tally:?}");
    assert!(tally.unavailable >= 5, "{tally:?}");
    assert_eq!(tally.retry_after.as_deref(), Some("2"), "{tally:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a hung Redis held requests for {:?}",
        started.elapsed()
    );
    assert_eq!(
        kw.metric_value("keyward_rate_limit_local_fallback_total"),
        0
    );

    // Back: fleet-wide again (after the fail-fast second).
    redis.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(with_key(kw, &key).status(), 200);

    // Stopped: the same, at once. A key with a quota is not counted anywhere else: 503 too.
    let quota = kw.create_api_key(
        "john",
        json!({ "description": "quota", "quota": { "requests": 100, "period": "day" } }),
    );
    assert_eq!(with_key(kw, &quota).status(), 200);
    redis.stop();
    let tally = run(10, |_| with_key(kw, &key));
    assert!(tally.accepted <= 5, "{tally:?}");
    assert!(tally.unavailable >= 5, "{tally:?}");
    assert_eq!(tally.retry_after.as_deref(), Some("2"), "{tally:?}");
    let tally = run(5, |_| with_key(kw, &quota));
    assert_eq!(tally.unavailable, 5, "{tally:?}");

    // Restarted (empty, same address and certificate): served again, fleet-wide, without
    // restarting keyward; the quota starts a new count (Redis kept nothing).
    redis.restart();
    for key in [&key, &quota] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while with_key(kw, key).status() != 200 {
            assert!(
                Instant::now() < deadline,
                "not served after Redis came back"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let commands = redis.commands();
    assert!(commands > 0, "the limits use the restarted Redis");
    assert_eq!(
        kw.metric_value("keyward_rate_limit_local_fallback_total"),
        0
    );
}

#[test]
fn redis_away_with_local_lets_each_replicas_own_bucket_decide() {
    let db = database();
    let mut redis = TestRedis::start_tls();
    let fleet = replicas(
        2,
        &db,
        &redis,
        "local",
        "rate_limits:\n  per_credential: { requests_per_second: 2, burst: 20 }\n",
    );
    fleet[0].add_user("john", "john-password", &[]);
    let key = fleet[0].create_api_key("john", json!({ "description": "local" }));
    // Hung for the first replica, stopped for the second: each replica's own bucket, a whole
    // burst on each (the fleet's would be one burst for both).
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    for (i, kw) in fleet.iter().enumerate() {
        if i == 1 {
            redis.stop();
        }
        let tally = run(60, |_| with_key(kw, &key));
        tally.assert_within(2.0, 20, 1);
        assert!(tally.accepted >= 20, "{tally:?}");
        assert!(tally.limited > 0, "{tally:?}");
        assert!(
            kw.metric_value("keyward_rate_limit_local_fallback_total") >= 50,
            "{}",
            kw.metrics()
        );
        let stderr = kw.stderr();
        assert_eq!(
            stderr.matches("cannot lease rate-limit slices").count(),
            1,
            "logged once: {stderr}"
        );
    }
    // A quota with Redis away: the replica's own count decides, exactly its quota.
    let quota = fleet[1].create_api_key(
        "john",
        json!({ "description": "quota", "quota": { "requests": 3, "period": "day" } }),
    );
    let taken: Vec<u16> = (0..5)
        .map(|_| with_key(&fleet[1], &quota).status().as_u16())
        .collect();
    assert_eq!(taken, [200, 200, 200, 429, 429]);
    assert!(
        fleet[1].metric_value("keyward_replay_local_fallback_total{claim=\"quota\"}") >= 3,
        "{}",
        fleet[1].metrics()
    );

    // Redis back (restarted, same address): the fleet's bucket again, the fallback no longer
    // counted.
    redis.restart();
    std::thread::sleep(Duration::from_millis(1_100));
    let other = fleet[0].create_api_key("john", json!({ "description": "after" }));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = fleet[0].metric_value("keyward_rate_limit_local_fallback_total");
        assert_eq!(with_key(&fleet[0], &other).status(), 200);
        if fleet[0].metric_value("keyward_rate_limit_local_fallback_total") == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still local after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(redis.commands() > 0, "the limits use the restarted Redis");
}

#[test]
fn scope_replica_keeps_each_replicas_own_quota() {
    let db = database();
    let redis = TestRedis::start_tls();
    let fleet = replicas(
        3,
        &db,
        &redis,
        "refuse",
        "rate_limits:\n  scope: replica\n  per_credential: { requests_per_second: 2, burst: 20 }\n",
    );
    fleet[0].add_user("john", "john-password", &[]);
    let key = fleet[0].create_api_key("john", json!({ "description": "replica" }));
    let commands = redis.commands();
    let tally = run(150, |i| with_key(&fleet[i % 3], &key));
    // Each replica its own burst: three bursts, beyond the fleet bound.
    assert!(tally.accepted >= 60, "{tally:?}");
    assert!(
        tally.accepted as f64 <= 3.0 * (20.0 + 2.0 * tally.took.as_secs_f64() + 1.0),
        "{tally:?}"
    );
    assert_eq!(
        sum_metric(&fleet, "keyward_rate_limit_redis_calls_total"),
        0
    );
    assert_eq!(
        redis.commands(),
        commands,
        "no Redis command for a rate limit"
    );
}

#[test]
fn commandstats_are_read() {
    let info = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=3\r\ncmdstat_info:calls=4,usec=1\r\ncmdstat_script|load:calls=1,usec=2\r\n";
    assert_eq!(commands_in(info), 13);
}
