//! Equal-time refusals: an unknown prefix, a wrong secret, a locked user's key and an expired
//! key must take the same time to refuse, so that timing tells an attacker nothing about which
//! keys exist or what state they are in. Every case runs the keyed hash and a constant-time
//! compare (an unknown prefix against a dummy hash), with warm caches as in production.
//!
//! `cargo bench --bench refusals` reports each case with criterion, then measures the four
//! side by side (interleaved, so drift hits them alike) and fails when two medians differ by
//! more than 50 µs. Under `cargo test` (criterion's test mode) each case runs once and the
//! timing check is skipped: timing belongs to benchmarks, not to tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{bench_db, cache_settings};
use criterion::{criterion_group, criterion_main, Criterion};
use keyward::auth::api_key::{self, ApiKeyAuthenticator, KeyHasher};
use keyward::auth::AuthError;
use keyward::metrics::Metrics;
use keyward::ratelimit::CheckBudget;
use keyward::store::{now_ms, Db, NewApiKey, NewUser};
use keyward::users::local_audit;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest accepted difference between the medians of two refusal kinds.
const TOLERANCE: Duration = Duration::from_micros(50);

struct Case {
    name: &'static str,
    header: String,
    expected: AuthError,
}

fn key_for(db: &Db, hasher: &KeyHasher, user: &str, valid_until_ms: i64) -> (String, i64) {
    let secret = api_key::generate_secret();
    let secret_hash = hasher.hash(&secret);
    let name = user.to_owned();
    let key = db
        .block_on(|store| async move {
            let user = store
                .create_user(
                    NewUser {
                        name: name.clone(),
                        domain: None,
                        customer: None,
                        functions: vec![],
                        external: false,
                        password_hash: String::new(),
                    },
                    local_audit("user.create", &name),
                )
                .await?;
            store
                .create_api_key(
                    NewApiKey {
                        user_id: user.id,
                        secret_hash,
                        description: "bench".into(),
                        created_by_id: user.id,
                        created_by_name: user.name.clone(),
                        valid_until_ms,
                        valid_sources: vec![],
                        functions: None,
                        customers: vec![],
                        read_only: false,
                        rate_limit: None,
                        quota: None,
                    },
                    local_audit("apikey.create", &name),
                )
                .await
        })
        .unwrap();
    (format!("{}/{}", key.prefix(), secret), key.user_id)
}

fn refusals(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = bench_db(&dir);
    let pepper = db
        .block_on(|store| async move { store.api_key_pepper().await })
        .unwrap();
    let hasher = KeyHasher::new(pepper);
    let (good, _) = key_for(&db, &hasher, "good", 0);
    let (locked, locked_user) = key_for(&db, &hasher, "locked", 0);
    let (expired, _) = key_for(&db, &hasher, "expired", now_ms() - 1000);
    db.block_on(|store| async move {
        store
            .set_user_locked(locked_user, true, local_audit("user.lock", "locked"))
            .await
    })
    .unwrap();
    let prefix = |key: &str| key.rsplit_once('/').unwrap().0.to_owned();
    let cases = [
        Case {
            name: "unknown_prefix",
            header: format!("7/99/{}", api_key::generate_secret()),
            expected: AuthError::UnknownKey,
        },
        Case {
            name: "wrong_secret",
            header: format!("{}/{}", prefix(&good), api_key::generate_secret()),
            expected: AuthError::BadSecret,
        },
        Case {
            name: "locked_user",
            header: locked,
            expected: AuthError::Locked,
        },
        Case {
            name: "expired_key",
            header: expired,
            expected: AuthError::Expired,
        },
    ];

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = Arc::new(ApiKeyAuthenticator::new(
        db,
        Arc::new(Metrics::new()),
        hasher,
        &cache_settings(Duration::from_secs(3600)),
    ));
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    // No budget in a benchmark of the check itself.
    let budget: &'static CheckBudget<'static> = Box::leak(Box::new(CheckBudget::unlimited(ip)));
    let refuse = |header: &str| {
        runtime.block_on(auth.authenticate(black_box(header.as_bytes()), ip, budget))
    };
    // Warm every cache (the negative one for the unknown prefix), and check each case is the
    // refusal it claims to be.
    for case in &cases {
        assert_eq!(
            refuse(&case.header).err(),
            Some(case.expected.clone()),
            "{}",
            case.name
        );
    }

    let mut group = c.benchmark_group("apikey_refusal");
    for case in &cases {
        group.bench_function(case.name, |b| b.iter(|| refuse(&case.header)));
    }
    group.finish();

    if std::env::args().any(|a| a == "--bench") {
        check_equal_time(&cases, &refuse);
    }
}

/// Interleaved rounds of every case; the median of each, compared.
fn check_equal_time(
    cases: &[Case],
    refuse: &dyn Fn(&str) -> Result<Arc<keyward::auth::Principal>, AuthError>,
) {
    const ROUNDS: usize = 20_000;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for _ in 0..ROUNDS {
        for (i, case) in cases.iter().enumerate() {
            let started = Instant::now();
            let _ = black_box(refuse(&case.header));
            samples[i].push(started.elapsed());
        }
    }
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort_unstable();
            s[s.len() / 2]
        })
        .collect();
    for (case, median) in cases.iter().zip(&medians) {
        println!("equal-time check: {:<15} median {:?}", case.name, median);
    }
    let (fastest, slowest) = (medians.iter().min().unwrap(), medians.iter().max().unwrap());
    let spread = *slowest - *fastest;
    println!("equal-time check: spread {spread:?} (tolerance {TOLERANCE:?})");
    assert!(
        spread <= TOLERANCE,
        "refusals differ by {spread:?} at the median, more than {TOLERANCE:?}"
    );
}

criterion_group!(benches, refusals);
criterion_main!(benches);
