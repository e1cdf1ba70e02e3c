//! TLS to the fleet's Redis (`redis: { url: rediss://..., tls: { ca, cert, key } }`): a
//! `redis-server` the test starts with TLS only (`--port 0 --tls-port P`) and certificates it
//! makes with rcgen; two keyward replicas on one PostgreSQL database share the replay window
//! through it; a CA that does not verify the server stops keyward at start and refuses a
//! reload, naming the key; `tls-auth-clients yes` needs the client certificate; the old
//! `replay.redis_url` still works, with a warning; both places at once is a config error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::redis::TestRedis;
use common::tls::TestPki;
use common::{client, echoed, echoed_header, free_port, redis_address, Keyward, Setup};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUTHORITY: &str = "fleet.test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `redis:` section: `url` with a CA file and, optionally, a client certificate.
fn redis_section(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let client = client.map_or(String::new(), |(cert, key)| {
        format!(", cert: {}, key: {}", cert.display(), key.display())
    });
    format!(
        "redis: {{ url: \"{url}\", tls: {{ ca: {}{client} }} }}\n",
        ca.display()
    )
}

/// Creates `john` and enrolls a key for him; returns the key and its keyid.
fn john_with_key(kw: &Keyward, seed: u8) -> (SigningKey, String) {
    kw.add_user("john", "john-password", &[]);
    let key = SigningKey::from_bytes(&[seed; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(common::ADMIN_PASSWORD))
        .body(json!({"publicKey": public, "description": "laptop"}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    let keyid = format!("john/{}", body["data"]["keyID"].as_i64().unwrap());
    (key, keyid)
}

fn signed(key: &SigningKey, keyid: &str) -> Vec<(&'static str, String)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let nonce = format!("n{}-{}", now(), NONCE.fetch_add(1, Ordering::Relaxed));
    let url: http::Uri = format!("http://{AUTHORITY}/x").parse().unwrap();
    sign(key, keyid, "GET", &url, None, now(), &nonce).unwrap()
}

fn send(kw: &Keyward, headers: &[(&'static str, String)]) -> reqwest::blocking::Response {
    let mut request = client().get(kw.url("/x")).header("host", AUTHORITY);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    request.send().unwrap()
}

/// (status, reason).
fn answer(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

fn metric(kw: &Keyward, series: &str) -> u64 {
    let text = kw.metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// A keyward config around `extra`, on a SQLite file in `dir` (for keywards that are expected
/// not to start).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = format!(
        r#"
listen: {{ proxy: "127.0.0.1:{}", ops: "127.0.0.1:{}" }}
upstream: {{ address: "127.0.0.1:{}" }}
store: {{ url: "sqlite://{}" }}
server: {{ pid_file: {} }}
routes:
  - path: /
    require: {{ min_security_level: EXTERNAL }}
{extra}
"#,
        free_port(),
        free_port(),
        free_port(),
        dir.join("keyward.db").display(),
        dir.join("keyward.pid").display(),
    );
    let path = dir.join("keyward.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts `keyward serve` on `config` and waits for it to exit; returns (success, stderr).
fn serve_expecting_exit(dir: &Path, config: &Path) -> (bool, String) {
    let mut child = common::spawn_serve_with(config, dir, None, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "keyward kept running:\n{}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    (status.success(), stderr)
}

#[test]
fn two_replicas_share_the_replay_window_through_a_tls_redis() {
    let pki = TestPki::new();
    let redis = TestRedis::start_tls_with(&pki, false, &["127.0.0.1", "localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path());
    let db = ScratchDatabase::create_blocking()
        .expect("these tests need PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)");
    let replica = |url: &str| {
        Keyward::start_with(Setup {
            store_url: Some(db.url().to_owned()),
            extra: redis_section(url, &ca, None),
            ..Setup::default()
        })
    };
    // One by IP address, one by name: the certificate names both.
    let a = replica(&redis.url());
    let b = replica(&format!("rediss://localhost:{}", redis.port));
    let (key, keyid) = john_with_key(&a, 21);

    let first = signed(&key, &keyid);
    let echo = echoed(send(&a, &first));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("john"));
    assert_eq!(answer(send(&b, &first)), (401, "replay".into()));
    let second = signed(&key, &keyid);
    echoed(send(&b, &second));
    assert_eq!(answer(send(&a, &second)), (401, "replay".into()));
    for kw in [&a, &b] {
        assert_eq!(metric(kw, "keyward_redis_errors_total"), 0);
        assert!(
            !kw.stderr().contains("redis is unreachable"),
            "{}",
            kw.stderr()
        );
    }
}

#[test]
fn a_certificate_that_does_not_verify_stops_keyward_naming_the_key() {
    let pki = TestPki::new();
    let redis = TestRedis::start_tls_with(&pki, false, &["127.0.0.1", "localhost"]);
    let dir = tempfile::tempdir().unwrap();

    // A CA that did not sign the server's certificate.
    let other = TestPki::new();
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let wrong_ca = other.write_ca(&other_dir);
    let config = write_config(dir.path(), &redis_section(&redis.url(), &wrong_ca, None));
    let (ok, stderr) = serve_expecting_exit(dir.path(), &config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("redis.tls.ca: "), "{stderr}");
    assert!(stderr.contains("not signed by a CA"), "{stderr}");

    // The right CA, but a certificate for another host than the URL's: the URL is at fault.
    let ca = pki.write_ca(dir.path());
    let elsewhere = TestRedis::start_tls_with(&pki, false, &["redis.example"]);
    let config = write_config(dir.path(), &redis_section(&elsewhere.url(), &ca, None));
    let (ok, stderr) = serve_expecting_exit(dir.path(), &config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("redis.url: "), "{stderr}");
    assert!(stderr.contains("not valid for the host name"), "{stderr}");

    // A plain-text URL for a TLS-only port with TLS settings is refused by the config check.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let config = write_config(dir.path(), &redis_section(&plain, &ca, None));
    let out = common::cli(&config, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.tls: TLS needs a rediss:// URL"));
}

#[test]
fn a_reload_with_a_ca_that_does_not_verify_is_refused_naming_the_key() {
    let pki = TestPki::new();
    let redis = TestRedis::start_tls_with(&pki, false, &["127.0.0.1", "localhost"]);
    let files = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(files.path());
    let kw = Keyward::start_with(Setup {
        extra: redis_section(&redis.url(), &ca, None),
        ..Setup::default()
    });
    let other_dir = files.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let wrong_ca = TestPki::new().write_ca(&other_dir);
    let config = std::fs::read_to_string(&kw.config_path).unwrap();
    let changed = config.replace(
        &format!("ca: {}", ca.display()),
        &format!("ca: {}", wrong_ca.display()),
    );
    assert_ne!(config, changed);
    std::fs::write(&kw.config_path, changed).unwrap();
    kw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !kw.stderr().contains("configuration reload failed") {
        assert!(Instant::now() < deadline, "{}", kw.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = kw.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap();
    assert!(line.contains("redis.tls.ca: "), "{line}");
    assert_eq!(
        metric(&kw, r#"keyward_config_reloads_total{outcome="invalid"}"#),
        1
    );
    // Still serving on the running configuration.
    let resp = client().get(kw.url("/public")).send().unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn a_redis_that_authenticates_clients_needs_the_client_certificate() {
    let pki = TestPki::new();
    let redis = TestRedis::start_tls_with(&pki, true, &["127.0.0.1", "localhost"]);
    let files = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(files.path());
    let client_cert = pki.leaf(files.path(), "keyward-client", &[], "keyward");

    // With the certificate: signed requests are claimed in Redis.
    let db = ScratchDatabase::create_blocking().expect("these tests need PostgreSQL");
    let replica = || {
        Keyward::start_with(Setup {
            store_url: Some(db.url().to_owned()),
            extra: redis_section(
                &redis.url(),
                &ca,
                Some((&client_cert.cert, &client_cert.key)),
            ),
            ..Setup::default()
        })
    };
    let (a, b) = (replica(), replica());
    let (key, keyid) = john_with_key(&a, 22);
    let first = signed(&key, &keyid);
    echoed(send(&a, &first));
    assert_eq!(answer(send(&b, &first)), (401, "replay".into()));
    assert_eq!(metric(&a, "keyward_redis_errors_total"), 0);

    // Without it, Redis refuses the handshake: keyward does not start, and says which keys.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis_section(&redis.url(), &ca, None));
    let (ok, stderr) = serve_expecting_exit(dir.path(), &config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("redis.tls.cert: "), "{stderr}");

    // A certificate from a CA Redis does not trust is refused too.
    let other_dir = files.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let stranger = TestPki::new().leaf(&other_dir, "stranger", &[], "keyward");
    let config = write_config(
        dir.path(),
        &redis_section(&redis.url(), &ca, Some((&stranger.cert, &stranger.key))),
    );
    let (ok, stderr) = serve_expecting_exit(dir.path(), &config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("redis.tls.cert: "), "{stderr}");
}

#[test]
fn the_old_replay_keys_still_work_with_a_warning_and_not_beside_redis() {
    let url = format!("redis://{}", redis_address());
    let kw = Keyward::start_with(Setup {
        extra: format!("replay: {{ redis_url: \"{url}\", on_redis_error: refuse }}\n"),
        ..Setup::default()
    });
    let (key, keyid) = john_with_key(&kw, 23);
    let first = signed(&key, &keyid);
    echoed(send(&kw, &first));
    assert_eq!(answer(send(&kw, &first)), (401, "replay".into()));
    let stderr = kw.stderr();
    for (old, new) in [
        ("replay.redis_url", "redis.url"),
        ("replay.on_redis_error", "redis.on_error"),
    ] {
        let warned = stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(old) && l.contains(new));
        assert!(warned, "no warning naming {old} and {new}:\n{stderr}");
    }
    let out = kw.cli(&["check-config"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: replay.redis_url: "));

    // Both places at once.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("redis: {{ url: \"{url}\" }}\nreplay: {{ redis_url: \"{url}\" }}\n"),
    );
    let out = common::cli(&config, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replay.redis_url: an old name of redis.url"),
        "{stderr}"
    );
}
