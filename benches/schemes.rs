//! What each credential check costs, per request, as keyward's request path runs it: the
//! figures behind the cost table in docs/performance.md.
//!
//! - `apikey/warm`: the key's metadata cached (the normal case); `apikey/cold`: the cache
//!   emptied before every check, so each one reads the SQLite store.
//! - `token/warm`: a gateway `token` cookie, cached.
//! - `basic/cached`: a Basic login already verified once (argon2id is paid only on a miss).
//! - `basic/argon2`: the miss: one argon2id verification (what a new login or a wrong
//!   password costs, and what an unknown user costs too, against a dummy hash).
//! - `signature/no_body`, `signature/digest_4k`: an Ed25519-signed request, without a body
//!   and with a 4 KiB body checked against `Content-Digest`.
//!
//! `cargo bench --bench schemes`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{bench_db, cache_settings};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use keyward::auth::api_key::{self, ApiKeyAuthenticator, KeyHasher};
use keyward::auth::basic::{BasicAuthenticator, ThrottleSettings};
use keyward::auth::password::PasswordHasher;
use keyward::auth::signature::{self, RequestView, SignatureAuthenticator};
use keyward::auth::token::{self, TokenAuthenticator};
use keyward::cache::LiveDuration;
use keyward::config::Config;
use keyward::metrics::Metrics;
use keyward::ratelimit::CheckBudget;
use keyward::store::{now_ms, Db, NewApiKey, NewSignatureKey, NewToken, User};
use keyward::users::{self, local_audit, UserSpec};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const PASSWORD: &str = "bench-password-1";

struct Bench {
    _dir: tempfile::TempDir,
    db: Db,
    user: User,
    hasher: KeyHasher,
    runtime: tokio::runtime::Runtime,
}

fn setup() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let db = bench_db(&dir);
    let user = db
        .block_on(|store| async move {
            Ok(users::add_user(
                store.as_ref(),
                UserSpec {
                    name: "bench".into(),
                    domain: None,
                    customer: None,
                    functions: vec![],
                    external: false,
                },
                PASSWORD,
            )
            .await)
        })
        .unwrap()
        .unwrap();
    let pepper = db
        .block_on(|store| async move { store.api_key_pepper().await })
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Bench {
        _dir: dir,
        db,
        user,
        hasher: KeyHasher::new(pepper),
        runtime,
    }
}

fn schemes(c: &mut Criterion) {
    let bench = setup();
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    // No budget in a benchmark of the check itself.
    let budget: &'static CheckBudget<'static> = Box::leak(Box::new(CheckBudget::unlimited(ip)));
    let mut group = c.benchmark_group("scheme");

    // API key, warm and cold.
    let secret = api_key::generate_secret();
    let secret_hash = bench.hasher.hash(&secret);
    let user_id = bench.user.id;
    let key = bench
        .db
        .block_on(|store| async move {
            store
                .create_api_key(
                    NewApiKey {
                        user_id,
                        secret_hash,
                        description: "bench".into(),
                        created_by_id: user_id,
                        created_by_name: "bench".into(),
                        valid_until_ms: 0,
                        valid_sources: vec!["10.0.0.0/8".into()],
                        functions: None,
                        customers: vec![],
                        read_only: false,
                        rate_limit: None,
                        quota: None,
                    },
                    local_audit("apikey.create", "bench"),
                )
                .await
        })
        .unwrap();
    let header = format!("{}/{}", key.prefix(), secret);
    let api_keys = ApiKeyAuthenticator::new(
        bench.db.clone(),
        Arc::new(Metrics::new()),
        bench.hasher.clone(),
        &cache_settings(Duration::from_secs(30)),
    );
    let rt = &bench.runtime;
    rt.block_on(api_keys.authenticate(header.as_bytes(), ip, budget))
        .unwrap();
    group.bench_function("apikey/warm", |b| {
        b.iter(|| {
            rt.block_on(api_keys.authenticate(black_box(header.as_bytes()), ip, budget))
                .unwrap()
        })
    });
    group.bench_function("apikey/cold", |b| {
        b.iter_batched(
            || api_keys.invalidate_all(),
            |()| {
                rt.block_on(api_keys.authenticate(black_box(header.as_bytes()), ip, budget))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });

    // Gateway token cookie, warm.
    let minted = token::generate();
    let token_hash = bench.hasher.hash(&minted);
    bench
        .db
        .block_on(|store| async move {
            store
                .create_token(
                    NewToken {
                        name: "bench-token".into(),
                        token_hash,
                        owner_id: user_id,
                        domain: "example.com".into(),
                        tenant: None,
                        level: "DEFAULT".into(),
                        expires_at_ms: now_ms() + 3_600_000,
                        custom_source: None,
                    },
                    None,
                    local_audit("token.mint", "bench"),
                )
                .await
        })
        .unwrap();
    let tokens = TokenAuthenticator::new(
        bench.db.clone(),
        Arc::new(Metrics::new()),
        bench.hasher.clone(),
        &cache_settings(Duration::from_secs(30)),
    );
    rt.block_on(tokens.authenticate(&minted, budget)).unwrap();
    group.bench_function("token/warm", |b| {
        b.iter(|| {
            rt.block_on(tokens.authenticate(black_box(&minted), budget))
                .unwrap()
        })
    });

    // Basic, cached and the argon2id miss.
    let metrics = Arc::new(Metrics::new());
    let basic = BasicAuthenticator::new(
        bench.db.clone(),
        PasswordHasher::new(1, metrics.password_checks_waiting()),
        metrics,
        LiveDuration::new(Duration::from_secs(3600)),
        10_000,
        ThrottleSettings {
            failures: u32::MAX,
            window: Duration::from_secs(1),
        },
    );
    use base64::Engine as _;
    let login = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{PASSWORD}"))
    );
    rt.block_on(basic.authenticate(login.as_bytes(), None, ip, budget))
        .unwrap();
    group.bench_function("basic/cached", |b| {
        b.iter(|| {
            rt.block_on(basic.authenticate(black_box(login.as_bytes()), None, ip, budget))
                .unwrap()
        })
    });
    group.sample_size(10);
    group.bench_function("basic/argon2", |b| {
        b.iter_batched(
            || basic.invalidate_all(),
            |()| {
                rt.block_on(basic.authenticate(black_box(login.as_bytes()), None, ip, budget))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.sample_size(100);

    // Ed25519 signatures, without and with a body digest.
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public_key = signing.verifying_key().to_bytes().to_vec();
    let sig_key = bench
        .db
        .block_on(|store| async move {
            store
                .create_signature_key(
                    NewSignatureKey {
                        user_id,
                        public_key,
                        description: "bench".into(),
                        valid_until_ms: 0,
                        valid_sources: vec![],
                    },
                    local_audit("signature.enroll", "bench"),
                )
                .await
        })
        .unwrap();
    let keyid = format!("bench/{}", sig_key.key_id);
    let settings = Config::from_yaml(keyward::config::EMBEDDED_DEFAULT)
        .unwrap()
        .signatures;
    let signatures =
        SignatureAuthenticator::new(bench.db.clone(), Arc::new(Metrics::new()), settings);
    let url: http::Uri = "http://api.example.com/cases/42?expand=1".parse().unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let body = vec![b'x'; 4096];
    // Every request is signed anew, outside the measurement: a signature is accepted once.
    let fresh = |body: Option<&[u8]>| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let method = if body.is_some() { "PUT" } else { "GET" };
        let headers = signature::sign(
            &signing,
            &keyid,
            method,
            &url,
            body,
            now_ms() / 1000,
            &format!("n{n}"),
        )
        .unwrap();
        let mut header =
            pingora::http::RequestHeader::build(method, b"/cases/42?expand=1", None).unwrap();
        header.insert_header("host", "api.example.com").unwrap();
        if let Some(body) = body {
            header.insert_header("content-length", body.len()).unwrap();
        }
        for (name, value) in headers {
            header.insert_header(name, value).unwrap();
        }
        header
    };
    let verify = |header: &pingora::http::RequestHeader, body: Option<&[u8]>| {
        let view = RequestView {
            header,
            body,
            tls: false,
        };
        rt.block_on(signatures.authenticate(&view, ip, budget))
            .unwrap()
    };
    verify(&fresh(None), None);
    group.bench_function("signature/no_body", |b| {
        b.iter_batched(|| fresh(None), |h| verify(&h, None), BatchSize::SmallInput)
    });
    group.bench_function("signature/digest_4k", |b| {
        b.iter_batched(
            || fresh(Some(&body)),
            |h| verify(&h, Some(&body)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, schemes);
criterion_main!(benches);
