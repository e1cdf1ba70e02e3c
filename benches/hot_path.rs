//! The API key hot path: parse the header, find the key in the warm cache, compare the keyed
//! hash in constant time, check the constraints, record the use. No store I/O happens here.
//!
//! The signature path: parse the RFC 9421 headers, warm key cache, rebuild the signature base,
//! strict Ed25519 verification, replay window and clock-skew session.
//!
//! `cargo bench --bench hot_path`
//!
//! Built with the allocator keyward ships with (mimalloc), so that allocations cost here what
//! they cost in the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{bench_db, cache_settings};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use keyward::auth::api_key::{self, ApiKeyAuthenticator, KeyHasher};
use keyward::auth::signature::{self, RequestView, SignatureAuthenticator};
use keyward::config::Config;
use keyward::metrics::Metrics;
use keyward::ratelimit::CheckBudget;
use keyward::store::NewSignatureKey;
use keyward::store::{NewApiKey, NewUser};
use keyward::users::local_audit;
use std::future::Future;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: keyward_alloc::Allocator = keyward_alloc::Allocator;

/// Runs a check that completes without waiting (a warm check does no I/O) by polling it once,
/// as pingora's task polls keyward's filter, instead of entering the runtime's scheduler
/// (`block_on`, ~5 k instructions) around every iteration; one that does wait is finished by
/// the runtime.
fn poll_ready<F: Future>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => runtime.block_on(future),
    }
}

fn hot_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = bench_db(&dir);
    let pepper = db
        .block_on(|store| async move { store.api_key_pepper().await })
        .unwrap();
    let hasher = KeyHasher::new(pepper);
    let secret = api_key::generate_secret();
    let secret_hash = hasher.hash(&secret);
    let key = db
        .block_on(|store| async move {
            let user = store
                .create_user(
                    NewUser {
                        name: "bench".into(),
                        domain: None,
                        customer: Some("7".into()),
                        functions: vec!["CASE-SECMON-RO".into(), "POWER-USER".into()],
                        external: false,
                        password_hash: String::new(),
                    },
                    local_audit("user.create", "bench"),
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
                        valid_until_ms: 0,
                        valid_sources: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                        functions: Some(vec!["CASE-SECMON-RO".into()]),
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
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    // No budget in a benchmark of the check itself.
    let budget: &'static CheckBudget<'static> = Box::leak(Box::new(CheckBudget::unlimited(ip)));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = Arc::new(ApiKeyAuthenticator::new(
        db,
        Arc::new(Metrics::new()),
        hasher,
        &cache_settings(Duration::from_secs(30)),
    ));
    // Warm the cache.
    runtime
        .block_on(auth.authenticate(header.as_bytes(), ip, budget))
        .unwrap();

    c.bench_function("apikey/parse", |b| {
        b.iter(|| api_key::parse(black_box(header.as_bytes())).unwrap())
    });
    c.bench_function("apikey/authenticate_warm", |b| {
        b.to_async(&runtime).iter(|| {
            let auth = auth.clone();
            let header = header.as_bytes();
            async move {
                auth.authenticate(black_box(header), ip, budget)
                    .await
                    .unwrap()
            }
        })
    });
}

fn signature_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = bench_db(&dir);
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public_key = signing.verifying_key().to_bytes().to_vec();
    let key = db
        .block_on(|store| async move {
            let user = store
                .create_user(
                    NewUser {
                        name: "bench".into(),
                        domain: None,
                        customer: None,
                        functions: vec![],
                        external: false,
                        password_hash: String::new(),
                    },
                    local_audit("user.create", "bench"),
                )
                .await?;
            store
                .create_signature_key(
                    NewSignatureKey {
                        user_id: user.id,
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
    let keyid = format!("bench/{}", key.key_id);
    let settings = Config::from_yaml(keyward::config::EMBEDDED_DEFAULT)
        .unwrap()
        .signatures;
    let auth = Arc::new(SignatureAuthenticator::new(
        db,
        Arc::new(Metrics::new()),
        settings,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    // No budget in a benchmark of the check itself.
    let budget: &'static CheckBudget<'static> = Box::leak(Box::new(CheckBudget::unlimited(ip)));
    let url: http::Uri = "http://api.example.com/cases/42?expand=1".parse().unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    // Every request is signed anew (outside the measurement): a signature is accepted once.
    let fresh_request = || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let created = keyward::store::now_ms() / 1000;
        let headers = signature::sign(
            &signing,
            &keyid,
            "GET",
            &url,
            None,
            created,
            &format!("n{n}"),
        )
        .unwrap();
        let mut header =
            pingora::http::RequestHeader::build("GET", b"/cases/42?expand=1", None).unwrap();
        header.insert_header("host", "api.example.com").unwrap();
        for (name, value) in headers {
            header.insert_header(name, value).unwrap();
        }
        header
    };
    // Warm the key cache.
    let warm = fresh_request();
    runtime
        .block_on(auth.authenticate(
            &RequestView {
                header: &warm,
                body: None,
                tls: false,
            },
            ip,
            budget,
        ))
        .unwrap();
    // keyward's own parts of a signed request, each alone on one request.
    let sample = fresh_request();
    c.bench_function("signature/parse_headers", |b| {
        b.iter(|| signature::parse_headers(black_box(&sample)).unwrap())
    });
    let parsed = signature::parse_headers(&sample).unwrap();
    let view = RequestView {
        header: &sample,
        body: None,
        tls: false,
    };
    c.bench_function("signature/signature_base", |b| {
        b.iter(|| {
            signature::signature_base(black_box(&view), &parsed.components, &parsed.params).unwrap()
        })
    });
    // Inside the runtime's context, as on a proxy thread.
    let _context = runtime.enter();
    c.bench_function("signature/verify_warm", |b| {
        b.iter_batched_ref(
            fresh_request,
            |header| {
                let view = RequestView {
                    header,
                    body: None,
                    tls: false,
                };
                poll_ready(&runtime, auth.authenticate(&view, ip, budget)).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

/// The floor of a signed request: one strict Ed25519 verification of a signature base of the
/// size keyward builds, nothing else (docs/performance.md, "Signatures at Ed25519's floor").
fn ed25519_floor(c: &mut Criterion) {
    use ed25519_dalek::Signer as _;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let verifying = signing.verifying_key();
    let base = b"\"@method\": GET\n\"@authority\": 127.0.0.1:8080\n\"@path\": /x/fixed\n\
\"@signature-params\": (\"@method\" \"@authority\" \"@path\");created=1733300000;\
keyid=\"loader/0123456789abcdef\";alg=\"ed25519\";nonce=\"b3k2pp5k7z-50gnwp.yemd\"";
    let signature = signing.sign(base);
    assert!(verifying.verify_strict(base, &signature).is_ok());
    c.bench_function("ed25519/verify_strict", |b| {
        b.iter(|| {
            black_box(&verifying)
                .verify_strict(black_box(base), black_box(&signature))
                .is_ok()
        })
    });
    // The same, a different signature each time, as a signed route sees them: the
    // variable-time scalar multiplication branches on each signature's scalars, so one
    // signature verified over and over trains the branch predictor as no real load does.
    let signed: Vec<(Vec<u8>, ed25519_dalek::Signature)> = (0..4096)
        .map(|n| {
            let mut message = base.to_vec();
            message.extend_from_slice(format!("{n:08}").as_bytes());
            let signature = signing.sign(&message);
            (message, signature)
        })
        .collect();
    let mut next = signed.iter().cycle();
    c.bench_function("ed25519/verify_strict_distinct", |b| {
        b.iter(|| {
            let (message, signature) = next.next().unwrap();
            black_box(&verifying)
                .verify_strict(black_box(message), black_box(signature))
                .is_ok()
        })
    });
}

criterion_group!(benches, hot_path, signature_path, ed25519_floor);
criterion_main!(benches);
