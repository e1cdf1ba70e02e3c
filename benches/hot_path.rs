//! The API key hot path: parse the header, find the key in the warm cache, compare the keyed
//! hash in constant time, check the constraints, record the use. No store I/O happens here.
//!
//! `cargo bench --bench hot_path`

use criterion::{criterion_group, criterion_main, Criterion};
use keyward::auth::api_key::{self, ApiKeyAuthenticator, ApiKeyCacheSettings, KeyHasher};
use keyward::config::StoreUrl;
use keyward::metrics::Metrics;
use keyward::store::{Db, NewApiKey, NewUser};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

fn hot_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::start(&StoreUrl::Sqlite(dir.path().join("bench.db"))).unwrap();
    let pepper = db
        .block_on(|store| async move { store.api_key_pepper().await })
        .unwrap();
    let hasher = KeyHasher::new(pepper);
    let secret = api_key::generate_secret();
    let secret_hash = hasher.hash(&secret);
    let key = db
        .block_on(|store| async move {
            let user = store
                .create_user(NewUser {
                    name: "bench".into(),
                    domain: None,
                    customer: Some("7".into()),
                    functions: vec!["CASE-SECMON-RO".into(), "POWER-USER".into()],
                    external: false,
                    password_hash: String::new(),
                })
                .await?;
            store
                .create_api_key(NewApiKey {
                    user_id: user.id,
                    secret_hash,
                    description: "bench".into(),
                    created_by_id: user.id,
                    created_by_name: user.name.clone(),
                    valid_until_ms: 0,
                    valid_sources: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                    functions: Some(vec!["CASE-SECMON-RO".into()]),
                    customers: vec![],
                    read_only: false,
                })
                .await
        })
        .unwrap();
    let header = format!("{}/{}", key.prefix(), secret);
    let ip: IpAddr = "10.1.2.3".parse().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = Arc::new(ApiKeyAuthenticator::new(
        db,
        Arc::new(Metrics::new()),
        hasher,
        &ApiKeyCacheSettings {
            ttl: Duration::from_secs(3600),
            capacity: 100_000,
            negative_ttl: Duration::from_secs(30),
            negative_capacity: 100_000,
        },
    ));
    // Warm the cache.
    runtime
        .block_on(auth.authenticate(header.as_bytes(), ip))
        .unwrap();

    c.bench_function("apikey/parse", |b| {
        b.iter(|| api_key::parse(black_box(header.as_bytes())).unwrap())
    });
    c.bench_function("apikey/authenticate_warm", |b| {
        b.to_async(&runtime).iter(|| {
            let auth = auth.clone();
            let header = header.as_bytes();
            async move { auth.authenticate(black_box(header), ip).await.unwrap() }
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
