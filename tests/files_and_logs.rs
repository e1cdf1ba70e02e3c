//! Files and logs: the store's files are private to keyward's user, and no credential reaches
//! stderr, even with `RUST_LOG=debug` or `logging.level: debug`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use base64::Engine as _;
use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A keyward whose store is at `db` (relative to its temporary directory), with `env` set and
/// `extra` appended to the config; `prepare` sees the directory before keyward starts.
fn start(db: &str, env: &[(&str, &str)], extra: &str, prepare: impl FnOnce(&Path)) -> Keyward {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    Keyward::start_with(Setup {
        extra: extra.into(),
        store_file: db.into(),
        env: env
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        dir: Some(dir),
        ..Setup::default()
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn create_key(kw: &Keyward, user: &str) -> String {
    let resp = client()
        .post(kw.url(&format!("/authentication/v1/user/{user}/apikey")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(r#"{"description": "k"}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().unwrap();
    body["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

#[test]
fn the_store_directory_and_files_are_private() {
    let kw = start("data/nested/keyward.db", &[], "", |_| {});
    // A write, so that the WAL has content while keyward runs.
    create_key(&kw, "admin");
    let data = kw.dir.path().join("data");
    let db: PathBuf = data.join("nested/keyward.db");
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("nested")), 0o700);
    for file in ["keyward.db", "keyward.db-wal", "keyward.db-shm"] {
        assert_eq!(mode(&data.join("nested").join(file)), 0o600, "{file}");
    }
    assert!(!kw.stderr().contains("should be 0"), "{}", kw.stderr());
    // The CLI (another process) writes the same files; they stay private.
    kw.add_user("john", "john-password", &[]);
    assert_eq!(mode(&db), 0o600);
}

#[test]
fn an_existing_directory_open_to_others_is_warned_about() {
    let kw = start("shared/keyward.db", &[], "", |dir| {
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    let shared = kw.dir.path().join("shared");
    assert_eq!(
        mode(&shared),
        0o755,
        "an existing directory is left as it is"
    );
    assert_eq!(mode(&shared.join("keyward.db")), 0o600);
    let stderr = kw.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("should be 0700"))
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(warning.contains(&*shared.to_string_lossy()), "{warning}");
}

/// Sends every kind of credential with recognisable secrets; returns the secrets.
fn send_secrets(kw: &Keyward) -> Vec<String> {
    kw.add_user("john", "Sup3r-Secret-Passw0rd", &[]);
    let mut secrets = vec![
        "Sup3r-Secret-Passw0rd".to_owned(),
        "Wr0ng-Secret-Guess".to_owned(),
    ];
    for (user, password) in [
        ("john", "Sup3r-Secret-Passw0rd"),
        ("john", "Wr0ng-Secret-Guess"),
        ("nobody", "Wr0ng-Secret-Guess"),
    ] {
        let resp = client()
            .get(kw.url("/x"))
            .basic_auth(user, Some(password))
            .send()
            .unwrap();
        assert!(matches!(resp.status().as_u16(), 200 | 401));
        secrets
            .push(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    }
    // A real API key, and a well-formed unknown one.
    let key = create_key(kw, "john");
    let unknown = format!("15a6/7/{}", "S3cretApiKeyS3cretApiKeyS3cretApiKeyS3cret");
    for value in [&key, &unknown] {
        client()
            .get(kw.url("/x"))
            .header("Argus-API-Key", value)
            .send()
            .unwrap();
        secrets.push(value.rsplit_once('/').unwrap().1.to_owned());
    }
    // A real token (minted, so also in a Set-Cookie answer) and an unknown one.
    let minted = client()
        .post(kw.url("/.TOKEN/"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(minted.status(), 201);
    let cookie = minted.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .strip_prefix("token=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    for value in [token, "5ec7e75ec7e75ec7e75ec7e75ec7e75e"] {
        client()
            .get(kw.url("/x"))
            .header("Cookie", format!("token={value}"))
            .send()
            .unwrap();
        secrets.push(value.to_owned());
    }
    secrets.push(base64::engine::general_purpose::STANDARD.encode(ADMIN_PASSWORD));
    secrets.push(ADMIN_PASSWORD.to_owned());
    // A signed request (unknown key): the signature value is a credential too.
    let signature = base64::engine::general_purpose::STANDARD.encode([0x5a; 64]);
    client()
        .get(kw.url("/x"))
        .header(
            "Signature-Input",
            format!(
                "sig=(\"@method\" \"@authority\" \"@path\" \"@query\");created={};nonce=\"n0nce\";keyid=\"john/1\"",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            ),
        )
        .header("Signature", format!("sig=:{signature}:"))
        .send()
        .unwrap();
    secrets.push(signature);
    // Let buffered output reach the file.
    std::thread::sleep(Duration::from_millis(300));
    secrets
}

/// Credentials forwarded upstream: pingora's debug output prints the upstream request header,
/// so without the cap they would be in it.
const FORWARD_CREDENTIALS: &str = "forward_credentials: true\n";

fn leaked<'a>(stderr: &str, secrets: &'a [String]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|s| stderr.contains(s.as_str()))
        .map(String::as_str)
        .collect()
}

/// Sends every kind of secret, then checks that keyward's own debug output is on and that no
/// secret is in its stderr.
fn assert_debug_on_and_no_secret_leaked(kw: &Keyward) {
    let secrets = send_secrets(kw);
    let stderr = kw.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("credential refused")),
        "keyward's debug output is on:\n{stderr}"
    );
    assert_eq!(leaked(&stderr, &secrets), Vec::<&str>::new(), "{stderr}");
}

#[test]
fn no_secret_reaches_stderr_with_rust_log_debug() {
    let kw = start(
        "keyward.db",
        &[("RUST_LOG", "debug")],
        FORWARD_CREDENTIALS,
        |_| {},
    );
    assert_debug_on_and_no_secret_leaked(&kw);
}

#[test]
fn no_secret_reaches_stderr_with_logging_level_debug() {
    let kw = start(
        "keyward.db",
        &[],
        &format!("{FORWARD_CREDENTIALS}logging:\n  level: debug\n  format: json\n"),
        |_| {},
    );
    assert_debug_on_and_no_secret_leaked(&kw);
}

/// The switch exists and is what keeps the secrets out: with it, pingora's debug output
/// (which prints request headers) comes through, credentials included.
#[test]
fn the_third_party_switch_lets_pingora_debug_through() {
    let kw = start(
        "keyward.db",
        &[("RUST_LOG", "debug"), ("KEYWARD_LOG_THIRD_PARTY", "1")],
        FORWARD_CREDENTIALS,
        |_| {},
    );
    let secrets = send_secrets(&kw);
    let stderr = kw.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("pingora")),
        "third-party output comes through:\n{stderr}"
    );
    assert!(!leaked(&stderr, &secrets).is_empty(), "{stderr}");
}

/// The JSON access log line of a proxied request, with every field an operator reads, read
/// back from stderr (written by the log thread, so it may arrive a moment after the answer).
#[test]
fn a_json_access_line_carries_every_field() {
    let kw = start(
        "keyward.db",
        &[],
        "logging:\n  level: info\n  format: json\n",
        |_| {},
    );
    let key = create_key(&kw, "admin");
    let resp = client()
        .post(kw.url("/app/upload?secret=query-not-logged"))
        .header("Argus-API-Key", &key)
        .header("User-Agent", "access-log-test/1.0")
        .body("twelve bytes")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["gateway-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let stderr = kw.stderr();
        if let Some(line) = stderr.lines().find(|l| l.contains(&request_id)) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let entry: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(entry["target"], "keyward::access");
    assert_eq!(entry["level"], "INFO");
    let timestamp = entry["timestamp"].as_str().unwrap();
    // RFC 3339, UTC, microseconds: 2026-12-01T15:44:01.123456Z
    assert_eq!(timestamp.len(), 27, "{timestamp}");
    assert!(
        timestamp.ends_with('Z') && &timestamp[10..11] == "T",
        "{timestamp}"
    );
    assert!(
        humantime::parse_rfc3339(timestamp).is_ok(),
        "{timestamp} parses as RFC 3339"
    );
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/app/upload");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["outcome"], "allowed");
    assert_eq!(entry["user"], "admin");
    assert_eq!(entry["auth_method"], "APIKEY");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert_eq!(entry["host"], kw.url("").trim_start_matches("http://"));
    assert_eq!(entry["user_agent"], "access-log-test/1.0");
    assert_eq!(entry["bytes_received"], 12);
    assert!(entry["bytes_sent"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(
        entry["upstream"],
        kw.upstream().addr.to_string(),
        "the upstream address, as ip:port"
    );
    assert!(entry["upstream_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(entry["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(!line.contains("query-not-logged"), "{line}");
    assert!(!line.contains(&key), "{line}");
}
