//! Itemises the memory of a cached API key: builds N keys' cache entries exactly as keyward's
//! request path does (the store's rows → `CachedKey` with its principal, the secret checked and
//! the identity headers built on a first request, the entry in the credential cache, the
//! last-use record) and reports the resident memory each part adds, per key, with keyward's
//! allocator (mimalloc), and the inline sizes of the two structures.
//!
//! `cargo run --release --example key_memory [N]` (default 100 000)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use keyward_auth::api_key::{generate_secret, CachedKey, KeyHasher, Prefix, SecretMemo};
use keyward_auth::cache::{CacheSettings, CredentialCache, LiveDuration};
use keyward_auth::ratelimit::CheckBudget;
use keyward_auth::usage::UsageRecorder;
use keyward_metrics::Metrics;
use keyward_store::{ApiKey, User, UserSource};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// keyward's allocator, so the sizes are the shipped binary's.
#[global_allocator]
static ALLOCATOR: keyward_alloc::Allocator = keyward_alloc::Allocator;

fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn report(part: &str, from: i64, to: i64, n: i64) {
    println!("{part:<56} {:>6.0} bytes", (to - from) as f64 / n as f64);
}

/// The user every key of the scale harness belongs to (`scripts/scale.sh`: one user, as
/// `fill_store` writes them), with the shape of a real one: two functions, a customer.
fn user() -> User {
    User {
        id: 0x15a6,
        name: "scale-user".into(),
        domain: None,
        customer: Some("customer-one".into()),
        functions: vec!["argus.read".into(), "argus.write".into()],
        external: false,
        password_hash: String::new(),
        totp_secret: None,
        locked: false,
        created_at_ms: 0,
        source: UserSource::Local,
    }
}

fn key(hasher: &KeyHasher, user: &User, key_id: i64, secret: &str) -> ApiKey {
    ApiKey {
        user_id: user.id,
        key_id,
        secret_hash: hasher.hash(secret),
        description: "scale".into(),
        created_at_ms: 0,
        created_by_id: user.id,
        created_by_name: user.name.clone(),
        valid_until_ms: 0,
        valid_sources: Vec::new(),
        functions: None,
        customers: Vec::new(),
        read_only: false,
        last_used_at_ms: 0,
        last_used_ip: None,
        rate_limit: None,
        quota: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let hasher = KeyHasher::new(vec![7; 32]);
    let user = user();
    let secrets: Vec<String> = (0..n).map(|_| generate_secret()).collect();
    let rows: Vec<ApiKey> = (1..=n)
        .zip(&secrets)
        .map(|(id, secret)| key(&hasher, &user, id, secret))
        .collect();
    let memo = SecretMemo::new();
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    // keyward's defaults (`cache.*`), with room for every key.
    let settings = CacheSettings {
        ttl: LiveDuration::new(Duration::from_secs(300)),
        capacity: n as u64 * 2,
        negative_ttl: LiveDuration::new(Duration::from_secs(60)),
        negative_capacity: 100_000,
    };
    let cache: CredentialCache<Prefix, CachedKey> = CredentialCache::new(
        Arc::new(Metrics::new()),
        "api_key",
        "api_key_unknown",
        &settings,
    );
    let budget = CheckBudget::unlimited(client);
    let usage = UsageRecorder::default();

    let start = resident_bytes();
    let entries: Vec<CachedKey> = rows.iter().map(|k| CachedKey::new(k, &user)).collect();
    let built = resident_bytes();
    // A first request with each key: the secret checked (and remembered), the principal's
    // identity headers built for the upstream.
    for (entry, secret) in entries.iter().zip(&secrets) {
        let principal = entry
            .check(&hasher, &memo, secret, client, 1)
            .expect("the key's own secret");
        std::hint::black_box(principal.identity_headers());
    }
    let headed = resident_bytes();
    for (entry, row) in entries.into_iter().zip(&rows) {
        let prefix = Prefix {
            user_id: row.user_id,
            key_id: row.key_id,
        };
        cache
            .get_or_load(prefix, &budget, async move { Ok(Some(entry)) })
            .await
            .expect("a loaded key");
    }
    let counts = cache.entry_counts().await;
    let cached = resident_bytes();
    for row in &rows {
        usage.record_at(row.user_id, row.key_id, client, 1);
    }
    let used = resident_bytes();

    println!("{n} keys of one user; cache entries {counts:?}");
    report(
        "CachedKey and its principal (Arc, strings, vecs)",
        start,
        built,
        n,
    );
    report("identity headers (built on first use)", built, headed, n);
    report(
        "credential cache entry (moka, beyond the value)",
        headed,
        cached,
        n,
    );
    report("last-use record (until the next flush)", cached, used, n);
    report("all", start, used, n);
    println!(
        "inline: CachedKey {} bytes, Principal {} bytes (each behind its own allocation)",
        std::mem::size_of::<CachedKey>(),
        std::mem::size_of::<keyward_core::Principal>()
    );
    std::hint::black_box((&cache, &usage));
}
